"""Lock-wide remote operations: push, pull and the remote check.

push: verify the local bytes against the pins, upload the blobs the remote lacks (one listing when there
are many, HEAD requests when few), then the action-cache entries, then the manifest of this lock (last,
and only when every artifact of the lock is on the remote), so a cut push leaves no manifest.
pull: needs that manifest ("incomplete push" otherwise), then restores each target through the publish path.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IntegrityError, RemoteError
from ..plan import build_recipe
from ..provenance import write_provenance
from ..spec import Lock
from ..state import StatCache, observe
from . import layout
from .node import NodeCache, action_entry_from, provenance_from, restore_dir, restore_file
from .store import Remote

MANY = 20  # above this many blobs, one listing is cheaper than one HEAD each


@dataclass
class PushReport:
    """What a push did."""

    uploaded: list[str] = field(default_factory=list)  # artifact paths (or folder members) uploaded
    present: int = 0  # blobs the remote already had
    entries: int = 0  # action-cache entries written
    manifest: str | None = None  # the manifest key, when written


def _local_files(lock: Lock, root: Path, paths: list[str], cache: StatCache) -> tuple[dict, dict]:
    """Verify the targets on disk against their pins: {file rel: sha256} and the manifest entries."""
    observed = observe(lock, root, cache, paths=paths)
    files: dict[str, str] = {}
    entries: dict[str, dict] = {}
    bad = []
    for p in paths:
        a, o = lock.artifacts[p], observed[p]
        if o.sha256 is None or (a.sha256 and o.sha256 != a.sha256):
            bad.append(f"{p} ({'missing' if o.sha256 is None else 'sha256 differs from the pin'})")
            continue
        if a.is_dir:
            sizes = {n: (root / p / n).stat().st_size for n in o.members}
            files.update({f"{p}/{n}": s for n, s in o.members.items()})
            entries[p] = {"sha256": o.sha256, "size": sum(sizes.values()),
                          "members": {n: {"sha256": s, "size": sizes[n]} for n, s in sorted(o.members.items())}}
        else:
            files[p] = o.sha256
            entries[p] = {"sha256": o.sha256, "size": o.size}
        if o.prov_recipe and o.prov_sha256 == o.sha256:
            entries[p]["recipe_hash"] = o.prov_recipe
    if bad:
        raise IntegrityError(f"{len(bad)} artifact(s) are not as pinned here: {', '.join(bad[:5])}"
                             f"{' …' if len(bad) > 5 else ''}; nothing was pushed", where=str(root),
                             fix="run `reconcile apply` (and `reconcile check`) first, then push")
    return files, entries


def _present(remote: Remote, shas: set[str]) -> set[str]:
    """Which of these blobs the remote holds."""
    if len(shas) > MANY:
        listed = {layout.sha_of_blob_key(k) for k in remote.listing(layout.blobs_prefix())}
        return shas & listed
    return {s for s in shas if remote.head(layout.blob_key(s)) is not None}


def push(lock: Lock, root: Path, remote: Remote, targets: list[str] | None = None, *, jobs: int = 4) -> PushReport:
    """Upload what the remote lacks for `targets` (all artifacts when None); the manifest last."""
    from .transfer import upload
    paths = targets if targets else list(lock.artifacts)
    cache = StatCache(root)
    files, entries = _local_files(lock, root, paths, cache)
    remote.probe()
    report = PushReport()
    have = _present(remote, set(files.values()))
    todo = {}
    for rel, sha in files.items():
        if sha not in have and sha not in todo:
            todo[sha] = rel
    report.present = len(set(files.values())) - len(todo)
    with ThreadPoolExecutor(max(1, jobs)) as pool:  # many small files: several uploads in flight
        list(pool.map(lambda item: upload(remote, root / item[1], item[0]), todo.items()))
    report.uploaded = sorted(todo.values())
    for p in paths:
        entry = action_entry_from(root, p)
        if entry is not None and entry["sha256"] == entries[p]["sha256"]:
            if remote.put_record(layout.action_key(entry["recipe_hash"]), layout.encode(entry), create=True):
                report.entries += 1
    if set(paths) == set(lock.artifacts):
        key = layout.manifest_key(lock.digest)
        data = layout.encode(layout.manifest(lock.digest, lock.storage_version, entries))
        old = remote.get_record(key)
        if old is None or old[0] != data:
            remote.put_record(key, data)
        report.manifest = key
    return report


def read_manifest(lock: Lock, remote: Remote) -> dict:
    """The manifest of this lock; RemoteError "incomplete push" when the remote has none."""
    key = layout.manifest_key(lock.digest)
    got = remote.get_record(key)
    if got is None:
        remote.probe()  # a missing bucket or refused credentials say so, not "incomplete"
        pinned = {a.sha256 for a in lock.artifacts.values() if a.sha256}
        held = len(_present(remote, pinned)) if pinned else 0
        raise RemoteError(f"incomplete push: the remote has no manifest for this lock (digest {lock.digest[:16]}…, "
                          f"{key}); it holds {held} of {len(pinned)} pinned blobs",
                          where=remote.url, fix="run `reconcile push` (without TARGETS) on a node whose `reconcile "
                                                "check` passes; a cut push resumes where it stopped")
    return layout.decode(got[0], key)


def _expected(lock: Lock, manifest: dict, path: str) -> dict:
    """sha256/size/members of an artifact: the lock's pins first, else the manifest's entry."""
    a = lock.artifacts[path]
    m = (manifest.get("artifacts") or {}).get(path) or {}
    if a.is_dir:
        if a.files and all(x.sha256 for x in a.files.values()):
            return {"members": {n: {"sha256": x.sha256, "size": x.size} for n, x in a.files.items()}}
        return {"members": m.get("members") or {}}
    return {"sha256": a.sha256 or m.get("sha256"), "size": a.size if a.size is not None else m.get("size")}


def pull(lock: Lock, root: Path, remote: Remote, targets: list[str], progress=None) -> tuple[list[str], list[str]]:
    """Download the targets (all when empty) that are not already here; returns (pulled, already ok)."""
    manifest = read_manifest(lock, remote)
    paths = targets or list(lock.artifacts)
    cache = StatCache(root)
    observed = observe(lock, root, cache, paths=paths)
    shas = {p: (lock.artifacts[p].sha256 or (manifest["artifacts"].get(p) or {}).get("sha256"))
            for p in lock.artifacts}
    node = NodeCache(remote, push=False)
    pulled, ok = [], []
    try:
        for p in paths:
            a, exp = lock.artifacts[p], _expected(lock, manifest, p)
            if observed[p].sha256 and observed[p].sha256 == shas[p]:
                ok.append(p)
                continue
            if a.is_dir:
                members = {n: (x["sha256"], x["size"]) for n, x in exp["members"].items()}
                got = restore_dir(remote, root, p, members, cache, progress) if members else None
            elif exp["sha256"]:
                got = restore_file(remote, root, p, exp["sha256"], exp["size"], cache, progress)
            else:
                got = None
            if got is None:
                raise RemoteError(f"incomplete push: the remote lacks the bytes of {p}", where=p,
                                  fix="run `reconcile push` on a node that has them")
            recipe = build_recipe(a, shas) if a.build is not None else None
            rh = (manifest["artifacts"].get(p) or {}).get("recipe_hash")
            entry = node.entry(rh) if rh else None
            write_provenance(root, p, provenance_from(entry, recipe, got, {}))
            pulled.append(p)
    finally:
        cache.flush()
    return pulled, ok


@dataclass
class RemoteRow:
    """One artifact as the remote holds it."""

    path: str
    ok: bool
    detail: str


def check_remote(lock: Lock, remote: Remote, targets: list[str], *, deep: bool = False) -> list[RemoteRow]:
    """The manifest exists and every pinned blob is present with its size; deep: streamed and hashed."""
    manifest = read_manifest(lock, remote)
    paths = targets or list(lock.artifacts)
    blobs: dict[str, list[tuple[str, str, int | None]]] = {}
    for p in paths:
        exp = _expected(lock, manifest, p)
        if "members" in exp:
            blobs[p] = [(f"{p}/{n}", x["sha256"], x.get("size")) for n, x in sorted(exp["members"].items())]
        else:
            blobs[p] = [(p, exp["sha256"], exp["size"])] if exp["sha256"] else []
    every = {sha for items in blobs.values() for _, sha, _ in items}
    sizes = (remote.listing(layout.blobs_prefix()) if len(every) > MANY else
             {layout.blob_key(s): m.size for s in every if (m := remote.head(layout.blob_key(s))) is not None})
    rows = []
    for p in paths:
        problems = []
        for rel, sha, size in blobs[p]:
            key = layout.blob_key(sha)
            if key not in sizes:
                problems.append(f"{rel}: missing {key}")
            elif size is not None and sizes[key] != size:
                problems.append(f"{rel}: {key} has {sizes[key]} bytes, pinned {size}")
            elif deep and (got := _hash_blob(remote, key)) != sha:
                problems.append(f"{rel}: {key} hashes to {got}")
        if not blobs[p]:
            problems.append("no sha256 in the lock or the manifest")
        rows.append(RemoteRow(p, not problems, "; ".join(problems) or
                              f"{len(blobs[p])} blob(s) present{' and hashed' if deep else ''}"))
    return rows


def _hash_blob(remote: Remote, key: str) -> str:
    h = hashlib.sha256()
    _, chunks = remote.stream(key)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()
