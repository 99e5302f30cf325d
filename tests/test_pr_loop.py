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


def _downstream(lock, edited: set[str]) -> set[str]:
    """The edited artifacts and everything built from them, transitively."""
    out = set(edited)
    for p, a in lock.artifacts.items():  # dependency order
        if any(i in out for i in a.input_paths()):
            out.add(p)
    return out


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
    stale = _downstream(before, DIM_EDITED | {MBPP})
    assert stale >= DIM_DOWNSTREAM | MBPP_DOWNSTREAM

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
    assert res.code == 0 and f"Apply: {len(users)} done" in res.out, res.text
    assert run_cli("check", cwd=pinned_demo).code == 1
    assert run_cli("lock", cwd=pinned_demo).code == 0
    after = load_lock(lock_path)
    assert after.artifacts[HE_RAW].sha256 != before.artifacts[HE_RAW].sha256
    assert after.artifacts[HE_RAW].size == (pinned_demo / "storage" / HE_RAW).stat().st_size
    for cmd in (["check"], ["lock", "--check"]):
        res = run_cli(*cmd, cwd=pinned_demo)
        assert res.code == 0, (cmd, res.text)


def _micro_lock(dim: int, pins: dict | None = None) -> dict:
    params = {"arch": "llama", "dim": dim, "n_layers": 1, "n_heads": 2, "vocab_size": 64, "intermediate_size": 32,
              "dtype": "float16", "init": "random", "seed": 0}
    art = {"build": {"transform": "micro_model", "params": params}}
    return {"version": 1, "storage_version": "1",
            "artifacts": {"m/model.safetensors": art | (pins or {}),
                          "m/SHA256SUMS": {"build": {"transform": "sha256sums",
                                                     "inputs": {"files": ["m/model.safetensors"]}},
                                           **({"sha256": "b" * 64, "size": 90} if pins else {})}}}


def test_diff_marks_stale_pins_and_predicted_sizes():
    from reconciler.diff import diff_locks, render_markdown
    from reconciler.hashing import sha256_json
    from reconciler.lockfile import lock_from_data
    from reconciler.pins import lock_recipe
    from reconciler.registry import TRANSFORMS
    old_data = _micro_lock(16)
    unpinned = lock_from_data(old_data)
    a = unpinned.artifacts["m/model.safetensors"]
    size = TRANSFORMS["micro_model"].predict_size(dict(a.build.params))
    pins = {"sha256": "a" * 64, "size": size, "recipe": sha256_json(lock_recipe(unpinned, a, {}))}
    old = lock_from_data(_micro_lock(16, pins))
    sums = old.artifacts["m/SHA256SUMS"]
    old_data = _micro_lock(16, pins)
    old_data["artifacts"]["m/SHA256SUMS"]["recipe"] = sha256_json(
        lock_recipe(old, sums, {"m/model.safetensors": "a" * 64}))
    old = lock_from_data(old_data)
    new = lock_from_data(_micro_lock(32, pins))  # the PR edits dim only; the pins are the old ones
    assert stale_pins(old) == {}
    d = diff_locks(old, new)
    (chg,) = d["changed"]
    assert chg["stale_pin"] == "recipe changed: param dim 16 -> 32"
    assert chg["size"]["old"] == size and chg["size"]["new"] > size and chg["size"]["predicted"]
    (reb,) = d["rebuilt"]
    assert reb["path"] == "m/SHA256SUMS" and reb["stale_pin"]
    md = render_markdown(d)
    assert md.count("pins stale: re-pinned by the next `reconcile lock`") == 2 and "predicted" in md
