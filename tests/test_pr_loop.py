"""The pull-request loop on the demo lock: a recipe or revision change is one `apply` + one `lock`.

Every intermediate state is reported honestly: right after the edit and right after `apply`,
`check` and `lock --check` fail and name every artifact whose pin was made under another
recipe; after `reconcile lock`, every pin (sha256, size, content_digest, recipe) is new and
the gate passes. The real CLI runs in a child process against the session's local hub.
"""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from reconciler.lockfile import load_lock
from reconciler.pins import stale_pins
from tests.fixtures.demo import DEMO, demo_token
from tests.fixtures.engine import cli as run_cli

MICRO = "models_v2/micro-mtp"
MODEL = f"{MICRO}/safetensors/model.safetensors"
MBPP = "datasets_v2/mbpp/processed/train.jsonl"
# What a dim change reaches: the edited two, and everything downstream of them.
DIM_EDITED = {MODEL, f"{MICRO}/configs/params.json"}
DIM_DOWNSTREAM = {f"{MICRO}/configs/meta_adapter.yaml", f"{MICRO}/configs/config.json", f"{MICRO}/metadata.json",
                  f"{MICRO}/safetensors/SHA256SUMS"}
RELEASE_DATE = load_lock(DEMO / "storage.lock.yaml").raw["releases"][0]["date"]  # names the stats files
MBPP_DOWNSTREAM = {"datasets_local_small/mbpp_small/train.jsonl", f"datasets_v2/mbpp/stats/{RELEASE_DATE}_summary.json"}
HE_RAW = "datasets_v2/humaneval/raw/test-00000-of-00001.parquet"


@pytest.fixture(scope="module")
def pinned_demo_src(demo_built, tmp_path_factory):
    """The demo storage with its lock pinned by `reconcile lock` (what a team commits)."""
    lock_path, root, result = demo_built
    assert result.ok
    work = tmp_path_factory.mktemp("pinned-demo")
    shutil.copytree(root, work / "storage", symlinks=True)
    shutil.copy(lock_path, work / "storage.lock.yaml")
    res = run_cli("lock", cwd=work)
    assert res.code == 0, res.text
    return work


@pytest.fixture
def pinned_demo(pinned_demo_src, tmp_path):
    """A private copy of the pinned demo project."""
    work = tmp_path / "demo"
    shutil.copytree(pinned_demo_src, work, symlinks=True)
    return work


def _stale_named(text: str) -> set[str]:
    return set(re.findall(r'stale: artifacts\."([^"]+)"', text))


def _check_failed(text: str) -> set[str]:
    """The paths listed under check's closing `Failed (N):` summary."""
    tail = text.split("Failed (", 1)[1]
    return {ln.split()[1] for ln in tail.splitlines()[1:] if ln.startswith("  ")}


@pytest.mark.slow
def test_recipe_change_is_one_apply_and_one_lock(pinned_demo):
    lock_path = pinned_demo / "storage.lock.yaml"
    before = load_lock(lock_path)
    assert all(a.recipe for a in before.artifacts.values()), "reconcile lock records every pin's recipe"
    text = lock_path.read_text()
    assert text.count("arch: mtp, dim: 64,") == 1
    text = text.replace("arch: mtp, dim: 64,", "arch: mtp, dim: 48,")
    mbpp_line = next(ln for ln in text.splitlines() if "mbpp/raw/train-" in ln and "to_alpaca" in ln)
    text = text.replace(mbpp_line, mbpp_line.replace("max_tokens: 2048", "max_tokens: 512"))
    lock_path.write_text(text)
    stale = DIM_EDITED | DIM_DOWNSTREAM | {MBPP} | MBPP_DOWNSTREAM

    # 1. plan shows every consequence at once, with no hand edits
    plan = run_cli("plan", cwd=pinned_demo)
    assert plan.code == 0, plan.text
    rows = {ln.split()[1]: ln for ln in plan.out.splitlines() if ln.startswith("  rebuild")}
    assert set(rows) == stale
    assert "recipe changed: param dim 64 -> 48; pinned bytes will be replaced" in rows[MODEL]
    assert "recipe changed: param max_tokens 2048 -> 512; pinned bytes will be replaced" in rows[MBPP]
    assert f"input {MODEL} will change" in rows[f"{MICRO}/metadata.json"]
    assert f"{len(stale)} stale pin(s)" in plan.out
    # ... and both gates fail, naming the artifacts and the fix
    res = run_cli("check", "--quiet", cwd=pinned_demo)
    assert res.code == 1 and _check_failed(res.out) == stale, res.text
    assert "fix: reconcile apply && reconcile lock" in res.out
    res = run_cli("lock", "--check", cwd=pinned_demo)
    assert res.code == 1 and _stale_named(res.out) == stale, res.text
    assert "param dim 64 -> 48" in res.out and "fix: reconcile apply && reconcile lock" in res.out

    # 2. one apply builds them all (the stale pins are not checked against the new bytes)
    res = run_cli("apply", cwd=pinned_demo)
    assert res.code == 0, res.text
    assert f"Apply: {len(stale)} done, 0 failed, 0 skipped." in res.out
    assert "run `reconcile lock` to re-pin them" in res.out
    plan = run_cli("plan", "--detailed-exitcode", cwd=pinned_demo)
    assert plan.code == 0 and f"{len(stale)} stale pin(s)" in plan.out, plan.text
    # ... the gates still fail: storage is right, the lock is not
    res = run_cli("check", "--quiet", cwd=pinned_demo)
    assert res.code == 1 and _check_failed(res.out) == stale, res.text
    res = run_cli("lock", "--check", cwd=pinned_demo)
    assert res.code == 1 and _stale_named(res.out) == stale, res.text
    assert "param dim 64 -> 48" in res.out, "the old recipe is still named after apply"

    # 3. one lock re-pins sha256, size, content_digest and recipe together
    res = run_cli("lock", cwd=pinned_demo)
    assert res.code == 0, res.text
    after = load_lock(lock_path)
    size = (pinned_demo / "storage" / MODEL).stat().st_size
    old, new = before.artifacts[MODEL], after.artifacts[MODEL]
    assert new.size == size != old.size
    assert new.sha256 != old.sha256 and new.content_digest != old.content_digest and new.recipe != old.recipe
    assert stale_pins(after) == {}
    for cmd in (["check"], ["lock", "--check"], ["plan", "--detailed-exitcode"]):
        res = run_cli(*cmd, cwd=pinned_demo)
        assert res.code == 0, (cmd, res.text)
    assert run_cli("lock", cwd=pinned_demo).out.strip() == "Lock: nothing to pin."


@pytest.mark.slow
def test_revision_change_of_a_source_is_one_apply_and_one_lock(pinned_demo, hub):
    sys.path.insert(0, str(DEMO))
    try:
        from reconcile_testing.datasets import make_humaneval_parquet
        from reconcile_testing.hub.repo import add_revision
        parquet = make_humaneval_parquet(pinned_demo / "he.parquet", n=24, seed=1)
        commit = add_revision(hub.store.root, "openai/openai_humaneval", "dataset",
                              {"openai_humaneval/test-00000-of-00001.parquet": parquet}, branch="pr-loop-test",
                              licence="mit")
    finally:
        sys.path.remove(str(DEMO))
    lock_path = pinned_demo / "storage.lock.yaml"
    before = load_lock(lock_path)
    old = before.sources["humaneval"].revision
    lock_path.write_text(lock_path.read_text().replace(old, commit))
    users = {HE_RAW, "datasets_v2/humaneval/processed/test.jsonl", f"datasets_v2/humaneval/stats/{RELEASE_DATE}_summary.json",
             "datasets_local_small/humaneval_small/test.jsonl"}

    plan = run_cli("plan", cwd=pinned_demo)
    rows = {ln.split()[1]: ln for ln in plan.out.splitlines() if ln.startswith(("  fetch", "  rebuild"))}
    assert set(rows) == users, plan.text
    assert f"source changed: commit {old} -> {commit}; pinned bytes will be replaced" in rows[HE_RAW]
    res = run_cli("lock", "--check", cwd=pinned_demo)
    assert res.code == 1 and _stale_named(res.out) == users, res.text
    with demo_token():
        res = run_cli("apply", cwd=pinned_demo)
    assert res.code == 0 and "Apply: 4 done" in res.out, res.text
    assert run_cli("check", cwd=pinned_demo).code == 1
    assert run_cli("lock", cwd=pinned_demo).code == 0
    after = load_lock(lock_path)
    assert after.artifacts[HE_RAW].sha256 != before.artifacts[HE_RAW].sha256
    assert after.artifacts[HE_RAW].size == (pinned_demo / "storage" / HE_RAW).stat().st_size
    for cmd in (["check"], ["lock", "--check"]):
        res = run_cli(*cmd, cwd=pinned_demo)
        assert res.code == 0, (cmd, res.text)
