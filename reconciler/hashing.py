"""Hashes: file sha256 with large buffers, canonical JSON, recipe hashes.

Why here and not scattered: every layer must agree byte-for-byte on what "the hash" of a
file, a params mapping or a recipe is, or freshness decisions drift.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

CHUNK = 8 * 1024 * 1024  # large reads: hashlib releases the GIL, so threads hash in parallel
MIN_CHUNK = 64 * 1024  # the smallest buffer: a file that grows while read still goes in few reads


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in large chunks (readinto, no per-chunk allocation)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        # A buffer no larger than the file: zero-filling 8 MiB per file cost more than hashing a small one.
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(min(chunk, max(MIN_CHUNK, size)))
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, no insignificant whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_json(value: Any) -> str:
    """sha256 of the canonical JSON of a value."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def pretty_json_bytes(value: Any) -> bytes:
    """The project's canonical on-disk JSON: sorted keys, 2-space indent, trailing newline.

    ValueError on NaN / Infinity: Python would write `NaN`, which is not JSON (`jq`, browsers refuse it).
    """
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def tree_sha256(members: dict[str, str]) -> str:
    """Digest of a directory artifact: sha256 over its sorted `sha256  relpath` lines.

    The same text `sha256sum` prints, so a user can recompute it by hand.
    """
    text = "".join(f"{members[p]}  {p}\n" for p in sorted(members))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

