"""Every name reconcile gives to its own files under a storage root, in one place.

Like huggingface_hub's `_local_folder.py`: one module knows the state folder's layout, so the
writer (`publish`, `apply`, `sources.hf`), the readers (`state`, `provenance`, `docs`) and the
collector (`gc`) make and parse the same names, and no module reaches into another's privates.

    <root>/
      .reconcile/                          STATE_DIR: never an artifact path, skipped by every walk
        apply.lock, apply.owner            the root lock and who holds it (`rootlock`)
        cache.sqlite                       the stat cache (`state.StatCache`, format CACHE_FORMAT), or
                                           node-local (`node_cache_path`) where the root cannot hold it
        provenance/<sha256(path)[:32]>.json  one record per artifact (`provenance`, format PROVENANCE_FORMAT)
        partial/<key>                      resumable partial downloads; `<key>.<pid>.link` while linking
        README.provenance.md               `reconcile docs --with-provenance`
      <any folder>/.reconcile-tmp-<name>.<pid>.<host><hex>   publish's temp files, next to their final path

Names that carry a writer's pid (temp files, `.link` names) let `gc` leave a live writer's files alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import uuid
from pathlib import Path

STATE_DIR = ".reconcile"
TMP_PREFIX = ".reconcile-tmp-"
LINK_SUFFIX = ".link"
PROVENANCE_README = f"{STATE_DIR}/README.provenance.md"  # relative to the root

# Versions of the on-disk formats this module names (the lock, plan and attestation carry their own).
PROVENANCE_FORMAT = 1  # provenance records: `format_version` field; a record without one is format 1
CACHE_FORMAT = 1  # stat cache: sqlite `PRAGMA user_version`; 0 = a cache written before versioning (format 1)


def state_dir(root: Path) -> Path:
    """The state folder of a root."""
    return root / STATE_DIR


def is_state_path(rel: str) -> bool:
    """True for a root-relative path inside the state folder (reserved: never an artifact)."""
    return rel.split("/", 1)[0] == STATE_DIR


def root_lock_path(root: Path) -> Path:
    """The advisory lock file that keeps two applies (or an apply and `gc --yes`) apart."""
    return root / STATE_DIR / "apply.lock"


def root_owner_path(root: Path) -> Path:
    """Who holds the root lock (pid, host, since), for the `busy` message."""
    return root / STATE_DIR / "apply.owner"


def cache_path(root: Path) -> Path:
    """The stat cache database."""
    return root / STATE_DIR / "cache.sqlite"


def node_cache_path(node_dir: Path, root: Path) -> Path:
    """The node-local stat cache of a root that cannot hold its own (read-only, network filesystem):
    `<node_dir>/roots/<sha256 of the root's real path, 24 hex>/cache.sqlite`."""
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:24]
    return node_dir / "roots" / key / "cache.sqlite"


def provenance_dir(root: Path) -> Path:
    """The folder of provenance records."""
    return root / STATE_DIR / "provenance"


def provenance_path(root: Path, rel: str) -> Path:
    """Where the provenance record of the artifact at `rel` lives (a hash: any path fits a file name)."""
    return provenance_dir(root) / (hashlib.sha256(rel.encode()).hexdigest()[:32] + ".json")


def partial_dir(root: Path) -> Path:
    """The folder of resumable partial downloads."""
    return root / STATE_DIR / "partial"


def partial_key(repo: str, repo_type: str, commit: str, path: str, sha256: str | None, size: int | None) -> str:
    """The file name of a partial download: the same bytes from the same commit resume; anything else does not."""
    ident = json.dumps([repo, repo_type, commit, path, sha256, size])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def link_path(partial: Path) -> Path:
    """The transient name a hard link gets before it replaces `partial` (carries the writer's pid)."""
    return partial.with_name(f"{partial.name}.{os.getpid()}{LINK_SUFFIX}")


def is_link_name(name: str) -> bool:
    """True for a transient hard-link name made by `link_path`."""
    return name.endswith(LINK_SUFFIX)


# 8 hex of this host's name in every temp name: a later apply on the same host removes the temps of
# dead writers (pid gone) without touching those of a live writer on another host sharing the folder.
HOST_TAG = hashlib.sha256(platform.node().encode()).hexdigest()[:8]


def temp_path_for(final: Path) -> Path:
    """A unique temp path in the final path's folder (same filesystem, so the rename is atomic).

    `.reconcile-tmp-<name>.<pid>.<host tag: 8 hex><random: 8 hex>`; `writer_pid` / `writer_host` read it back.
    """
    return final.parent / f"{TMP_PREFIX}{final.name}.{os.getpid()}.{HOST_TAG}{uuid.uuid4().hex[:8]}"


def is_temp_name(name: str) -> bool:
    """True for a temp file name made by `temp_path_for`."""
    return name.startswith(TMP_PREFIX)


def writer_host(name: str) -> str | None:
    """The host tag in a temp name made by `temp_path_for`; None for other names (and older temp names)."""
    parts = name.rsplit(".", 2)
    if not is_temp_name(name) or len(parts) != 3 or len(parts[2]) != 16:
        return None
    return parts[2][:8]


def writer_pid(name: str) -> int | None:
    """The writer's pid in a temp or link name (`.reconcile-tmp-<name>.<pid>.<hex>`, `<key>.<pid>.link`)."""
    parts = name.rsplit(".", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
