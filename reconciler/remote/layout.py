"""The one owner of the remote layout: object keys and the JSON records stored there (format version 1).

Under the remote's prefix, everything lives below `v1/` so a later format can sit beside this one:

    v1/blobs/sha256/<aa>/<sha256>     file bytes, addressed by their sha256 (folder members too)
    v1/ac/<recipe hash>.json          action cache: recipe -> {sha256, size[, members], tools}
    v1/leases/<recipe hash>.json      who is producing that recipe now (conditional writes only)
    v1/manifests/<lock digest>.json   every artifact of one lock; written last, so it marks a complete push

Blobs are immutable and content-addressed (Bazel's CAS, DVC's cache); the action cache is keyed like
Bazel's by the digest of what produced the bytes; the manifest plays the role of Nix's `.narinfo`,
written only after everything it names is present. Records carry `format` and are refused when it
differs, so an old client never misreads a newer remote.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import RemoteError

FORMAT = 1
ROOT = f"v{FORMAT}"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def blob_key(sha256: str) -> str:
    """Key of the blob holding the bytes whose sha256 is `sha256`."""
    if not _HEX64.fullmatch(sha256 or ""):
        raise ValueError(f"not a sha256: {sha256!r}")
    return f"{ROOT}/blobs/sha256/{sha256[:2]}/{sha256}"


def blobs_prefix() -> str:
    """The prefix every blob key starts with (one listing finds them all)."""
    return f"{ROOT}/blobs/sha256/"


def sha_of_blob_key(key: str) -> str | None:
    """The sha256 a blob key addresses, or None for any other key."""
    name = key.rsplit("/", 1)[-1]
    return name if key.startswith(blobs_prefix()) and _HEX64.fullmatch(name) else None


def action_key(recipe_hash: str) -> str:
    """Key of the action-cache entry of a recipe."""
    return f"{ROOT}/ac/{recipe_hash}.json"


def lease_key(recipe_hash: str) -> str:
    """Key of the lease that says one node is producing a recipe."""
    return f"{ROOT}/leases/{recipe_hash}.json"


def manifest_key(lock_digest: str) -> str:
    """Key of the manifest of one lock (by its digest)."""
    return f"{ROOT}/manifests/{lock_digest}.json"


def encode(record: dict) -> bytes:
    """Canonical bytes of a record (sorted keys), with the format version set."""
    return (json.dumps(dict(record, format=FORMAT), sort_keys=True, indent=1) + "\n").encode()


def decode(data: bytes, key: str) -> dict:
    """Parse a record; refuse garbage and other format versions with the key named."""
    try:
        rec = json.loads(data)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        raise RemoteError("not a reconcile record (unreadable JSON)", where=key,
                          fix="delete that object from the remote; the next push or apply rewrites it")
    if rec.get("format") != FORMAT:
        raise RemoteError(f"remote record format {rec.get('format')!r}, this reconcile reads {FORMAT}", where=key,
                          fix="use the reconcile version that wrote this remote, or another prefix")
    return rec


def action_entry(recipe_hash: str, recipe: dict, sha256: str, size: int, tools: dict,
                 members: dict[str, tuple[str, int]] | None = None) -> dict:
    """An action-cache record: what the recipe produced (a folder: its members' sha256 and size)."""
    rec: dict[str, Any] = {"recipe_hash": recipe_hash, "recipe": recipe, "sha256": sha256, "size": size,
                           "tools": tools}
    if members is not None:
        rec["members"] = {n: {"sha256": s, "size": z} for n, (s, z) in sorted(members.items())}
    return rec


def manifest(lock_digest: str, storage_version: str, artifacts: dict[str, dict]) -> dict:
    """A manifest: per artifact path, {sha256, size[, members][, recipe_hash]}."""
    return {"lock_digest": lock_digest, "storage_version": storage_version,
            "artifacts": {p: artifacts[p] for p in sorted(artifacts)}}


def lease(owner: str, ttl: float, now: float) -> dict:
    """A lease record; `expires` is the holder's wall clock plus ttl (renewed every ttl/3)."""
    return {"owner": owner, "ttl": ttl, "expires": round(now + ttl, 3)}
