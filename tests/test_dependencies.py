"""pyproject.toml declares what `reconciler` imports, and nothing more: a wheel's users get exactly that."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import reconciler

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# The HTTP stack of whichever huggingface_hub line is installed, reached through it and declared by it
# (reconciler/sources/hub_http.py); declaring one here would drag it into every other line's environment.
VIA_HUB = {"requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2"}


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
    declared = {_norm(re.split(r"[<>=!~ ;\[]", d)[0]) for d in pyproject["project"]["dependencies"]}
    dists = packages_distributions()
    used = {_norm(dists[m][0]) if m in dists else m for m in _imported() - VIA_HUB}
    assert used - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - used == set(), "declared in pyproject.toml but never imported"
