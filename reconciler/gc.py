"""`reconcile gc`: find (and, when asked, delete) what under the root the lock does not own.

Kinds of garbage: `untracked` files, `legacy` folders (`models/`, `datasets/` of the old layout,
when the lock owns nothing under them), stale `temp` files (`.reconcile-tmp-*`, hard-link temps
of partial downloads), `partial` downloads that no fetch of this lock would resume, and
`provenance` records of artifacts no longer in the lock.

Safety: nothing outside the root is ever deleted; a path whose parent resolves outside the
root, or a symlink whose target does, is listed as kept and left alone (symlinks inside the
root are unlinked, never followed). Deleting happens only under the root lock taken with no
wait, so the temp files and partial downloads of a running apply are never touched; the list
is recomputed under that lock. Temp files whose writer process is still alive on this host
(docs, lock pinning) are kept too.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BusyError, LockError
from .layout import (
    HOST_TAG,
    STATE_DIR,
    is_link_name,
    is_temp_name,
    partial_dir,
    partial_key,
    provenance_dir,
    provenance_path,
    state_dir,
    writer_host,
    writer_pid,
)
from .pathrule import VCS_DIRS
from .rootlock import RootLock
from .spec import Lock
from .state import untracked

LEGACY_DIRS = ("models", "datasets")


@dataclass(frozen=True)
class Item:
    """One thing gc found: path relative to the root, kind, bytes, and why it is garbage (or kept)."""

    path: str
    kind: str  # untracked | legacy | temp | partial | provenance
    size: int
    reason: str
    deletable: bool = True  # False: found, but in use or unsafe to delete


@dataclass
class GcReport:
    """What can be deleted (`items`), what was found but must stay (`kept`), and why `--yes` is refused."""

    items: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # the root holds the lock file or a VCS folder

    @property
    def total_bytes(self) -> int:
        """Bytes the deletable items hold."""
        return sum(i.size for i in self.items)


def _size(p: Path) -> int:
    if p.is_symlink() or not p.is_dir():
        return p.lstat().st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return total


def _escapes(root_real: Path, p: Path) -> str | None:
    """Why deleting `p` could touch something outside the root, or None when it cannot."""
    parent = p.parent.resolve()
    if parent != root_real and root_real not in parent.parents:
        return f"its folder resolves outside the root ({parent})"
    if p.is_symlink():
        target = p.resolve()
        if target != root_real and root_real not in target.parents:
            return f"symlink to {target}, outside the root"
    return None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours: treat as alive
    return True


def resumable_partials(lock: Lock) -> set[str] | None:
    """Partial-download names a fetch of this lock would resume; None when that cannot be known offline.

    The key is `layout.partial_key` of (repo, type, commit, file, sha256, size), so a branch
    revision (commit unknown without the hub) or an unpinned folder makes every partial possibly
    resumable.
    """
    keys = set()
    for a in lock.artifacts.values():
        if a.fetch is None:
            continue
        src = lock.sources[a.fetch.source]
        if not src.pinned or (a.is_dir and not a.files):
            return None
        if a.is_dir:
            base = posixpath.dirname(a.fetch.glob)
            keys |= {partial_key(src.repo, src.type, src.revision, posixpath.join(base, n), m.sha256, m.size)
                     for n, m in a.files.items()}
        else:
            keys.add(partial_key(src.repo, src.type, src.revision, a.fetch.path, a.sha256, a.size))
    return keys


def _legacy(lock: Lock, root: Path) -> list[Item]:
    out = []
    for name in LEGACY_DIRS:
        p = root / name
        owned = any(a == name or a.startswith(name + "/") for a in lock.artifacts)
        if not owned and (p.is_dir() or p.is_symlink()):
            out.append(Item(name, "legacy", _size(p), "legacy layout folder; the lock owns nothing under it"))
    return out


def _temp_item(rel: str, p: Path) -> Item:
    pid = writer_pid(p.name)
    if pid is not None and _pid_alive(pid):
        return Item(rel, "temp", _size(p), f"in use: its writer (pid {pid}) is alive", False)
    return Item(rel, "temp", _size(p), "stale temp file of an interrupted write")


def _state_items(lock: Lock, root: Path) -> list[Item]:
    """Temp files, stale partial downloads and orphan provenance records inside `.reconcile/`."""
    state = state_dir(root)
    out = []
    if not state.is_dir():
        return out
    for dirpath, _, files in os.walk(state):
        for name in sorted(files):
            p = Path(dirpath) / name
            if is_temp_name(name) or (p.parent == partial_dir(root) and is_link_name(name)):
                out.append(_temp_item(p.relative_to(root).as_posix(), p))
    resumable = resumable_partials(lock)
    partial = partial_dir(root)
    for p in sorted(partial.iterdir()) if partial.is_dir() else []:
        if is_link_name(p.name) or is_temp_name(p.name):
            continue
        rel = p.relative_to(root).as_posix()
        if resumable is None:
            out.append(Item(rel, "partial", _size(p), "kept: the lock has unpinned fetches that may resume it",
                            False))
        elif p.name not in resumable:
            out.append(Item(rel, "partial", _size(p), "partial download no fetch of this lock would resume"))
    out.extend(_orphan_provenance(lock, root))
    return out


def _orphan_provenance(lock: Lock, root: Path) -> list[Item]:
    folder = provenance_dir(root)
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            path = json.loads(p.read_text()).get("path")
        except (OSError, ValueError, AttributeError):
            path = None
        rel = p.relative_to(root).as_posix()
        if not isinstance(path, str) or provenance_path(root, path) != p:
            out.append(Item(rel, "provenance", _size(p), "unreadable provenance record"))
        elif path not in lock.artifacts:
            out.append(Item(rel, "provenance", _size(p), f"record of {path}, no longer in the lock"))
    return out


def _foreign(root: Path, lock_file: Path | None) -> list[Item]:
    """What under the root says it is not a storage folder: the lock file in use, version-control folders."""
    out = []
    root_real = root.resolve()
    if lock_file is not None:
        lf = Path(lock_file).resolve()
        if root_real in lf.parents:
            out.append(Item(lf.relative_to(root_real).as_posix(), "lock", lf.stat().st_size,
                            "the lock file in use: never deleted", False))
    for dirpath, dirnames, _ in os.walk(root):
        if dirpath == str(root):
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for d in sorted(set(dirnames) & VCS_DIRS):
            rel = (Path(dirpath) / d).relative_to(root).as_posix()
            out.append(Item(rel, "vcs", 0, "a version-control folder: never deleted", False))
        dirnames[:] = [d for d in dirnames if d not in VCS_DIRS]
    return out


def collect(lock: Lock, root: Path, lock_file: Path | None = None) -> GcReport:
    """List everything under the root the lock does not own; touches nothing.

    When the root holds `lock_file` or a version-control folder it is not a storage folder:
    the report lists them as kept and `refused` says why `remove` will delete nothing.
    """
    report = GcReport()
    if not root.is_dir():
        return report
    foreign = _foreign(root, lock_file)
    report.kept.extend(foreign)
    report.refused = [f"the storage root holds {'the lock file' if i.kind == 'lock' else 'a version-control folder'} "
                      f"{i.path}" for i in foreign]
    skip = {i.path for i in foreign}
    found = _legacy(lock, root)
    legacy = {i.path for i in found}
    for rel in untracked(lock, root):
        if rel.split("/", 1)[0] in legacy or rel in skip:
            continue  # listed once, as its legacy folder; the lock file is never garbage
        p = root / rel
        found.append(_temp_item(rel, p) if is_temp_name(p.name)
                     else Item(rel, "untracked", _size(p), "not in the lock"))
    found.extend(_state_items(lock, root))
    root_real = root.resolve()
    for item in found:
        why = _escapes(root_real, root / item.path)
        if why:
            report.kept.append(Item(item.path, item.kind, item.size, f"refused: {why}", False))
        elif not item.deletable:
            report.kept.append(item)
        else:
            report.items.append(item)
    return report


def _delete(root: Path, item: Item) -> None:
    p = root / item.path
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)  # a symlink itself, never what it points to
    elif p.is_dir():
        shutil.rmtree(p)  # does not follow symlinks inside (fd-based on Linux)


def _prune_empty(lock: Lock, root: Path, removed: list[Item]) -> None:
    """Remove folders emptied by gc, unless the lock owns them (a folder artifact) or they hold state."""
    owned = {a for a, x in lock.artifacts.items() if x.is_dir}
    for item in removed:
        parent = (root / item.path).parent
        while parent != root:
            rel = parent.relative_to(root)
            if rel.as_posix() in owned or rel.parts[0] == STATE_DIR:
                break
            try:
                parent.rmdir()  # only succeeds when empty
            except OSError:
                break
            parent = parent.parent


def remove(lock: Lock, root: Path, lock_file: Path | None = None) -> GcReport:
    """Delete what `collect` finds, under the root lock; BusyError (nothing deleted) while an apply runs.

    LockError (nothing deleted) when the root holds the lock file or a version-control folder:
    such a root is a project folder, not storage, and everything in it would look untracked.
    """
    first = collect(lock, root, lock_file)
    if first.refused:
        raise LockError(f"gc --yes refused, nothing was deleted: {'; '.join(first.refused)}", where=str(root),
                        fix="point `root` (or --root) at a folder that holds only storage, e.g. `root: storage`")
    try:
        with RootLock(root, 0):
            report = collect(lock, root, lock_file)  # again, under the lock: the root may have moved since
            if report.refused:
                raise LockError(f"gc --yes refused, nothing was deleted: {'; '.join(report.refused)}",
                                where=str(root), fix="point `root` (or --root) at a folder that holds only storage")
            for item in report.items:
                _delete(root, item)
            _prune_empty(lock, root, report.items)
            return report
    except BusyError as e:
        raise BusyError(f"nothing was deleted: {e.message}", where=e.where,
                        fix="wait for the apply to finish, then re-run `reconcile gc --yes`") from None


def remove_dead_temps(root: Path, candidates: list[str]) -> list[str]:
    """Delete temp files (relative paths under root) whose writer was on this host and is dead.

    Called by apply under the root lock with the untracked files it observed, so a killed apply's
    temp files do not wait for `gc`. Names without a host tag (older versions) are left to `gc`.
    """
    removed = []
    root_real = root.resolve()
    for rel in candidates:
        name = posixpath.basename(rel)
        pid = writer_pid(name)
        if not is_temp_name(name) or writer_host(name) != HOST_TAG or pid is None or _pid_alive(pid):
            continue
        p = root / rel
        if _escapes(root_real, p) or not (p.is_file() or p.is_symlink()):
            continue
        try:
            p.unlink()
        except OSError:
            continue  # gc can still list it
        removed.append(rel)
    return removed
