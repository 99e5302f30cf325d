"""Start-up cost: loading the plug-ins, validating a lock and planning never import torch.

torch costs seconds to import; every `reconcile` command loads every plug-in, so a plug-in that
imports torch (or the model zoo's nn.Modules) at module level slows every command. Each case runs
in a fresh interpreter: this test process itself has long imported torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from tests.fixtures.engine import LOCK_HEAD, write_lock

# Without torch installed "torch was not imported" holds trivially: skip instead of passing vacuously.
pytest.importorskip("torch")


HEAVY = ("torch", "numpy", "onnxruntime")  # seconds (torch) or tens of milliseconds (numpy) of start-up


def _heavy_imported_after(code: str, cwd=None) -> list[str]:
    """Run `code` in a fresh interpreter; the HEAVY modules that ended up in sys.modules."""
    probe = textwrap.dedent(code) + f"\nimport sys\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr
    return ast.literal_eval(res.stdout.strip().splitlines()[-1].removeprefix("HEAVY "))


def _torch_imported_after(code: str, cwd=None) -> bool:
    return "torch" in _heavy_imported_after(code, cwd)


def test_the_probe_sees_torch_when_it_is_imported():
    """The control: building a model does import torch, and the probe reports it."""
    assert _torch_imported_after("""
        from reconciler.models.nets import build_model
        build_model("mtp", {"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 256})
    """)


def test_import_reconciler_loads_no_engine_module():
    """`import reconciler` (done by every command, `--help` included) loads the API only on first use."""
    probe = "import sys, reconciler\nprint(sorted(m for m in sys.modules if m.startswith('reconciler.')))\n"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_load_plugins_imports_no_heavy_module():
    """Every command loads every plug-in: none may import torch, numpy or onnxruntime at module level
    (numpy alone was 44 ms of a 0.2 s warm `check`)."""
    assert not _heavy_imported_after("""
        from reconciler.registry import CHECKS, TRANSFORMS, load_plugins
        load_plugins()
        assert "micro_model" in TRANSFORMS and "loads" in CHECKS
    """)


def test_micro_model_size_bound_is_checked_without_torch(tmp_path):
    """`predict_size` (a micro model's exact file size, checked against max_size) is pure arithmetic."""
    spec = "{arch: mtp, dim: 64, n_layers: 2, n_heads: 4, vocab_size: 256, dtype: float16, init: random}"
    lock = write_lock(tmp_path, LOCK_HEAD + "artifacts:\n"
                      f"  m.safetensors: {{build: {{transform: micro_model, params: {spec}}}, max_size: 100}}\n")
    assert not _torch_imported_after(f"""
        from reconciler.errors import LockError
        from reconciler.lockfile import load_lock
        try:
            load_lock({str(lock)!r})
        except LockError as e:
            assert "above max_size" in e.message, e.message
        else:
            raise AssertionError("max_size 100 was accepted")
    """)


def test_plan_and_check_commands_import_no_heavy_module(tmp_path):
    write_lock(tmp_path, LOCK_HEAD + "artifacts:\n  a.json: {build: {transform: write_json, params: {data: 1}}}\n")
    for args in (["plan"], ["check"]):
        assert not _heavy_imported_after(f"""
            from reconciler.cli import main
            try:
                main({args!r})
            except SystemExit:
                pass
        """, cwd=tmp_path), args


def test_test_fixtures_import_nothing_heavy():
    """Every fixture module is loaded for every test: pure tests (planner, lock) must not pay for
    torch or pyarrow; the generators that need them are imported inside their fixtures."""
    probe = textwrap.dedent("""
        import sys
        import tests.conftest
        for name in tests.conftest.pytest_plugins:
            __import__(name)
        print(sorted(m for m in ("torch", "pyarrow", "sentencepiece", "transformers") if m in sys.modules))
    """)
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "[]", res.stdout + res.stderr
