"""`reconcile check`: the pre-training gate.

Every targeted artifact must exist with its pinned size and sha256 (through the stat
cache, or rehashed with `deep`), and pass the checks it declares. Check results are cached
by (check, version, params, the sha256 of every file involved), so re-checking unchanged
storage re-reads nothing; `deep` ignores both caches.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ReconcileError
from .hashing import sha256_json
from .lockfile import check_root_containment
from .pins import FIX, StalePin, stale_pins
from .provenance import read_provenance
from .registry import CHECKS, CheckContext
from .spec import Artifact, Lock
from .state import Observed, StatCache, observe
from .targets import select

FORMAT_VERSION = 1  # of `check --json`


@dataclass
class ArtifactStatus:
    """The verdict on one artifact: status ok | missing | drifted | unpinned | failed | wrong_type."""

    path: str
    status: str
    detail: str
    sha256: str | None = None
    checks: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when this artifact passed (like `CheckReport.ok` for the whole report)."""
        return self.status == "ok"


@dataclass
class CheckReport:
    """All verdicts plus what the check cost (files hashed vs served from the cache)."""

    artifacts: list[ArtifactStatus]
    deep: bool
    hashed: int

    @property
    def ok(self) -> bool:
        """True when every targeted artifact is ok."""
        return all(a.ok for a in self.artifacts)

    def to_json(self) -> dict:
        """`check --json` (reconciler/schemas/check.schema.json): verdicts plus the list of what failed."""
        return {"format_version": FORMAT_VERSION, "ok": self.ok, "tier": "deep" if self.deep else "fast",
                "hashed_files": self.hashed, "artifacts": [asdict(a) for a in self.artifacts],
                "failed": [a.path for a in self.artifacts if a.status != "ok"]}


def _tensor_verdict(a: Artifact, o: Observed, full: Path) -> tuple[str, str] | None:
    """For a drifted safetensors file: is it only re-serialised, or what changed in its tensors?"""
    from .models.safetensors_io import manifest_changes, manifest_digest, tensor_manifest
    try:
        now = tensor_manifest(full)
    except (ReconcileError, OSError, ValueError) as e:
        return "drifted", f"sha256 mismatch and not a readable safetensors file: {getattr(e, 'message', e)}"
    digest = manifest_digest(now)
    prov = o.prov or {}
    pinned = a.content_digest or (prov.get("content_digest") if prov.get("sha256") == a.sha256 else None)
    if pinned and digest == pinned:
        status = "ok" if a.content_digest else "drifted"
        return status, (f"bytes differ from the pinned sha256 {a.sha256} but the tensor content is identical "
                        "(only the serialisation changed)")
    if prov.get("sha256") == a.sha256 and prov.get("tensors"):
        changes = manifest_changes(prov["tensors"], now)
        if changes:
            more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
            return "drifted", (f"sha256 mismatch: expected {a.sha256}, found {o.sha256}; "
                               + "; ".join(changes[:3]) + more + ": run `reconcile apply` to repair")
    return None


def _bytes_verdict(a: Artifact, o: Observed, full: Path, stale: StalePin | None = None) -> tuple[str, str]:
    if stale is not None:
        return "stale", f"pinned under another recipe ({stale.reason}): run `{FIX}`"
    if o.kind == "missing":
        return "missing", "missing: run `reconcile apply`"
    if o.kind == "wrong_type":
        return "wrong_type", ("a folder sits where a file is expected (or the reverse), or a symlink where a "
                              "regular file is expected (a folder member included): move it away, run `reconcile apply`")
    if a.is_dir and o.sha256 is None:
        return "missing", "some files of the folder are missing: run `reconcile apply`"
    if a.sha256 is None:
        return "unpinned", f"no sha256 pinned (found {o.sha256}): run `reconcile lock`" + (
            f"; open because: {a.open}" if a.open else "")
    if o.sha256 != a.sha256:
        if full.suffix == ".safetensors":
            verdict = _tensor_verdict(a, o, full)
            if verdict:
                return verdict
        return "drifted", f"sha256 mismatch: expected {a.sha256}, found {o.sha256}: run `reconcile apply` to repair"
    if a.size is not None and o.size is not None and o.size != a.size:
        return "drifted", f"size mismatch: expected {a.size}, found {o.size}"
    return "ok", "sha256 matches"


def _run_checks(lock: Lock, root: Path, a: Artifact, observed: dict[str, Observed], cache: StatCache,
                deep: bool) -> list[dict]:
    results = []
    def sha_of(p: str) -> str | None:
        if p not in observed:
            observed.update(observe(lock, root, cache, deep=deep, paths=[p]))
        return observed[p].sha256
    for spec in a.checks:
        chk = CHECKS[spec.name]
        refs = {r: spec.params.get(r) for r in chk.refs}
        ref_shas = {r: ([sha_of(x) for x in v] if isinstance(v, list) else sha_of(v)) if v else None
                    for r, v in refs.items()}
        key = sha256_json({"check": chk.name, "version": chk.version, "params": spec.params,
                           "sha256": observed[a.path].sha256, "refs": ref_shas})
        cached = None if deep else cache.check_result(key)
        if cached is not None:
            results.append({"check": chk.name, "ok": True, "detail": cached, "cached": True})
            continue
        ctx = CheckContext(root=root, deep=deep, artifact=a.path, lock=lock, observed_sha256=sha_of)
        try:
            detail = chk.fn(root / a.path, json.loads(json.dumps(spec.params)), ctx) or "passed"
        except ReconcileError as e:  # CheckFailed, or a file the check found unreadable
            results.append({"check": chk.name, "ok": False, "detail": e.message})
            continue
        except Exception as e:  # a corrupt file a check cannot parse is a failed check, not a crash
            results.append({"check": chk.name, "ok": False, "detail": f"{type(e).__name__}: {e}"})
            continue
        cache.remember_check(key, detail)
        results.append({"check": chk.name, "ok": True, "detail": detail})
    return results


def check(lock: Lock, root: Path, targets: list[str] | None = None, *, deep: bool = False,
          cache: StatCache | None = None) -> CheckReport:
    """Verify bytes and declared checks of the targeted artifacts; never writes an artifact."""
    cache = cache or StatCache(root)
    check_root_containment(lock, root)
    paths = select(lock, targets or [])
    try:
        out = _verdicts(lock, root, paths, cache, deep)
    finally:
        cache.flush()  # check results (and hashes) remembered on the way, in one transaction
    return CheckReport(out, deep, len(set(cache.hashed)))


def _verdicts(lock: Lock, root: Path, paths: list[str], cache: StatCache, deep: bool) -> list[ArtifactStatus]:
    """Bytes verdict, then declared checks, of each path."""
    observed = observe(lock, root, cache, deep=deep, paths=paths)
    stale = stale_pins(lock, lambda p: observed[p].prov if p in observed else read_provenance(root, p))
    out = []
    for p in paths:
        a = lock.artifacts[p]
        status, detail = _bytes_verdict(a, observed[p], root / p, stale.get(p))
        st = ArtifactStatus(p, status, detail, observed[p].sha256)
        if status in ("ok", "unpinned") and a.checks:
            st.checks = _run_checks(lock, root, a, observed, cache, deep)
            failed = [c for c in st.checks if not c["ok"]]
            if failed and status == "ok":
                st.status = "failed"
                st.detail = "; ".join(f"check {c['check']}: {c['detail']}" for c in failed)
        out.append(st)
    return out
