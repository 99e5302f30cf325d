"""The Python API a training script calls: load_lock, plan, apply, check, gate (no CLI involved)."""

from __future__ import annotations

import importlib
import json

import pytest

import reconciler
from reconciler.hashing import sha256_file
from tests.fixtures.engine import LOCK_HEAD, flip_byte, write_lock

LOCK = LOCK_HEAD + """artifacts:
  configs/base.json: {build: {transform: write_json, params: {data: {lr: 0.1}}}}
  configs/copy.json: {build: {transform: copy, inputs: {src: configs/base.json}}}
"""


@pytest.fixture
def project(tmp_path):
    """Applied and pinned (`reconcile lock`): the state a training job's gate sees."""
    from reconciler.lockedit import pin_from_state
    lock = write_lock(tmp_path, LOCK)
    result = reconciler.apply(lock)
    assert result.ok and sorted(result.done) == ["configs/base.json", "configs/copy.json"]
    pinned = pin_from_state(lock, reconciler.load_lock(lock), tmp_path / "storage")
    assert pinned.changes and not pinned.still_stale
    return lock


def test_plan_apply_plan_converges(tmp_path):
    lock = write_lock(tmp_path, LOCK)
    assert [x.action for x in reconciler.plan(lock).pending()] == ["build", "build"]
    assert reconciler.apply(lock).ok
    assert reconciler.plan(lock).pending() == []


def test_gate_returns_the_verified_paths_and_sha256s(project):
    verified = reconciler.gate(project)
    root = project.parent / "storage"
    assert set(verified) == {"configs/base.json", "configs/copy.json"}
    for rel, v in verified.items():
        assert v.path == (root / rel).resolve() and v.sha256 == sha256_file(v.path)
    assert json.loads(verified["configs/base.json"].path.read_text()) == {"lr": 0.1}


def test_gate_raises_on_drift_and_names_the_artifact(project):
    flip_byte(project.parent / "storage" / "configs/copy.json")
    with pytest.raises(reconciler.GateFailed) as exc:
        reconciler.gate(project, deep=True)
    assert isinstance(exc.value, reconciler.ReconcileError)
    assert "configs/copy.json: drifted" in exc.value.message and exc.value.fix
    assert [a.path for a in exc.value.report.artifacts if a.status != "ok"] == ["configs/copy.json"]
    # what a training script writes to list the failures (each verdict has .ok, like the report)
    assert [a.path for a in exc.value.report.artifacts if not a.ok] == ["configs/copy.json"]
    assert reconciler.gate(project, targets=["configs/base.json"]).keys() == {"configs/base.json"}


def test_check_with_attest_writes_the_record_even_on_failure(project, tmp_path):
    (project.parent / "storage" / "configs/base.json").unlink()
    report = reconciler.check(project, attest=tmp_path / "att.json")
    record = json.loads((tmp_path / "att.json").read_text())
    assert not report.ok and record["ok"] is False and record["format_version"] == 1
    assert {a["path"]: a["status"] for a in record["artifacts"]}["configs/base.json"] == "missing"


def test_a_lock_object_needs_its_root(project):
    lock = reconciler.load_lock(project)
    with pytest.raises(reconciler.ReconcileError, match="pass root="):
        reconciler.plan(lock)
    assert reconciler.gate(lock, project.parent / "storage").keys() == {"configs/base.json", "configs/copy.json"}


def test_api_names_survive_importing_the_same_named_submodules():
    importlib.import_module("reconciler.apply")
    importlib.import_module("reconciler.plan")
    assert reconciler.apply.__module__ == reconciler.plan.__module__ == "reconciler.api"
    assert all(callable(getattr(reconciler, name)) for name in reconciler.__all__)
