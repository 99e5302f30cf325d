"""Attestations: a signed-off record of what `reconcile check` verified, for a training run to cite.

The record names the lock (its file bytes' sha256 and its semantic digest), the storage
version and root, every checked artifact with its status and sha256 (plus, for safetensors
files, a serialisation-independent content digest), the verification tier, the tool
versions, host and time. It is not a hashed artifact, so wall-clock time belongs in it.
"""

from __future__ import annotations

import platform
from datetime import UTC, datetime
from pathlib import Path

from .hashing import pretty_json_bytes, sha256_file
from .provenance import tool_versions
from .publish import write_output_file
from .spec import Lock
from .verify import ArtifactStatus, CheckReport

FORMAT_VERSION = 1


def _content_digest(path: Path) -> str | None:
    """Tensor-level digest of a safetensors file, or None when unavailable or unreadable."""
    try:
        from .models.safetensors_io import content_digest  # written in parallel: optional by design
    except ImportError:
        return None
    try:
        return content_digest(path)
    except Exception:  # a corrupt file has no content digest; its status already says why
        return None


def _artifact_record(root: Path, a: ArtifactStatus) -> dict:
    rec = {"path": a.path, "status": a.status, "detail": a.detail, "sha256": a.sha256,
           "checks": [{"check": c["check"], "ok": c["ok"], "detail": c["detail"]} for c in a.checks]}
    full = root / a.path
    if a.path.endswith(".safetensors") and a.sha256 and full.is_file():
        digest = _content_digest(full)
        if digest is not None:
            rec["content_digest"] = digest
    return rec


def attest(lock: Lock, root: Path, report: CheckReport, lock_path: str | Path) -> dict:
    """The attestation record for a finished check of `lock` on `root`."""
    lock_file = Path(lock_path).resolve()
    return {
        "format_version": FORMAT_VERSION,
        "ok": report.ok,
        "lock": {"path": str(lock_file), "sha256": sha256_file(lock_file), "digest": lock.digest},
        "storage_version": lock.storage_version,
        "root": str(Path(root).resolve()),
        "tier": "deep" if report.deep else "fast",
        "artifacts": [_artifact_record(Path(root), a) for a in report.artifacts],
        "tools": tool_versions(),
        "hostname": platform.node(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_attestation(path: str | Path, record: dict) -> None:
    """Write the record as canonical pretty JSON, atomically."""
    write_output_file(path, pretty_json_bytes(record))
