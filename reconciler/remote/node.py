"""A node's side of the remote during apply and pull: restore artifacts from it, produce-once, push results.

For each fetch or build, apply asks `NodeCache.produce`: the blob of a pinned artifact, else the
action-cache entry of its recipe; only when the remote has neither does this node do the work (under a
lease, so other nodes wait for its result instead of repeating it) and push what it published.
Everything restored goes through the publish path and is verified against its pin or its blob key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BusyError
from ..hashing import sha256_json, tree_sha256
from ..layout import partial_dir
from ..provenance import read_provenance
from ..publish import commit, staged
from . import layout, transfer
from .lease import Lease
from .store import Remote

ORIGIN_REMOTE = "remote"


@dataclass
class Restored:
    """An artifact now published from the remote: its sha256, size and (folders) members."""

    sha256: str
    size: int
    members: dict[str, tuple[str, int]] | None = None


def restore_file(remote: Remote, root: Path, rel: str, sha256: str, size: int | None, cache,
                 progress: Callable[[int], None] | None = None) -> Restored | None:
    """Publish the blob `sha256` at `root/rel` (verified); None when the remote lacks it."""
    final = root / rel
    with staged(final, where=rel) as out:
        try:
            transfer.download(remote, sha256, size, out, partial_dir=partial_dir(root), where=rel,
                              progress=progress)
        except FileNotFoundError:
            return None
        got_size, sha = commit(out, final, where=rel, expected_sha256=sha256, expected_size=size)
    cache.remember_file(rel, final, sha)
    return Restored(sha, got_size)


def restore_dir(remote: Remote, root: Path, rel: str, members: dict[str, tuple[str, int | None]], cache,
                progress=None) -> Restored | None:
    """Publish every member of a folder artifact from its blob; None when one is missing remotely."""
    done: dict[str, tuple[str, int]] = {}
    for name, (sha, size) in sorted(members.items()):
        final = root / rel / name
        if final.is_file() and cache.sha256(f"{rel}/{name}", final) == sha:
            done[name] = (sha, final.stat().st_size)
            continue
        got = restore_file(remote, root, f"{rel}/{name}", sha, size, cache, progress)
        if got is None:
            return None
        done[name] = (got.sha256, got.size)
    return Restored(tree_sha256({n: s for n, (s, _) in done.items()}), sum(z for _, z in done.values()), done)


def provenance_from(entry: dict | None, recipe: dict | None, restored: Restored, extra: dict) -> dict:
    """A provenance record for restored bytes: the builder's tools and stats, origin remote."""
    e = entry or {}
    rec = {"recipe": recipe or e.get("recipe"), "recipe_hash": sha256_json(recipe) if recipe else e.get("recipe_hash"),
           "sha256": restored.sha256, "size": restored.size, "tools": e.get("tools", {}), "info": e.get("info", {}),
           "origin": ORIGIN_REMOTE}
    if restored.members is not None:
        rec["members"] = {n: s for n, (s, _) in restored.members.items()}
        rec["member_sizes"] = {n: z for n, (_, z) in restored.members.items()}
    return rec | extra


def action_entry_from(root: Path, rel: str) -> dict | None:
    """The action-cache record of a published artifact, from its provenance record (None without one)."""
    prov = read_provenance(root, rel)
    if not prov or not prov.get("recipe_hash") or not prov.get("sha256"):
        return None
    members = None
    if "members" in prov:
        sizes = prov.get("member_sizes") or {}
        members = {n: (s, int(sizes.get(n, 0))) for n, s in prov["members"].items()}
    rec = layout.action_entry(prov["recipe_hash"], prov.get("recipe") or {}, prov["sha256"], int(prov.get("size", 0)),
                              prov.get("tools") or {}, members)
    return rec | {"info": prov.get("info") or {}}


class NodeCache:
    """The remote as apply sees it: restore first, else produce once under a lease, then push."""

    def __init__(self, remote: Remote, *, push: bool = True, wait: float = 0.0):
        self.remote = remote
        self.push = push
        self.wait = wait  # > 0: give up waiting for another node's lease after this many seconds

    def entry(self, recipe_hash: str) -> dict | None:
        """The action-cache record of a recipe, or None."""
        key = layout.action_key(recipe_hash)
        got = self.remote.get_record(key)
        return layout.decode(got[0], key) if got else None

    def restore(self, root: Path, a, recipe: dict | None, cache, progress=None) -> tuple[Restored, dict | None] | None:
        """Publish an artifact from the remote: by its pin, else by its recipe's action-cache entry."""
        entry = self.entry(sha256_json(recipe)) if recipe is not None else None
        if a.is_dir:
            if a.files and all(m.sha256 for m in a.files.values()):
                members = {n: (m.sha256, m.size) for n, m in a.files.items()}
            elif entry and entry.get("members"):
                members = {n: (m["sha256"], m["size"]) for n, m in entry["members"].items()}
            else:
                return None
            got = restore_dir(self.remote, root, a.path, members, cache, progress)
        elif a.sha256:
            got = restore_file(self.remote, root, a.path, a.sha256, a.size, cache, progress)
        elif entry and entry.get("sha256"):
            got = restore_file(self.remote, root, a.path, entry["sha256"], entry.get("size"), cache, progress)
        else:
            return None
        return (got, entry) if got is not None else None

    def produce(self, root: Path, a, recipe: dict | None, cache, local: Callable[[], Any],
                progress=None) -> tuple[Any, Restored | None, dict | None]:
        """Restore `a` from the remote, or run `local()` (once across nodes, under a lease) and push.

        Returns (what local() returned, None, None) when this node did the work, else
        (a line for the user, what was restored, its action-cache entry).
        """
        got = self.restore(root, a, recipe, cache, progress)
        if got is not None:
            return self._detail(got[0]), got[0], got[1]
        if recipe is None or not self.push:  # no key to coordinate on, or nobody will see our result
            produced = local()
            if self.push:
                self.push_one(root, a.path)
            return produced, None, None
        lease = Lease(self.remote, sha256_json(recipe))
        started, pause = time.monotonic(), 0.1
        while True:
            if lease.acquire():
                try:
                    got = self.restore(root, a, recipe, cache, progress)  # finished while we asked?
                    if got is not None:
                        return self._detail(got[0]), got[0], got[1]
                    produced = local()
                    self.push_one(root, a.path)
                finally:
                    lease.release()
                return produced, None, None
            while lease.alive():  # another node produces it: wait for its action-cache entry
                if self.wait and time.monotonic() - started > self.wait:
                    raise BusyError(f"another node is producing this artifact (lease held by {lease.holder})",
                                    where=a.path, fix="re-run apply later, or raise --wait")
                time.sleep(pause)
                pause = min(pause * 1.5, 2.0)
                got = self.restore(root, a, recipe, cache, progress)
                if got is not None:
                    return self._detail(got[0]), got[0], got[1]
            # released without a result (the holder failed) or expired (it died): try to take over

    @staticmethod
    def _detail(r: Restored) -> str:
        return (f"{len(r.members)} files, {r.size:,} bytes from the remote" if r.members is not None
                else f"{r.size:,} bytes from the remote")

    def push_one(self, root: Path, rel: str) -> None:
        """Upload a just-published artifact's blobs the remote lacks, then its action-cache entry."""
        entry = action_entry_from(root, rel)
        if entry is None:
            return
        files = ({f"{rel}/{n}": m["sha256"] for n, m in entry["members"].items()} if "members" in entry
                 else {rel: entry["sha256"]})
        for path, sha in files.items():
            if self.remote.head(layout.blob_key(sha)) is None:
                transfer.upload(self.remote, root / path, sha)
        self.remote.put_record(layout.action_key(entry["recipe_hash"]), layout.encode(entry), create=True)
