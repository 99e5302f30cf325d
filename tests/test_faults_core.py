"""Faults: SIGKILL mid-apply, concurrent applies and checks on one root, a busy root, a full disk.

The invariant under every fault: a final path holds either nothing or the complete bytes of a
clean build (never a partial or wrong file), the stat cache never vouches for a file that a
full rehash disagrees with, and a later apply converges.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.apply import apply
from reconciler.errors import ResourceError
from reconciler.lockfile import load_lock
from reconciler.rootlock import RootLock
from reconciler.state import StatCache
from reconciler.verify import check
from tests.fixtures.engine import (
    LOCK_HEAD,
    cli,
    file_shas,
    fork_cli,
    json_bytes,
    run_cli,
    sha,
    spawn_cli,
    temp_files,
    wait_for_owner,
    write_lock,
)


def assert_no_wrong_file(root: Path, allowed: dict[str, set[str]]) -> None:
    """Every artifact path holds nothing or one of its allowed byte contents (by sha256)."""
    for path, found in file_shas(root, allowed).items():
        assert found is None or found in allowed[path], f"{path} holds bytes of no clean build ({found})"
        assert not (root / path).is_symlink()


def assert_fast_agrees_with_deep(lock, root: Path) -> None:
    """The stat-cache tier and a full rehash report the same hashes and verdicts."""
    fast = check(lock, root, cache=StatCache(root))
    deep = check(lock, root, deep=True, cache=StatCache(root))
    assert [(a.path, a.status, a.sha256) for a in fast.artifacts] == \
           [(a.path, a.status, a.sha256) for a in deep.artifacts]


def _big_root(tmp_path: Path, big) -> tuple[Path, Path, Path]:
    project = tmp_path / "p"
    pinned = write_lock(project, big.pinned_text, "pinned.lock.yaml")
    unpinned = write_lock(project, big.open_text, "open.lock.yaml")
    return project, pinned, unpinned


@pytest.mark.slow
def test_sigkill_mid_apply_never_leaves_a_partial_file(tmp_path, big_project):
    project, pinned_path, open_path = _big_root(tmp_path, big_project)
    root = project / "storage"
    locks = {pinned_path.name: load_lock(pinned_path), open_path.name: load_lock(open_path)}
    expected = big_project.expected
    allowed = {p: {s} for p, s in expected.items()}
    rng = random.Random(20240611)
    paths = sorted(expected)
    landed = 0
    runs = 0
    while landed < 20:
        i = runs
        runs += 1
        assert runs <= 60, f"only {landed} of {runs} kills landed mid-apply"
        # Give every run work to do: remove some artifacts, corrupt another (its corrupt bytes are
        # allowed to stay until a run repairs it), alternate pinned and open locks.
        removed = rng.sample(paths, rng.randint(2, len(paths)))
        for p in removed:
            (root / p).unlink(missing_ok=True)
        victim = rng.choice(paths)
        if (root / victim).is_file() and i % 3 == 0:
            with open(root / victim, "r+b") as f:
                f.write(b"#")
            allowed[victim].add(sha((root / victim).read_bytes()))
        lock_name = pinned_path.name if i % 2 == 0 else open_path.name
        start = spawn_cli if runs <= 2 else fork_cli  # the first two through the installed script
        proc = start("--lock", lock_name, "apply", cwd=project)
        started = wait_for_owner(root, proc)
        # Spread kills over the run's expected work (planning, then writing what was removed).
        delay = 0.0 if i % 8 == 0 else rng.uniform(0, big_project.work_s * len(removed) / len(paths))
        if started:
            proc_sleep(proc, delay)
        proc.kill(signal.SIGKILL)
        res = proc.wait()
        landed += res.code == -signal.SIGKILL
        assert res.code in (0, -signal.SIGKILL), res.text
        assert_no_wrong_file(root, allowed)
        assert_fast_agrees_with_deep(locks[lock_name], root)
        for p, found in file_shas(root, paths).items():
            if found == expected[p]:
                allowed[p] = {expected[p]}  # once repaired, corrupt bytes may never come back

    res = run_cli("--lock", pinned_path.name, "apply", cwd=project)
    assert res.code == 0, res.text
    assert file_shas(root, paths) == expected
    res = run_cli("--lock", pinned_path.name, "check", cwd=project)
    assert res.code == 0, res.text
    assert run_cli("--lock", pinned_path.name, "check", "--deep", cwd=project).code == 0
    assert_fast_agrees_with_deep(locks[pinned_path.name], root)


def proc_sleep(proc, seconds: float) -> None:
    """Sleep, returning early if the child ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("n_applies", [2, 4])
def test_concurrent_applies_and_a_check_on_one_root(tmp_path, big_project, n_applies):
    project, pinned_path, _ = _big_root(tmp_path, big_project)
    root = project / "storage"
    args = ("--lock", pinned_path.name)
    applies = [fork_cli(*args, "apply", "--wait", "60", cwd=project) for _ in range(n_applies)]
    checks = [fork_cli(*args, "check", "--json", cwd=project).wait()]
    while any(p.poll() is None for p in applies) and len(checks) < 20:
        checks.append(fork_cli(*args, "check", "--json", cwd=project).wait())
    results = [p.wait() for p in applies]
    assert [r.code for r in results] == [0] * n_applies, [r.text for r in results if r.code]
    assert sum("Nothing to do" in r.out for r in results) == n_applies - 1, "they queue, then find it done"
    done = sum(int(r.out.split("Apply: ")[1].split(" done")[0]) for r in results)
    assert done == len(big_project.expected), "each artifact is built exactly once across the applies"
    for c in checks:
        report = c.json()
        assert c.code in (0, 1), c.text
        if c.code == 1:  # only while incomplete: missing, never drifted or half-written
            assert {a["status"] for a in report["artifacts"]} <= {"ok", "missing"}, report
    assert file_shas(root, big_project.expected) == big_project.expected
    assert run_cli(*args, "check", "--deep", cwd=project).code == 0
    assert temp_files(root) == []


def test_second_apply_without_wait_fails_at_once_naming_the_holder(small_built, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(small_built, project)
    root = project / "storage"
    (root / "configs" / "copy.json").unlink()
    with RootLock(root, 0):
        res = cli("apply", cwd=project)
        assert res.code == 1, res.text
        assert f"another apply holds the storage root (pid {os.getpid()}" in res.err
        assert "pass --wait SECONDS" in res.err and "Traceback" not in res.text
        assert not (root / "configs" / "copy.json").exists(), "the refused apply changed nothing"
        queued = fork_cli("apply", "--wait", "60", cwd=project)
        proc_sleep(queued, 0.5)
        assert queued.poll() is None, "a queued apply waits while the root is held"
        assert not (root / "configs" / "copy.json").exists()
    res = queued.wait()
    assert res.code == 0 and "Apply: 1 done" in res.out, res.text
    assert (root / "configs" / "copy.json").is_file()


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_fails_cleanly_then_succeeds_with_room(tmp_path, small_tmpfs):
    chunk = "z" * 100_000
    data = [chunk] * 30  # ~3 MB of JSON: more than the 2 MiB filesystem holds
    expected = json_bytes(data)
    project = tmp_path / "p"
    items = ", ".join(['&c "' + chunk + '"'] + ["*c"] * 29)
    lock_path = write_lock(project, LOCK_HEAD.replace("root: storage", f"root: {small_tmpfs}/storage") +
                           "artifacts:\n  small.json:\n    build: {transform: write_json, params: {data: 1}}\n"
                           f"  big.json:\n    build: {{transform: write_json, params: {{data: [{items}]}}}}\n"
                           f"    sha256: {sha(expected)}\n")
    root = small_tmpfs / "storage"

    result = apply(load_lock(lock_path), root, keep_going=True)
    err = result.failed["big.json"]
    assert isinstance(err, ResourceError) and "no space left on device while writing big.json" in err.message
    assert result.done == ["small.json"]
    assert not (root / "big.json").exists() and temp_files(root) == []

    res = run_cli("apply", cwd=project)
    assert res.code == 1 and "big.json: no space left on device while writing big.json" in res.err, res.text
    assert "fix: free disk space" in res.err and "Traceback" not in res.text
    assert not (root / "big.json").exists() and temp_files(root) == []

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    res = run_cli("apply", cwd=project)
    assert res.code == 0 and "Apply: 1 done" in res.out, res.text
    assert (root / "big.json").read_bytes() == expected
    assert run_cli("check", "big.json", cwd=project).code == 0
