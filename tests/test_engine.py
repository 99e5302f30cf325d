"""The engine end to end in temporary folders: apply, check, plan files, lock pinning, failures.

Uses only the built-in `write_json` and `copy` transforms. Commands run through the CLI in
child processes (forked from this interpreter, or the installed console script) and through
the library API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reconciler.apply import Skip, SkipReason, apply
from reconciler.errors import IntegrityError
from reconciler.lockfile import load_lock
from reconciler.provenance import read_provenance
from reconciler.state import StatCache
from reconciler.survey import plan_for
from reconciler.verify import check
from tests.fixtures.engine import (
    LOCK_HEAD,
    SMALL_PATHS,
    cli,
    file_shas,
    flip_byte,
    json_bytes,
    run_cli,
    sha,
    small_expected,
    small_lock_text,
    temp_files,
    write_lock,
)

BASE, COPY, OPEN = SMALL_PATHS


def stat_id(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_apply_converges_then_has_nothing_to_do(tmp_path):
    """The installed console script: first apply builds everything, the second does nothing."""
    project = tmp_path / "p"
    write_lock(project, small_lock_text())
    root = project / "storage"
    first = cli("apply", cwd=project)
    assert first.code == 0, first.text
    assert "Apply: 3 done, 0 failed, 0 skipped." in first.out
    assert {p: (root / p).read_bytes() for p in SMALL_PATHS} == small_expected()
    before = {p: stat_id(root / p) for p in SMALL_PATHS}
    second = cli("apply", cwd=project)
    assert second.code == 0, second.text
    assert "Nothing to do" in second.out and "Apply: 0 done" in second.out
    assert {p: stat_id(root / p) for p in SMALL_PATHS} == before, "a converged apply rewrites nothing"
    assert temp_files(root) == []


def test_flipped_byte_is_caught_by_check_and_repaired_without_rebuilding_downstream(small_project):
    root = small_project / "storage"
    expected = small_expected()
    pinned = sha(expected[BASE])
    flip_byte(root / BASE, 5)
    found = sha((root / BASE).read_bytes())
    copy_before = stat_id(root / COPY)

    res = run_cli("check", cwd=small_project)
    assert res.code == 1, res.text
    line = next(ln for ln in res.out.splitlines() if BASE in ln)
    assert "drifted" in line and f"expected {pinned}" in line and f"found {found}" in line
    assert "Traceback" not in res.text

    plan = run_cli("plan", cwd=small_project)
    assert f"rebuild  {BASE}" in plan.out and f"sha256 mismatch: expected {pinned}, found {found}" in plan.out
    assert COPY not in plan.out, "the pinned input comes back to its pinned bytes: its copy stays"

    res = run_cli("apply", cwd=small_project)
    assert res.code == 0, res.text
    assert "Apply: 1 done, 0 failed, 0 skipped." in res.out
    assert (root / BASE).read_bytes() == expected[BASE]
    assert stat_id(root / COPY) == copy_before, "downstream of a repaired pinned artifact is not rebuilt"
    assert run_cli("check", "configs/", cwd=small_project).code == 0


def test_second_check_hashes_nothing_and_deep_rehashes_everything(small_project):
    root = small_project / "storage"
    first = run_cli("check", "--json", cwd=small_project)  # the copied project has a cold stat cache
    assert first.json()["hashed_files"] == 3
    second = run_cli("check", "--json", cwd=small_project)
    report = second.json()
    assert report["hashed_files"] == 0 and report["tier"] == "fast"
    assert {a["path"]: a["status"] for a in report["artifacts"]} == {BASE: "ok", COPY: "ok", OPEN: "unpinned"}
    assert second.code == 1, "an unpinned artifact fails the gate"
    deep = run_cli("check", "--deep", "--json", cwd=small_project).json()
    assert deep["hashed_files"] == 3 and deep["tier"] == "deep"

    lock = load_lock(small_project / "storage.lock.yaml")
    cache = StatCache(root)
    report = check(lock, root, cache=cache)
    assert cache.hashed == [] and report.hashed == 0
    cache = StatCache(root)
    report = check(lock, root, deep=True, cache=cache)
    assert sorted(cache.hashed) == sorted(SMALL_PATHS) and report.hashed == 3


def test_check_cache_never_vouches_for_an_edited_file(small_project):
    """Same size, same mtime: an edit still changes ctime (and the deep tier agrees)."""
    root = small_project / "storage"
    lock = load_lock(small_project / "storage.lock.yaml")
    assert check(lock, root).artifacts[0].status == "ok"
    st = (root / BASE).stat()
    flip_byte(root / BASE)
    os.utime(root / BASE, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = StatCache(root)
    fast = check(lock, root, [BASE], cache=cache)
    assert fast.artifacts[0].status == "drifted" and cache.hashed == [BASE]
    assert check(lock, root, [BASE], deep=True).artifacts[0].sha256 == fast.artifacts[0].sha256


def test_saved_plan_is_applied_when_nothing_moved(small_project):
    (small_project / "storage" / OPEN).unlink()
    assert run_cli("plan", "--out", "plan.json", cwd=small_project).code == 0
    res = run_cli("apply", "--plan", "plan.json", cwd=small_project)
    assert res.code == 0 and "Apply: 1 done" in res.out, res.text


def test_saved_plan_refused_once_a_file_changed(small_project):
    assert run_cli("plan", "--out", "plan.json", cwd=small_project).code == 0
    flip_byte(small_project / "storage" / COPY)
    res = run_cli("apply", "--plan", "plan.json", cwd=small_project)
    assert res.code == 2, res.text
    assert "the storage changed since this plan was made (e.g. configs/copy.json)" in res.err
    assert "Traceback" not in res.text
    assert (small_project / "storage" / COPY).read_bytes() != small_expected()[COPY], "nothing was applied"


def test_saved_plan_refused_once_the_lock_changed(small_project):
    assert run_cli("plan", "--out", "plan.json", cwd=small_project).code == 0
    lock_path = small_project / "storage.lock.yaml"
    lock_path.write_text(lock_path.read_text().replace("{note: unpinned}", "{note: changed}"))
    res = run_cli("apply", "--plan", "plan.json", cwd=small_project)
    assert res.code == 2, res.text
    assert "the lock file changed since this plan was made" in res.err
    assert (small_project / "storage" / OPEN).read_bytes() == small_expected()[OPEN]


def test_saved_plan_of_another_format_is_refused(small_project):
    assert run_cli("plan", "--out", "plan.json", cwd=small_project).code == 0
    data = json.loads((small_project / "plan.json").read_text())
    (small_project / "plan.json").write_text(json.dumps(data | {"format_version": 99}))
    res = run_cli("apply", "--plan", "plan.json", cwd=small_project)
    assert res.code == 2 and "unsupported plan format 99" in res.err, res.text


def test_plan_detailed_exitcode_and_json(small_project):
    assert run_cli("plan", "--detailed-exitcode", cwd=small_project).code == 0
    (small_project / "storage" / COPY).unlink()
    res = run_cli("plan", "--detailed-exitcode", cwd=small_project)
    assert res.code == 2 and f"build    {COPY}  missing" in res.out, res.text
    assert run_cli("plan", cwd=small_project).code == 0, "without the flag pending changes are not an error"

    data = run_cli("plan", "--json", cwd=small_project).json()
    assert data["format_version"] == 1
    assert data["lock_digest"] == load_lock(small_project / "storage.lock.yaml").digest
    assert data["summary"] == {"ok": 2, "fetch": 0, "build": 1, "rebuild": 0, "blocked": 0}
    actions = {a["path"]: a for a in data["actions"]}
    assert list(actions) == [BASE, COPY, OPEN]
    assert (actions[COPY]["action"], actions[COPY]["reason"], actions[COPY]["inputs"]) == ("build", "missing", [BASE])
    assert actions[BASE]["action"] == "ok" and actions[BASE]["found_sha256"] == sha(small_expected()[BASE])


def test_plan_never_writes(tmp_path):
    project = tmp_path / "p"
    write_lock(project, small_lock_text())
    res = run_cli("plan", "--json", cwd=project)
    assert res.code == 0 and {a["action"] for a in res.json()["actions"]} == {"build"}
    assert not (project / "storage").exists(), "planning must not create the root or its state"


def test_untracked_files_are_reported_and_left_alone(small_project):
    root = small_project / "storage"
    (root / "stray.bin").write_bytes(b"\x00\x01")
    (root / "configs" / "notes.txt").write_text("mine\n")
    res = run_cli("plan", cwd=small_project)
    assert "untracked  configs/notes.txt" in res.out and "untracked  stray.bin" in res.out
    assert run_cli("plan", "--json", cwd=small_project).json()["untracked"] == ["configs/notes.txt", "stray.bin"]
    (root / OPEN).unlink()
    assert run_cli("apply", cwd=small_project).code == 0
    assert (root / "stray.bin").read_bytes() == b"\x00\x01" and (root / "configs" / "notes.txt").read_text() == "mine\n"


def test_lock_pins_from_state_keeping_comments(tmp_path):
    project = tmp_path / "p"
    text = small_lock_text(pin=False, comment="# storage for the engine tests\n# second line\n")
    text = text.replace("  notes/open.json:\n", "  notes/open.json:  # free-form notes\n")
    lock_path = write_lock(project, text)
    res = run_cli("lock", "--check", cwd=project)
    assert res.code == 1, res.text
    for path in SMALL_PATHS:
        assert f'unpinned: artifacts."{path}".sha256/size  (no reason declared)' in res.out
    assert "3 unpinned value(s)" in res.out

    assert run_cli("apply", cwd=project).code == 0
    res = run_cli("lock", cwd=project)
    assert res.code == 0 and "Lock: 9 value(s) pinned." in res.out, res.text  # sha256, size, recipe each
    new = lock_path.read_text()
    assert new.startswith("# storage for the engine tests\n# second line\n")
    assert "notes/open.json:  # free-form notes" in new
    lock = load_lock(lock_path)
    for path, data in small_expected().items():
        assert (lock.artifacts[path].sha256, lock.artifacts[path].size) == (sha(data), len(data))
        assert lock.artifacts[path].recipe is not None
    res = run_cli("lock", "--check", cwd=project)
    assert res.code == 0 and "Lock: valid, canonical, 0 unpinned value(s)." in res.out, res.text
    assert run_cli("check", cwd=project).code == 0
    assert run_cli("lock", cwd=project).out.strip() == "Lock: nothing to pin."


def test_lock_does_not_pin_bytes_edited_after_apply(tmp_path):
    """Trust on first use covers what apply produced, not what someone changed afterwards."""
    project = tmp_path / "p"
    write_lock(project, small_lock_text(pin=False))
    assert run_cli("apply", cwd=project).code == 0
    flip_byte(project / "storage" / OPEN)
    assert run_cli("lock", cwd=project).code == 0
    lock = load_lock(project / "storage.lock.yaml")
    assert lock.artifacts[OPEN].sha256 is None and lock.artifacts[BASE].sha256 == sha(small_expected()[BASE])


def test_lock_does_not_pin_bytes_of_an_older_recipe(tmp_path):
    """Found by these tests (fixed in lockedit.py): after editing params, `lock` (before apply) pinned the
    old bytes, so the next apply failed with a sha256 mismatch. It pins only what is current."""
    project = tmp_path / "p"
    lock_path = write_lock(project, small_lock_text(pin=False))
    assert run_cli("apply", cwd=project).code == 0
    lock_path.write_text(lock_path.read_text().replace("{note: unpinned}", "{note: edited}"))
    assert run_cli("lock", cwd=project).code == 0
    assert load_lock(lock_path).artifacts[OPEN].sha256 is None
    assert run_cli("apply", cwd=project).code == 0
    assert "notes/open.json: sha256 " + sha(json_bytes({"note": "edited"})) in run_cli("lock", cwd=project).out
    assert run_cli("check", cwd=project).code == 0


def test_lock_check_allow_open_accepts_declared_reasons(tmp_path):
    project = tmp_path / "p"
    write_lock(project, LOCK_HEAD + "artifacts:\n  a.json:\n    build: {transform: write_json, params: {data: 1}}\n"
                                    "    open: regenerated nightly\n")
    res = run_cli("lock", "--check", cwd=project)
    assert res.code == 1 and "(open: regenerated nightly)" in res.out, res.text
    assert run_cli("lock", "--check", "--allow-open", cwd=project).code == 0


def test_non_canonical_lock_is_detected_and_rewritten(tmp_path):
    project = tmp_path / "p"
    text = small_lock_text().replace("  configs/copy.json:\n    build:\n", "  configs/copy.json:\n    build:    \n")
    text = text.replace("    build:\n      transform: copy", "    build:\n        transform: copy")
    lock_path = write_lock(project, text)
    digest = load_lock(lock_path).digest
    res = run_cli("lock", "--check", cwd=project)
    assert res.code == 1, res.text
    assert "not canonical: line 13:" in res.out and "Lock: valid, not canonical, 1 unpinned value(s)." in res.out
    assert run_cli("lock", cwd=project).code == 0
    assert lock_path.read_text() != text and load_lock(lock_path).digest == digest, "same data, canonical text"
    res = run_cli("lock", "--check", cwd=project)
    assert "Lock: valid, canonical, 1 unpinned value(s)." in res.out and "not canonical" not in res.out
    assert lock_path.read_text().startswith("# engine test storage\n")


def _failing_lock(project: Path) -> Path:
    """bad.json pins a sha256 its recipe cannot give; dep.json copies it; good*.json are independent."""
    wrong = "f" * 64
    return write_lock(project, LOCK_HEAD + "artifacts:\n"
                      "  bad.json:\n    build: {transform: write_json, params: {data: bad}}\n"
                      f"    sha256: {wrong}\n"
                      "  dep.json:\n    build: {transform: copy, inputs: {src: bad.json}}\n"
                      "  dep2.json:\n    build: {transform: copy, inputs: {src: dep.json}}\n"
                      "  good.json:\n    build: {transform: write_json, params: {data: good}}\n"
                      "  good_copy.json:\n    build: {transform: copy, inputs: {src: good.json}}\n")


def test_keep_going_skips_only_the_dependents_of_a_failure(tmp_path):
    project = tmp_path / "p"
    _failing_lock(project)
    root = project / "storage"
    res = run_cli("apply", "--keep-going", cwd=project)
    assert res.code == 1, res.text
    assert "Apply: 2 done, 1 failed, 2 skipped." in res.out
    assert "skipped  dep.json  (input bad.json failed)" in res.out
    assert "skipped  dep2.json  (input dep.json was skipped)" in res.out
    got = sha(json_bytes("bad"))
    assert f"bad.json: sha256 mismatch: expected {'f' * 64}, got {got}; nothing was published" in res.err
    assert "Traceback" not in res.text
    assert not (root / "bad.json").exists() and not (root / "dep.json").exists()
    assert (root / "good_copy.json").read_bytes() == json_bytes("good")
    assert temp_files(root) == []


def test_without_keep_going_apply_stops_at_the_first_failure(tmp_path):
    project = tmp_path / "p"
    lock = load_lock(_failing_lock(project))
    result = apply(lock, project / "storage")
    assert list(result.failed) == ["bad.json"] and isinstance(result.failed["bad.json"], IntegrityError)
    assert result.done == [] and set(result.skipped) == {"dep.json", "dep2.json", "good.json", "good_copy.json"}
    assert result.skipped["good.json"] == Skip(SkipReason.STOPPED)
    assert not (project / "storage" / "bad.json").exists()


def test_pinned_mismatch_on_rebuild_keeps_the_old_file(small_project):
    """A pin that the lock's own recipe does not give fails, saying expected vs got; the old file stays."""
    root = small_project / "storage"
    lock_path = small_project / "storage.lock.yaml"
    old = (root / BASE).read_bytes()
    lock_path.write_text(lock_path.read_text().replace(sha(old), "f" * 64, 1))
    res = run_cli("apply", cwd=small_project)
    assert res.code == 1, res.text
    assert f"sha256 mismatch: expected {'f' * 64}, got {sha(old)}; nothing was published" in res.err
    assert "fix: the pin was made under this same recipe" in res.err and "reconcile show" in res.err
    assert (root / BASE).read_bytes() == old
    assert read_provenance(root, BASE)["sha256"] == sha(old), "the record still describes the file on disk"


def test_recipe_change_of_a_pinned_build_is_a_stale_pin_not_a_mismatch(small_project):
    """The edited artifact is rebuilt without checking the old pin; check and lock --check say stale until lock."""
    lock_path = small_project / "storage.lock.yaml"
    lock_path.write_text(lock_path.read_text().replace("layers: 2", "layers: 3"))
    plan = run_cli("plan", cwd=small_project)
    assert "recipe changed: param data" in plan.out and "pinned bytes will be replaced" in plan.out, plan.text
    assert f"input {BASE} will change" in plan.out
    assert run_cli("apply", cwd=small_project).code == 0
    res = run_cli("check", cwd=small_project)
    assert res.code == 1 and f"stale       {BASE}" in res.out and f"stale       {COPY}" in res.out, res.text
    assert run_cli("lock", "--check", cwd=small_project).code == 1
    assert run_cli("lock", cwd=small_project).code == 0
    assert run_cli("lock", "--check", cwd=small_project).code == 0
    assert sha(json_bytes(dict(small_expected_data(), layers=3))) == load_lock(lock_path).artifacts[BASE].sha256
    assert run_cli("check", cwd=small_project).code == 0


def small_expected_data() -> dict:
    return json.loads(small_expected()[BASE])


def test_library_apply_records_provenance_the_planner_accepts(tmp_path):
    """What apply records is exactly what the planner compares against: re-planning finds nothing to do."""
    project = tmp_path / "p"
    lock = load_lock(write_lock(project, small_lock_text(pin=False)))
    root = project / "storage"
    result = apply(lock, root)
    assert result.ok and result.done == list(SMALL_PATHS)
    plan = plan_for(lock, root, StatCache(root))
    assert [(a.action, a.reason) for a in plan.actions] == [("ok", "recipe and bytes match")] * 3
    rec = read_provenance(root, COPY)
    assert rec["recipe"] == {"transform": "copy", "version": "1", "params": {},
                             "inputs": {"src": sha(small_expected()[BASE])}}
    assert rec["sha256"] == sha(small_expected()[COPY]) and rec["size"] == len(small_expected()[COPY])
    assert file_shas(root, SMALL_PATHS) == {p: sha(b) for p, b in small_expected().items()}


def test_a_file_where_a_folder_should_be_fails_that_artifact_only(tmp_path):
    """Found by these tests (fixed in apply.py): an OSError used to abort the whole apply as an internal error."""
    project = tmp_path / "p"
    write_lock(project, LOCK_HEAD + "artifacts:\n"
               "  nested/a.json:\n    build: {transform: write_json, params: {data: 1}}\n"
               "  nested_copy.json:\n    build: {transform: copy, inputs: {src: nested/a.json}}\n"
               "  free.json:\n    build: {transform: write_json, params: {data: 2}}\n")
    root = project / "storage"
    root.mkdir()
    (root / "nested").write_text("a stray file\n")
    res = run_cli("apply", "--keep-going", cwd=project)
    assert res.code == 1, res.text
    assert "internal error" not in res.text and "Traceback" not in res.text
    assert "error: nested/a.json: failed: FileExistsError" in res.err and "fix: move away" in res.err
    assert "Apply: 1 done, 1 failed, 1 skipped." in res.out
    assert (root / "free.json").read_bytes() == json_bytes(2)
    assert (root / "nested").read_text() == "a stray file\n"


def test_a_file_that_is_not_a_plan_is_a_command_error(small_project):
    (small_project / "plan.json").write_text("not json\n")
    res = run_cli("apply", "--plan", "plan.json", cwd=small_project)
    assert res.code == 2 and "plan.json: not a saved plan" in res.err, res.text
