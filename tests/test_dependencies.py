"""pyproject.toml declares what `reconciler` imports, and nothing more: a wheel's users get exactly that."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import reconciler

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# The HTTP stack of whichever huggingface_hub line is installed, reached through it and declared by it
# (reconciler/sources/hub_http.py); declaring one here would drag it into every other line's environment.
VIA_HUB = {"requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2"}
# Extras the package's own code imports when present (`fast`: onnxruntime casts instead of torch);
# without them it works the same (tests/test_chunkcast.py converts with and without).
RUNTIME_EXTRAS = ("fast",)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported() -> set[str]:
    """Top-level modules that reconciler's code imports (absolute imports only)."""
    found = set()
    for py in Path(reconciler.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"reconciler", "__future__"}


def test_every_import_is_declared_and_every_dependency_is_imported():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    runtime = pyproject["project"]["dependencies"] + [
        d for extra in RUNTIME_EXTRAS for d in pyproject["project"]["optional-dependencies"][extra]]
    declared = {_norm(re.split(r"[<>=!~ ;\[]", d)[0]) for d in runtime}
    dists = packages_distributions()
    used = {_norm(dists[m][0]) if m in dists else m for m in _imported() - VIA_HUB}
    assert used - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - used == set(), "declared in pyproject.toml but never imported"


def _cli_without(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI in a child whose environment lacks `module` (as after `pip install --no-deps`)."""
    code = f"import sys; sys.modules[{module!r}] = None; from reconciler.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_lock_gate_works_without_fastjsonschema():
    """fastjsonschema is only a speed-up in front of jsonschema: without it the verdicts are the same."""
    lock = Path(__file__).parents[1] / "storage.lock.yaml"
    res = _cli_without("fastjsonschema", "--lock", str(lock), "lock", "--check", "--allow-open", cwd=lock.parent)
    assert res.returncode == 0, res.stderr
    assert "Lock: valid, canonical" in res.stdout and "internal error" not in res.stderr
    bad = lock.read_text().replace("dtype: float16", "dtype: float17", 1)
    assert bad != lock.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "storage.lock.yaml").write_text(bad)
        res = _cli_without("fastjsonschema", "lock", "--check", cwd=Path(tmp))
    assert res.returncode == 2 and "float17" in res.stderr and "internal error" not in res.stderr, res.stderr


def test_a_missing_dependency_is_one_clear_error_naming_the_package(tmp_path):
    (tmp_path / "storage.lock.yaml").write_text("version: 1\nroot: storage\nsources: {}\nartifacts: {}\n")
    res = _cli_without("obstore", "--remote", "s3://bucket/prefix", "check", "--remote", cwd=tmp_path)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "'obstore' is not installed" in res.stderr and "pip install obstore" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
