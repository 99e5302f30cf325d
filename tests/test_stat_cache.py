"""The stat cache's batched writes: served at once to this process, written by one transaction,
visible to the next process, and never vouching for a file edited after it was hashed."""

from __future__ import annotations

import os
import sqlite3

from reconciler.hashing import sha256_file
from reconciler.lockfile import load_lock
from reconciler.state import StatCache
from reconciler.verify import check
from tests.fixtures.engine import SMALL_PATHS, flip_byte

BASE = SMALL_PATHS[0]


def _rows(root) -> dict[str, tuple[str, str]]:
    """The stat table as another process sees it."""
    with sqlite3.connect(root / ".reconcile" / "cache.sqlite") as db:
        return {p: (k, s) for p, k, s in db.execute("SELECT path, key, sha256 FROM stat")}


def test_hashes_of_a_deep_check_reach_the_next_process(small_project):
    root = small_project / "storage"
    lock = load_lock(small_project / "storage.lock.yaml")
    with sqlite3.connect(root / ".reconcile" / "cache.sqlite") as db:
        db.execute("DELETE FROM stat")
    deep = StatCache(root)
    assert check(lock, root, deep=True, cache=deep).hashed == 3
    assert set(_rows(root)) == set(SMALL_PATHS)  # flushed when the check ended
    fresh = StatCache(root)
    assert check(lock, root, cache=fresh).hashed == 0 and fresh.hashed == []


def test_unwritten_rows_are_served_then_written_in_one_batch(small_project):
    root = small_project / "storage"
    cache = StatCache(root)
    cache.FLUSH_SECONDS = 3600.0  # only the row count (or an explicit flush) writes
    cache.FLUSH_ROWS = 2
    before = _rows(root)
    full = root / BASE
    cache.remember_file("x/one", full, "1" * 64)
    assert _rows(root) == before, "one row waits for its batch"
    assert cache.sha256("x/one", full) == "1" * 64 and cache.hashed == [], "served from memory to this process"
    cache.remember_check("k", "passed")
    assert _rows(root)["x/one"][1] == "1" * 64, "the second row fills the batch: both written"
    assert StatCache(root).check_result("k") == "passed"


def test_a_row_written_late_never_vouches_for_a_file_edited_since(small_project):
    """The key is the stat taken before hashing; an edit (same size and mtime) changes ctime."""
    root = small_project / "storage"
    lock = load_lock(small_project / "storage.lock.yaml")
    full = root / BASE
    cache = StatCache(root)
    cache.FLUSH_SECONDS = 3600.0
    cache.remember_file(BASE, full, sha256_file(full))  # queued, not yet written
    st = full.stat()
    flip_byte(full)
    os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache.flush()  # the stale row lands after the edit
    fresh = StatCache(root)
    report = check(lock, root, [BASE], cache=fresh)
    assert report.artifacts[0].status == "drifted" and fresh.hashed == [BASE]
