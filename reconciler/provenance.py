"""Provenance records: the one owner of their format (one JSON file per artifact, `layout.provenance_path`).

A record says how an artifact's bytes were made: the recipe and its hash, the sha256 and size,
the tool versions, the build time, what the transform reported. One file per artifact, written
atomically, so concurrent applies never lose each other's records. Records carry
`format_version` (`layout.PROVENANCE_FORMAT`); a record from a newer reconcile is refused with
one line rather than misread, because the planner trusts its recipe hash.
"""

from __future__ import annotations

import functools
import json
import platform
from pathlib import Path

from .errors import ReconcileError, ResourceError
from .layout import PROVENANCE_FORMAT, provenance_path
from .publish import write_bytes_atomic

TOOLS = ("reconcile", "torch", "onnxruntime", "safetensors", "sentencepiece", "pyarrow", "huggingface_hub")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape built bytes (recorded in provenance and attestations, never hashed)."""
    return dict(_tool_versions())


@functools.cache
def _tool_versions() -> dict[str, str]:
    """Read once per process: each `metadata.version` parses a package's METADATA file (~3 ms each,
    ~20 ms per artifact: the largest CPU cost of applying 1,000 small downloads). Imported here, not
    at the top: `importlib.metadata` costs ~10 ms of start-up that `check` never needs."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_provenance(root: Path, rel: str) -> dict | None:
    """The provenance record of an artifact, or None (missing or unreadable = unknown: it is rebuilt).

    Raises LockError for a record in a format this version does not know (written by a newer reconcile).
    """
    path = provenance_path(root, rel)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("path") != rel:
        return None
    version = rec.get("format_version", 1)  # records written before versioning are format 1
    if version != PROVENANCE_FORMAT:
        raise ReconcileError(f"provenance record format {version!r} is not one this reconcile reads "
                        f"(format {PROVENANCE_FORMAT})", where=f"{rel} ({path})",
                        fix="use the reconcile version that wrote it, or delete the record to rebuild the artifact")
    return rec


def write_provenance(root: Path, rel: str, record: dict) -> None:
    """Atomically write an artifact's provenance record (stamped with its path and format version).

    A failure names the artifact (not the record's hashed file name): ResourceError.
    """
    data = json.dumps(dict(record, path=rel, format_version=PROVENANCE_FORMAT), sort_keys=True,
                      indent=2).encode() + b"\n"
    target = provenance_path(root, rel)
    try:
        write_bytes_atomic(target, data, where=rel)
    except (OSError, ReconcileError) as e:
        why = e.message if isinstance(e, ReconcileError) else (e.strerror or str(e))
        raise ResourceError(f"published, but its provenance record could not be written ({why})", where=rel,
                            fix=f"make {target.parent} writable (or free space) and re-run apply") from None
