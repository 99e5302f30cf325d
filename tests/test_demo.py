"""The demo lock end to end: real downloads from the local hub, every transform, every check."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from reconciler.apply import apply
from reconciler.lockfile import load_lock
from reconciler.verify import check
from tests.fixtures.demo import DEMO, apply_demo, demo_token

SUMS = "models_v2/micro-mtp/safetensors/SHA256SUMS"


def test_demo_applies_and_every_declared_check_passes(demo_built):
    lock_path, root, result = demo_built
    assert result.ok and not result.skipped, {p: e.render() for p, e in result.failed.items()}
    lock = load_lock(lock_path)
    assert set(result.done) == set(lock.artifacts)
    report = check(lock, root)
    failed = [(a.path, a.detail, a.checks) for a in report.artifacts if a.status not in ("ok", "unpinned")]
    assert not failed
    ran = {c["check"] for a in report.artifacts for c in a.checks if c["ok"]}
    assert ran >= {"dtype", "tensors", "config_consistent", "loads", "same_sha256", "jsonl_schema", "rows",
                   "stats_consistent", "disjoint"}


def test_raw_artifacts_came_from_the_local_hub(demo_built, hub):
    lock_path, root, _ = demo_built
    lock = load_lock(lock_path)
    gets = {r.file for r in hub.log() if r.method == "GET" and r.status in (200, 206)}
    for p, a in lock.artifacts.items():
        if a.fetch is not None and a.fetch.path:
            assert a.fetch.path in gets, p


def test_second_apply_does_nothing(demo_built):
    lock_path, root, _ = demo_built
    with demo_token():
        again = apply(load_lock(lock_path), root)
    assert again.plan.pending() == [] and again.done == []


def test_sha256sums_passes_sha256sum_c_in_its_folder(demo_built):
    _, root, _ = demo_built
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root / SUMS.rsplit("/", 1)[0],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "model.safetensors: OK" in r.stdout


@pytest.mark.slow
def test_two_builds_are_byte_identical_and_sums_follow_the_model(demo_built, tmp_path):
    lock_path, root, _ = demo_built
    lock = load_lock(lock_path)
    work = tmp_path / "again"
    work.mkdir()
    data = yaml.safe_load(lock_path.read_text())
    (work / "storage.lock.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    lock2, result = apply_demo(work / "storage.lock.yaml", work / "storage")
    assert result.ok
    first = {a.path: a.sha256 for a in check(lock, root).artifacts}
    second = {a.path: a.sha256 for a in check(lock2, work / "storage").artifacts}
    assert first == second  # same lock and inputs: byte-identical outputs, everywhere
    # Change the micro model's recipe: the model and its SHA256SUMS are rebuilt, and still verify.
    spec = data["artifacts"]["models_v2/micro-mtp/safetensors/model.safetensors"]["build"]["params"]
    spec["seed"], spec["init"] = 1, "random"
    (work / "storage.lock.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    lock3, result = apply_demo(work / "storage.lock.yaml", work / "storage")
    assert result.ok
    assert {"models_v2/micro-mtp/safetensors/model.safetensors", SUMS} <= set(result.done)
    after = {a.path: a.sha256 for a in check(lock3, work / "storage").artifacts}
    assert after[SUMS] != first[SUMS]
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=work / "storage" / SUMS.rsplit("/", 1)[0])
    assert r.returncode == 0


def _demo_module(name: str):
    import importlib
    import sys
    sys.path.insert(0, str(DEMO))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(DEMO))


def test_demo_lock_is_generated_from_the_real_lock():
    make_lock = _demo_module("make_lock")
    real = DEMO.parents[1] / "storage.lock.yaml"
    assert (DEMO / "storage.lock.yaml").read_text() == make_lock.demo_lock_text(real.read_text()), \
        "examples/demo/storage.lock.yaml is stale: run `python examples/demo/make_lock.py`"


def _recipe_shape(lock):
    """What must not differ between the demo and the real lock: paths, transforms, inputs, checks, fetches."""
    size_params = {"dim", "vocab_size"}  # the micro models' sizes: the only params make_lock shrinks
    out = {}
    for p, a in lock.artifacts.items():
        build = (a.build.transform, json.dumps(a.build.inputs, sort_keys=True),
                 json.dumps({k: v for k, v in a.build.params.items() if k not in size_params}, sort_keys=True)) \
            if a.build else None
        fetch = (a.fetch.source, a.fetch.path, a.fetch.glob) if a.fetch else None
        checks = tuple((c.name, tuple(sorted(k for k in c.params if (c.name, k) not in
                                             {("same_sha256", "sha256")}))) for c in a.checks)
        out[p] = (build, fetch, checks, a.dtype)
    return out


def test_demo_lock_has_every_artifact_transform_input_and_check_of_the_real_lock():
    demo = load_lock(DEMO / "storage.lock.yaml")
    real = load_lock(DEMO.parents[1] / "storage.lock.yaml")
    assert _recipe_shape(demo) == _recipe_shape(real)
    assert demo.storage_version == real.storage_version and demo.raw["releases"] == real.raw["releases"]
    assert {n: s.repo for n, s in demo.sources.items()} == {n: s.repo for n, s in real.sources.items()}
    # Only sizes shrink: the micro specs' dim and vocab, and the max_size they imply.
    for p, a in real.artifacts.items():
        d = demo.artifacts[p]
        if a.build and a.build.params != d.build.params:
            assert {k for k in a.build.params if a.build.params[k] != d.build.params[k]} <= {"dim", "vocab_size"}, p
        assert (a.max_size is None) == (d.max_size is None), p


def test_lock_resolve_pins_commits_sha256_and_sizes_from_the_hub(demo_store, tmp_path):
    from reconciler.lockedit import resolve_from_hub
    lock_path = tmp_path / "storage.lock.yaml"
    shutil.copy(DEMO / "storage.lock.yaml", lock_path)
    with demo_token():
        changes = resolve_from_hub(lock_path, load_lock(lock_path))
    lock = load_lock(lock_path)
    assert lock.sources["meta-mtp"].revision == demo_store["facebook/multi-token-prediction"]
    assert all(s.pinned for s in lock.sources.values())
    ckpt = lock.artifacts["models_v2/meta-llama-mtp/raw/7B_1T_4/consolidated.pth"]
    assert ckpt.sha256 and ckpt.size and any("consolidated.pth: sha256" in c for c in changes)
    assert lock.artifacts["models_v2/meta-llama-mtp/raw/7B_1T_4/params.json"].size  # non-LFS: size only


def test_plan_refresh_asks_the_hub_for_download_sizes(demo_store, tmp_path):
    from reconciler.state import StatCache
    from reconciler.survey import plan_for, refresh_sizes
    lock = load_lock(DEMO / "storage.lock.yaml")
    plan = plan_for(lock, tmp_path / "storage", StatCache(tmp_path / "storage"))
    assert "of unknown size" in plan.summary()
    with demo_token():
        refreshed = refresh_sizes(lock, plan)
    fetches = [a for a in refreshed.actions if a.action == "fetch"]
    assert fetches and all(a.download_bytes for a in fetches)
    assert "unknown" not in refreshed.summary() and refreshed.state_digest == plan.state_digest


def test_check_tells_serialisation_from_tensor_changes(demo_built, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from reconciler.lockedit import pin_from_state
    lock_path, root, _ = demo_built
    shutil.copytree(root, tmp_path / "storage", symlinks=True)
    lock_copy = tmp_path / "storage.lock.yaml"
    shutil.copy(lock_path, lock_copy)
    pin_from_state(lock_copy, load_lock(lock_copy), tmp_path / "storage")
    lock = load_lock(lock_copy)
    target = "models_v2/micro-ref/safetensors/model.safetensors"
    assert lock.artifacts[target].content_digest
    f = tmp_path / "storage" / target
    tensors = load_file(f)
    save_file(tensors, f, metadata={"format": "pt", "note": "re-serialised"})  # same tensors, new bytes
    st = {a.path: a for a in check(lock, tmp_path / "storage", [target]).artifacts}[target]
    assert st.status == "ok" and "only the serialisation changed" in st.detail
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, f, metadata={"format": "pt"})
    st = {a.path: a for a in check(lock, tmp_path / "storage", [target]).artifacts}[target]
    assert st.status == "drifted" and f"tensor {name}: values changed" in st.detail
