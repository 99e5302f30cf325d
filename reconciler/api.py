"""The Python API: what a training script calls. The CLI is a thin layer over the same functions.

    import reconciler

    verified = reconciler.gate("storage.lock.yaml", attest="run-attestation.json")
    weights = verified["models/wmtp/model.safetensors"].path   # checked: bytes match the lock's sha256

`lock` is a lock file path (the storage root is then the lock's `root`, relative to the file)
or a `Lock` from `load_lock` (then pass `root`). Every failure is a `ReconcileError` with
`where` and `fix`; `gate` raises `GateFailed` (carrying the full report) unless every targeted
artifact is ok.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import LockError, ReconcileError
from .lockfile import load_lock, resolve_root
from .spec import Lock

DEFAULT_LOCK = "storage.lock.yaml"


@dataclass(frozen=True)
class Verified:
    """One artifact the gate verified: where it is and the sha256 its bytes have (the lock's pin)."""

    path: Path
    sha256: str


class GateFailed(ReconcileError):
    """`gate` found an artifact that is not what the lock says; `report` holds every verdict."""

    def __init__(self, report):
        bad = [a for a in report.artifacts if a.status != "ok"]
        listed = "; ".join(f"{a.path}: {a.status} ({a.detail})" for a in bad[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        super().__init__(f"{len(bad)} artifact(s) not ok: {listed}{more}", where="reconcile gate",
                         fix="run `reconcile apply` (and `reconcile lock` for unpinned ones), then check again")
        self.report = report


def _open(lock: str | Path | Lock, root: str | Path | None) -> tuple[Lock, Path, Path | None]:
    """The lock, its storage root and its file (None when given a Lock)."""
    if isinstance(lock, Lock):
        if root is None:
            raise LockError("a Lock object has no file to place its root: pass root=", where="root",
                            fix="pass root=<storage root>, or pass the lock file's path instead")
        return lock, Path(root), None
    loaded = load_lock(lock)
    return loaded, resolve_root(lock, loaded, root), Path(lock)


def plan(lock: str | Path | Lock = DEFAULT_LOCK, root: str | Path | None = None):
    """What `apply` would do (a `reconciler.plan.Plan`); reads the storage, writes no artifact."""
    from .state import StatCache
    from .survey import plan_for
    lk, rt, _ = _open(lock, root)
    return plan_for(lk, rt, StatCache(rt))


def apply(lock: str | Path | Lock = DEFAULT_LOCK, root: str | Path | None = None, *, jobs: int = 4,
          keep_going: bool = False, wait: float = 0.0):
    """Converge the storage to the lock (a `reconciler.apply.ApplyResult`; `.ok`, `.failed`, `.skipped`)."""
    from .apply import apply as run_apply
    lk, rt, _ = _open(lock, root)
    return run_apply(lk, rt, jobs=jobs, keep_going=keep_going, wait=wait)


def check(lock: str | Path | Lock = DEFAULT_LOCK, root: str | Path | None = None, targets: list[str] | None = None,
          *, deep: bool = False, attest: str | Path | None = None):
    """Verify the storage (a `reconciler.verify.CheckReport`); with `attest`, also write the attestation
    record there (as `reconcile check --attest FILE` does, written even when the check fails)."""
    return _check(*_open(lock, root), targets, deep, attest)


def gate(lock: str | Path | Lock = DEFAULT_LOCK, root: str | Path | None = None, targets: list[str] | None = None,
         *, deep: bool = False, attest: str | Path | None = None) -> dict[str, Verified]:
    """The pre-training gate: `check`, then raise `GateFailed` unless every targeted artifact is ok.

    Returns artifact path (as in the lock) -> `Verified(path on disk, sha256)`; a folder artifact's
    sha256 is its tree digest (the lock's pin).
    """
    lk, rt, lock_file = _open(lock, root)
    report = _check(lk, rt, lock_file, targets, deep, attest)
    if not report.ok:
        raise GateFailed(report)
    return {a.path: Verified((rt / a.path).resolve(), a.sha256) for a in report.artifacts}


def _check(lk: Lock, rt: Path, lock_file: Path | None, targets: list[str] | None, deep: bool,
           attest: str | Path | None):
    from .verify import check as run_check
    report = run_check(lk, rt, list(targets or []), deep=deep)
    if attest is not None:
        if lock_file is None:
            raise LockError("an attestation names the lock file: pass the lock's path, not a Lock", where="attest",
                            fix="call check(<lock file>, attest=...)")
        from .attest import attest as make_record
        from .attest import write_attestation
        write_attestation(attest, make_record(lk, rt, report, lock_file))
    return report
