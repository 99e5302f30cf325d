"""Observe the disk: what each artifact is now, through a stat cache.

Observation never writes artifacts; it only records hashes it computed in the stat cache, keyed
like DVC's by (device, inode, size, mtime_ns) plus ctime_ns, which no user-level tool can set
back, so an edited file never matches a stale entry. Every hash `plan`, `check` or `apply`
computes is remembered, so the second `check` of any storage (copied, rsync'ed, pulled by
another tool) hashes nothing. Where the cache lives: `stat_cache_path` (names from `layout`).
The cache carries a format version (`layout.CACHE_FORMAT`); an unknown or corrupt one is rebuilt
with one warning. Provenance records are read through `provenance`, their format's owner.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .hashing import sha256_file, tree_sha256
from .layout import CACHE_FORMAT, STATE_DIR, cache_path, is_temp_name, node_cache_path, state_dir
from .pathrule import VCS_DIRS
from .provenance import read_provenance
from .spec import Artifact, Lock, Observed

log = logging.getLogger(__name__)

# Filesystems where sqlite's locking is unreliable (and every lookup a network round trip): the
# stat cache of a root on one of these lives on the node instead (`stat_cache_path`).
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs",
                        "beegfs", "afs", "ocfs2", "gfs2", "orangefs", "pvfs2", "panfs", "wekafs", "9p",
                        "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
                        "fuse.ceph", "fuse.juicefs", "fuse.beegfs"})


def _fs_type(path: Path) -> str | None:
    """The filesystem type of the mount holding `path` (from /proc/self/mountinfo), or None."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    real, best, fstype = os.path.realpath(path), "", None
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields = head.split()
        if len(fields) < 5 or not tail:
            continue
        mnt = fields[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, tail.split()[0]
    return fstype


def node_state_dir() -> Path:
    """The node-local state folder: `RECONCILE_STATE_DIR`, else `$XDG_CACHE_HOME/reconcile` (~/.cache)."""
    env = os.environ.get("RECONCILE_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reconcile"


def stat_cache_path(root: Path) -> Path:
    """Where the stat cache of `root` lives.

    In the root's state folder (`layout.cache_path`) when the root is writable and on a local
    filesystem (the cache travels and is removed with the storage), unless `RECONCILE_STATE_DIR`
    is set. When the root is read-only, on a network filesystem (sqlite locking is unreliable
    there, and shared by every node), or `RECONCILE_STATE_DIR` is set, it is node-local
    (`layout.node_cache_path` under `node_state_dir()`).
    """
    state = state_dir(root)
    if not os.environ.get("RECONCILE_STATE_DIR"):
        probe = state if state.is_dir() else root
        if os.access(probe, os.W_OK) and _fs_type(probe) not in NETWORK_FS:
            return cache_path(root)
    return node_cache_path(node_state_dir(), root)



class StatCache:
    """sqlite map (dev, ino, size, mtime_ns, ctime_ns) -> sha256, safe across processes.

    Writes are batched: a hash or check result is kept in memory (and served from there to this
    process) until `flush()`, which writes them all in one transaction. One transaction per file
    was ~0.7 ms each (a journal sync), more than hashing a small file. `observe`, `verify.check`
    and `apply` flush when they finish; a batch also goes out once it holds FLUSH_ROWS rows or is
    FLUSH_SECONDS old, so a killed run loses little. A lost row only costs a rehash: an entry
    vouches for a file only while its stat key (inode, size, mtime, ctime) still matches.
    """

    FLUSH_ROWS = 1000
    FLUSH_SECONDS = 2.0

    def __init__(self, root: Path):
        self.root = root
        self.path: Path | None = None  # chosen when first needed (an apply creates the state folder first)
        self._local = threading.local()
        self.hashed: list[str] = []  # paths hashed (not served from the cache) by this process
        self._lock = threading.Lock()
        self._stat_rows: dict[str, tuple[str, str]] = {}  # rel -> (stat key, sha256), not yet written
        self._check_rows: dict[str, str] = {}  # check key -> detail, not yet written
        self._since = 0.0  # monotonic time of the oldest unwritten row
        self._known: dict[str, tuple[str, str]] | None = None  # the stat table, once `preload`ed
        self._warned = False  # one warning per process for a rebuilt cache

    def _db(self, create: bool = False) -> sqlite3.Connection | None:
        """This thread's connection; None when there is no cache yet (and not `create`) or it is unusable."""
        db = getattr(self._local, "db", None)
        if db is None:
            path = self.path or stat_cache_path(self.root)
            if not path.is_file():
                if not create:
                    return None  # lookups never create anything; a flush with rows does
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError:
                    return None
            self.path = path
            try:
                db = self._open(path)
            except (sqlite3.Error, OSError):
                return None  # no cache (full disk, read-only root): everything is simply hashed
            self._local.db = db
        return db

    def _open(self, path: Path) -> sqlite3.Connection:
        """Connect; a cache of an unknown format or a corrupt one is rebuilt (it only saves work)."""
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, CACHE_FORMAT):
                raise sqlite3.DatabaseError(f"format {version}, this reconcile reads format {CACHE_FORMAT}")
            self._create(db, version)
        except sqlite3.DatabaseError as e:  # not a database, or another format: start afresh
            db.close()
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("warning: stat cache %s unreadable (%s): rebuilt; files are hashed again", path, e)
            path.unlink(missing_ok=True)
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._create(db, 0)
        return db

    @staticmethod
    def _create(db: sqlite3.Connection, version: int) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS stat (path TEXT PRIMARY KEY, key TEXT, sha256 TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS checks (key TEXT PRIMARY KEY, detail TEXT)")
        if version != CACHE_FORMAT:  # new, or written before versioning (the same tables): stamp it
            db.execute(f"PRAGMA user_version = {CACHE_FORMAT}")

    @staticmethod
    def _key(st: os.stat_result) -> str:
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def sha256(self, rel: str, full: Path, deep: bool = False) -> str:
        """sha256 of a file: from the cache when its stat key matches (unless deep), else hashed."""
        st = full.stat()
        key = self._key(st)
        if not deep:
            row = self._cached(rel)
            if row and row[0] == key:
                return row[1]
        sha = sha256_file(full)
        with self._lock:
            self.hashed.append(rel)
        if full.stat().st_mtime_ns == st.st_mtime_ns:  # unchanged while we read it
            self.remember(rel, key, sha)
        return sha

    def preload(self) -> None:
        """Read the whole stat table in one query: observing many files then costs no query per file."""
        db = self._db()
        try:
            rows = db.execute("SELECT path, key, sha256 FROM stat").fetchall() if db else []
        except sqlite3.Error:
            rows = []
        self._known = {p: (k, s) for p, k, s in rows}

    def cached_sha256(self, rel: str, st: os.stat_result) -> str | None:
        """The remembered sha256 of a file whose stat is `st`, or None (not known, or changed since)."""
        row = self._cached(rel)
        return row[1] if row and row[0] == self._key(st) else None

    def _cached(self, rel: str) -> tuple[str, str] | None:
        """(stat key, sha256) last recorded for a path: this process's unwritten rows first."""
        with self._lock:
            row = self._stat_rows.get(rel)
        if row is not None:
            return row
        if self._known is not None:
            return self._known.get(rel)
        db = self._db()
        try:
            return db.execute("SELECT key, sha256 FROM stat WHERE path=?", (rel,)).fetchone() if db else None
        except sqlite3.Error:
            return None

    def remember(self, rel: str, key: str, sha: str) -> None:
        """Record a hash the caller knows (e.g. computed while publishing); written by the next flush."""
        self._add(self._stat_rows, rel, (key, sha))

    def remember_file(self, rel: str, full: Path, sha: str) -> None:
        """Record the sha256 of a file just published (stat taken now, after the rename)."""
        self.remember(rel, self._key(full.stat()), sha)

    def check_result(self, key: str) -> str | None:
        """A cached successful check result (its detail), or None."""
        with self._lock:
            detail = self._check_rows.get(key)
        if detail is not None:
            return detail
        db = self._db()
        try:
            row = db.execute("SELECT detail FROM checks WHERE key=?", (key,)).fetchone() if db else None
        except sqlite3.Error:
            row = None
        return row[0] if row else None

    def remember_check(self, key: str, detail: str) -> None:
        """Cache a successful check result keyed by check, params and input hashes."""
        self._add(self._check_rows, key, detail)

    def _add(self, rows: dict, key: str, value) -> None:
        """Queue one row; flush when the batch is full or old."""
        with self._lock:
            now = time.monotonic()
            if not self._stat_rows and not self._check_rows:
                self._since = now
            rows[key] = value
            due = (len(self._stat_rows) + len(self._check_rows) >= self.FLUSH_ROWS
                   or now - self._since >= self.FLUSH_SECONDS)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write every unwritten row in one transaction. Never raises: the cache only saves work,
        so a full disk or a busy database must never fail a check or an apply (the rows are dropped)."""
        with self._lock:
            stat_rows, self._stat_rows = self._stat_rows, {}
            check_rows, self._check_rows = self._check_rows, {}
            if self._known is not None:
                self._known.update(stat_rows)  # still served to this process, written or not
        if not stat_rows and not check_rows:
            return
        db = self._db(create=True)
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read lock
            db.executemany("INSERT OR REPLACE INTO stat VALUES (?,?,?)",
                           [(rel, key, sha) for rel, (key, sha) in stat_rows.items()])
            db.executemany("INSERT OR REPLACE INTO checks VALUES (?,?)", list(check_rows.items()))
            db.execute("COMMIT")
        except sqlite3.Error:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass


def _prov_fields(root: Path, rel: str) -> dict:
    prov = read_provenance(root, rel)
    return {"prov_recipe": (prov or {}).get("recipe_hash"), "prov_sha256": (prov or {}).get("sha256"), "prov": prov}


def _observe_known(a: Artifact, root: Path, cache: StatCache) -> Observed | None:
    """A file artifact whose stat matches a remembered hash (no hashing, no thread); else None."""
    try:
        st = os.lstat(root / a.path)
    except OSError:
        return None
    sha = cache.cached_sha256(a.path, st) if stat.S_ISREG(st.st_mode) else None
    return None if sha is None else Observed(a.path, "file", st.st_size, sha, None, **_prov_fields(root, a.path))


def _observe_one(a: Artifact, root: Path, cache: StatCache, deep: bool) -> Observed:
    full = root / a.path
    pf = _prov_fields(root, a.path)
    if a.is_dir:
        if not full.exists():
            return Observed(a.path, "missing", **pf)
        if not full.is_dir() or full.is_symlink():
            return Observed(a.path, "wrong_type", **pf)
        names = a.files or (pf["prov"] or {}).get("members") or {}
        if any((full / n).is_symlink() or ((full / n).exists() and not (full / n).is_file()) for n in names):
            # a member replaced by a symlink (even to identical bytes) is not storage, like a file artifact
            return Observed(a.path, "wrong_type", **pf)
        members = {n: cache.sha256(f"{a.path}/{n}", full / n, deep) for n in sorted(names) if (full / n).is_file()}
        complete = bool(names) and len(members) == len(names)
        return Observed(a.path, "dir", None, tree_sha256(members) if complete else None, members, **pf)
    if full.is_symlink() or (full.exists() and not full.is_file()):
        return Observed(a.path, "wrong_type", **pf)
    if not full.exists():
        return Observed(a.path, "missing", **pf)
    return Observed(a.path, "file", full.stat().st_size, cache.sha256(a.path, full, deep), None, **pf)


def observe(lock: Lock, root: Path, cache: StatCache, *, deep: bool = False,
            paths: list[str] | None = None) -> dict[str, Observed]:
    """Observe artifacts (all, or `paths`): remembered files first, one stat each on this thread;
    the rest hashed on every core. The cache spares unchanged files."""
    wanted = [lock.artifacts[p] for p in (paths if paths is not None else lock.artifacts)]
    found: dict[str, Observed] = {}
    if not deep:
        if len(wanted) > 16:
            cache.preload()  # one query instead of one per file
        for a in wanted:
            if not a.is_dir and (o := _observe_known(a, root, cache)) is not None:
                found[a.path] = o
    rest = [a for a in wanted if a.path not in found]
    try:
        if rest:
            with ThreadPoolExecutor(max(1, min(len(rest), os.cpu_count() or 1))) as pool:
                # hashlib releases the GIL: one file per core
                found.update((o.path, o) for o in pool.map(lambda a: _observe_one(a, root, cache, deep), rest))
    finally:
        cache.flush()  # the hashes just computed, in one transaction
    return {a.path: found[a.path] for a in wanted}


def untracked(lock: Lock, root: Path) -> list[str]:
    """Files under the root that no artifact owns (reported, never touched), sorted."""
    owned = set(lock.artifacts)
    dirs = {p for p, a in lock.artifacts.items() if a.is_dir}
    out = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if d not in VCS_DIRS]  # never storage, never listed (nor deleted by gc)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in owned or rel == "README.md" and rel_dir == ".":
                continue
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            if parent in dirs and not is_temp_name(name):
                members = (lock.artifacts[parent].files or {})
                if not members or name in members:
                    continue
            out.append(rel)
    return sorted(out)
