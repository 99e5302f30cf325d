"""`check` remembers what it hashes, on storage that no local `apply` produced.

A copied or rsync'ed root (with or without its `.reconcile/` folder) is hashed by the first
`check` and by no later one; with `RECONCILE_STATE_DIR` the cache lives there (node-local)
and the root is left exactly as it was.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reconciler.lockfile import load_lock
from reconciler.state import StatCache, _fs_type, stat_cache_path
from reconciler.verify import check
from tests.fixtures.engine import SMALL_PATHS, STATE, cli, flip_byte


def _tree(root: Path) -> dict[str, int]:
    """Every path under root with its size (a snapshot to compare before/after)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _copy(small_project: Path, tmp_path: Path, *, with_state: bool) -> Path:
    """A copy of the small project's storage that no apply on this root produced."""
    dst = tmp_path / "copied"
    shutil.copytree(small_project / "storage", dst / "storage",
                    ignore=None if with_state else shutil.ignore_patterns(STATE))
    shutil.copy(small_project / "storage.lock.yaml", dst / "storage.lock.yaml")
    return dst


@pytest.mark.parametrize("with_state", [False, True], ids=["artifacts-only", "rsync-with-state"])
def test_second_check_of_copied_storage_hashes_nothing(small_project, tmp_path, with_state):
    project = _copy(small_project, tmp_path, with_state=with_state)
    root, lock = project / "storage", load_lock(project / "storage.lock.yaml")
    first = check(lock, root)
    assert first.hashed == len(SMALL_PATHS), "new inodes: every file is hashed once"
    again = check(lock, root, cache=StatCache(root))  # a fresh cache object = another process
    assert again.hashed == 0
    assert [a.status for a in again.artifacts] == [a.status for a in first.artifacts] == ["ok", "ok", "unpinned"]
    assert stat_cache_path(root) == root / STATE / "cache.sqlite", "a writable local root keeps its own cache"


def test_an_edit_after_the_remembering_check_is_still_seen(small_project, tmp_path):
    project = _copy(small_project, tmp_path, with_state=False)
    root, lock = project / "storage", load_lock(project / "storage.lock.yaml")
    check(lock, root)
    flip_byte(root / SMALL_PATHS[0])
    report = check(lock, root, cache=StatCache(root))
    assert report.hashed == 1 and report.artifacts[0].status == "drifted"


def test_state_dir_env_keeps_the_cache_on_the_node_and_the_root_untouched(small_project, tmp_path, monkeypatch):
    project = _copy(small_project, tmp_path, with_state=False)
    root = project / "storage"
    before = _tree(root)
    state = tmp_path / "node-state"
    monkeypatch.setenv("RECONCILE_STATE_DIR", str(state))
    assert stat_cache_path(root).is_relative_to(state)
    lock = load_lock(project / "storage.lock.yaml")
    assert check(lock, root).hashed == len(SMALL_PATHS)
    assert stat_cache_path(root).is_file()
    assert check(lock, root, cache=StatCache(root)).hashed == 0
    assert _tree(root) == before, "the root is not written"
    other = tmp_path / "other-root"
    assert stat_cache_path(other) != stat_cache_path(root), "each root has its own node-local cache"


def test_cli_second_check_reports_zero_hashed(small_project, tmp_path):
    """The user's path: two `reconcile check` processes on a freshly copied root."""
    project = _copy(small_project, tmp_path, with_state=False)
    first = cli("check", "configs", cwd=project)
    second = cli("check", "configs", cwd=project)
    assert first.code == 0 and "2 ok, 0 not ok; 2 file(s) hashed" in first.out, first.text
    assert second.code == 0 and "2 ok, 0 not ok; 0 file(s) hashed" in second.out, second.text


def test_a_plan_of_missing_files_creates_no_cache(tmp_path, small_project):
    """Lookups never create a database: only a flush of remembered hashes does."""
    root = tmp_path / "empty-root"
    root.mkdir()
    cache = StatCache(root)
    assert cache.cached_sha256("x", os.stat(small_project / "storage.lock.yaml")) is None
    cache.flush()
    assert not (root / STATE).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_root_remembers_on_the_node(small_project, tmp_path, monkeypatch):
    project = _copy(small_project, tmp_path, with_state=False)
    root = project / "storage"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        d.chmod(0o555)
    try:
        lock = load_lock(project / "storage.lock.yaml")
        assert stat_cache_path(root).is_relative_to(tmp_path / "xdg")
        assert check(lock, root).hashed == len(SMALL_PATHS)
        assert check(lock, root, cache=StatCache(root)).hashed == 0
    finally:
        for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
            d.chmod(0o755)


def test_filesystem_type_comes_from_the_mount_table():
    """The network-filesystem decision reads the real mount table."""
    assert _fs_type(Path("/proc/self")) == "proc"
    assert _fs_type(Path("/")) is not None
