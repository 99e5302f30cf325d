"""The only writer: run a Plan in dependency order, publishing every output atomically.

Order of events for every artifact: produce into a unique temp file in the final folder
(hashing as it is written), compare with the pin, fsync, `os.replace`, then record the
stat-cache entry and the provenance record. A kill at any moment leaves either the old
file or the new one at the final path, never a partial one; a later apply converges.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from .errors import IntegrityError, LockError, ReconcileError, TransformError, is_out_of_memory, out_of_memory
from .gc import remove_dead_temps
from .hashing import sha256_json, tree_sha256
from .layout import is_temp_name, partial_dir, provenance_dir, state_dir
from .lockfile import check_root_containment
from .pathrule import member_names
from .pins import source_commits
from .plan import Action, Plan, build_recipe, unpinned
from .provenance import read_provenance, tool_versions, write_provenance
from .publish import batched_dir_syncs, commit, staged
from .registry import TRANSFORMS
from .rootlock import RootLock
from .sources.hf_cache import HfCache, Reused
from .spec import Artifact, Lock, Source
from .state import StatCache
from .survey import plan_for


class Reporter:
    """Callbacks apply uses to tell the outside world what it does (the CLI renders them)."""

    def planned(self, pending: list[Action]) -> None:
        """The actions this run will attempt (called once, before the first)."""

    def step(self, action: Action) -> None:
        """An action starts."""

    def done(self, action: Action, detail: str) -> None:
        """An action finished and its output is published."""

    def failed(self, action: Action, err: ReconcileError) -> None:
        """An action failed; nothing was published for it."""

    def build_progress(self, action: Action) -> Callable[[int], None] | None:
        """A callback told the bytes a build writes, or None for no progress display."""
        return None

    def download_total(self, nbytes: int) -> None:
        """Bytes that the fetches of this run will download, when known."""

    def advance(self, nbytes: int) -> None:
        """Bytes downloaded since the last call (may come from several threads)."""

    def warning(self, path: str, message: str) -> None:
        """Something the user should know that did not fail the artifact (e.g. a bad cache file skipped)."""


FORMAT_VERSION = 1  # of `apply --json` (reconciler/schemas/apply.schema.json)
# Where the bytes of a published artifact came from: a transform ran here, the hub, the team's
# remote cache, or the local Hugging Face cache.
ORIGINS = ("built", "hub", "remote", "hf-cache")


class Produced(NamedTuple):
    """One published artifact: its sha256, a line for the user, and where its bytes came from."""

    sha256: str
    detail: str
    origin: str  # one of ORIGINS


class SkipReason(Enum):
    """Why apply did not run an action."""

    INPUT_FAILED = "input failed"  # an input's fetch or build failed
    INPUT_SKIPPED = "input skipped"  # an input was itself skipped
    STOPPED = "stopped"  # apply stopped at the first failure (no --keep-going)


@dataclass(frozen=True)
class Skip:
    """A skipped action: why, and the input that caused it (None when apply stopped)."""

    reason: SkipReason
    input: str | None = None

    def __str__(self) -> str:
        if self.reason is SkipReason.INPUT_FAILED:
            return f"input {self.input} failed"
        if self.reason is SkipReason.INPUT_SKIPPED:
            return f"input {self.input} was skipped"
        return "apply stopped at a failure"


@dataclass
class ApplyResult:
    """What apply did: published (with origin), failed (with errors) and skipped (with the failed input)."""

    plan: Plan
    done: list[str] = field(default_factory=list)
    failed: dict[str, ReconcileError] = field(default_factory=dict)
    skipped: dict[str, Skip] = field(default_factory=dict)
    produced: dict[str, Produced] = field(default_factory=dict)
    hf_cache_bytes: int = 0  # bytes published from the Hugging Face cache instead of downloaded

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def status_of(self, path: str) -> str:
        """done | failed | skipped | ok (was already up to date)."""
        if path in self.produced or path in self.done:
            return "done"
        return "failed" if path in self.failed else "skipped" if path in self.skipped else "ok"

    def to_json(self) -> dict:
        """`apply --json`: one result per artifact (reconciler/schemas/apply.schema.json)."""
        rows = []
        for x in self.plan.actions:
            status = self.status_of(x.path)
            got = self.produced.get(x.path)
            err = self.failed.get(x.path)
            rows.append({"path": x.path, "action": x.action, "status": status,
                         "origin": got.origin if got else None,
                         "sha256": got.sha256 if got else x.found_sha256 if status == "ok" else None,
                         "detail": got.detail if got else err.render() if err else str(self.skipped.get(x.path, x.reason))})
        counts = {k: sum(r["status"] == k for r in rows) for k in ("done", "failed", "skipped", "ok")}
        return {"format_version": FORMAT_VERSION, "ok": self.ok, "summary": counts, "artifacts": rows}


@dataclass
class _Run:
    lock: Lock
    root: Path
    cache: StatCache
    reporter: Reporter
    hf_cache: HfCache | None = None  # where to look before downloading (None: always download)
    node: Any = None  # a remote.node.NodeCache when apply uses a remote
    commits: dict[str, str] = field(default_factory=dict)  # source name -> resolved commit
    connections: int = 1  # connections per large download (parallel Range requests)

    def from_hf_cache(self, src: Source, path: str, final: Path, where: str, sha256: str | None,
                      size: int | None) -> Reused | None:
        """Publish `path` of the pinned source from the Hugging Face cache when it holds verified bytes."""
        if self.hf_cache is None:
            return None
        return self.hf_cache.publish(src, src.revision, path, final, where=where, expected_sha256=sha256,
                                     expected_size=size, warn=lambda msg: self.reporter.warning(where, msg))

    def source_at_commit(self, name: str) -> tuple[Source, str]:
        """The source pinned to a commit for this run (branches resolved once per run)."""
        src = self.lock.sources[name]
        if src.pinned:
            return src, src.revision
        if name not in self.commits:
            from .sources import hf
            self.commits[name] = hf.resolve_revision(src)
        return replace(src, revision=self.commits[name]), src.revision


def _provenance(recipe: dict, size: int, sha: str, started: float, info: dict | None, final: Path,
                tensors: dict | None = None) -> dict:
    rec = {"recipe": recipe, "recipe_hash": sha256_json(recipe), "sha256": sha, "size": size,
           "tools": tool_versions(), "info": info or {},
           "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "duration_s": round(time.monotonic() - started, 3)}
    if final.suffix == ".safetensors":  # lets `check` say what changed (a dtype, a shape, the values)
        from .models.safetensors_io import manifest_digest, tensor_manifest
        rec["tensors"] = tensors if tensors is not None else tensor_manifest(final)  # from the write when known
        rec["content_digest"] = manifest_digest(rec["tensors"])
    return rec


def _fetch_file(run: _Run, a: Artifact) -> Produced:
    from .sources import hf
    src, ref = run.source_at_commit(a.fetch.source)
    final = run.root / a.path
    started = time.monotonic()
    reused = run.from_hf_cache(src, a.fetch.path, final, a.path, a.sha256, a.size)
    if reused is not None:
        size, sha, info = reused.size, reused.sha256, {"hf_cache": "hard link" if reused.linked else "copy"}
    else:
        with staged(final, where=a.path) as out:
            remote = hf.fetch_file(src, a.fetch.path, out, expected_sha256=a.sha256, expected_size=a.size,
                                   partial_dir=partial_dir(run.root), progress=run.reporter.advance,
                                   connections=run.connections)
            size, sha = commit(out, final, where=a.path, expected_sha256=a.sha256, expected_size=a.size,
                               mismatch_fix="re-run apply; if upstream really changed, update the pin in the lock")
        info = {"etag_sha256": remote.sha256}
    run.cache.remember_file(a.path, final, sha)
    recipe = {"fetch": {"repo": src.repo, "type": src.type, "commit": src.revision, "path": a.fetch.path}}
    rec = _provenance(recipe, size, sha, started, info, final)
    write_provenance(run.root, a.path, rec | {"ref": ref, "commit": src.revision,
                                              "origin": "hub" if reused is None else "hf-cache"})
    if reused is not None:
        how = "hard link" if reused.linked else "copy"
        return Produced(sha, f"{size:,} bytes from the Hugging Face cache ({how}) of {src.repo}@{src.revision[:12]}",
                        "hf-cache")
    return Produced(sha, f"{size:,} bytes from {src.repo}@{src.revision[:12]}", "hub")


def _fetch_dir(run: _Run, a: Artifact, jobs: int) -> Produced:
    from .sources import hf
    src, ref = run.source_at_commit(a.fetch.source)
    base = posixpath.dirname(a.fetch.glob)
    if a.files:
        wanted = {n: (m.sha256, m.size) for n, m in a.files.items()}
    else:
        listed = hf.list_files(src, a.fetch.glob)
        try:
            names = member_names([r.path for r in listed])
        except ValueError as e:
            raise IntegrityError(f"the glob {a.fetch.glob!r} cannot make a folder: {e}", where=a.path,
                                 fix="narrow the glob (`*` never crosses `/`) or split it into several artifacts") from None
        by_path = {r.path: r for r in listed}
        wanted = {n: (by_path[p].sha256, by_path[p].size) for n, p in names.items()}
        if not wanted:
            raise ReconcileError(f"no file in {src.repo}@{src.revision[:12]} matches {a.fetch.glob!r}",
                                 where=a.path, fix="correct the glob in the lock")
    started = time.monotonic()
    folder = run.root / a.path

    came_from: dict[str, str] = {}  # member -> "hf-cache" | "hub", for those published now

    def one(name: str) -> tuple[str, str]:
        final = folder / name
        exp_sha, exp_size = wanted[name]
        if final.is_file() and exp_sha and run.cache.sha256(f"{a.path}/{name}", final) == exp_sha:
            return name, exp_sha
        reused = run.from_hf_cache(src, posixpath.join(base, name), final, f"{a.path}/{name}", exp_sha, exp_size)
        if reused is not None:
            run.cache.remember_file(f"{a.path}/{name}", final, reused.sha256)
            came_from[name] = "hf-cache"
            return name, reused.sha256
        came_from[name] = "hub"
        with staged(final, where=f"{a.path}/{name}") as out:
            hf.fetch_file(src, posixpath.join(base, name), out, expected_sha256=exp_sha, expected_size=exp_size,
                          partial_dir=partial_dir(run.root), progress=run.reporter.advance,
                          connections=run.connections)
            size, sha = commit(out, final, where=f"{a.path}/{name}", expected_sha256=exp_sha, expected_size=exp_size)
        run.cache.remember_file(f"{a.path}/{name}", final, sha)
        return name, sha

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        members = dict(pool.map(one, sorted(wanted)))
    sha = tree_sha256(members)
    if a.sha256 and sha != a.sha256:
        raise ReconcileError(f"folder digest mismatch: expected {a.sha256}, got {sha}", where=a.path,
                             fix="re-run apply; if upstream really changed, update the pins in the lock")
    recipe = {"fetch": {"repo": src.repo, "type": src.type, "commit": src.revision, "glob": a.fetch.glob}}
    size = sum((folder / n).stat().st_size for n in members)
    rec = _provenance(recipe, size, sha, started, None, folder)
    write_provenance(run.root, a.path, rec | {"ref": ref, "commit": src.revision, "members": members, "origin": "hub",
                                              "member_sizes": {n: (folder / n).stat().st_size for n in members}})
    if came_from and set(came_from.values()) == {"hf-cache"}:  # nothing was downloaded
        return Produced(sha, f"{len(members)} files, {size:,} bytes from the Hugging Face cache of "
                             f"{src.repo}@{src.revision[:12]}", "hf-cache")
    return Produced(sha, f"{len(members)} files, {size:,} bytes from {src.repo}@{src.revision[:12]}", "hub")


def _build(run: _Run, a: Artifact, x: Action, planned: dict[str, str]) -> Produced:
    t = TRANSFORMS[a.build.transform]
    params = json.loads(json.dumps(a.build.params))
    commits = None
    if t.reads_lock:  # the same commits the planner saw, plus what this run fetched
        commits = {**source_commits(run.lock, lambda p: read_provenance(run.root, p)), **run.commits}
    recipe = build_recipe(a, planned, run.lock, commits)
    if recipe is None:
        raise ReconcileError(f"the commit of source {params.get('source')!r} is not known", where=a.path,
                             fix="fetch that source's files first (reconcile apply), or pin its revision")
    if t.reads_lock:
        params["lock"] = {**recipe["lock"], "input_sha256": recipe["inputs"]}
    inputs = {name: ([run.root / p for p in v] if isinstance(v, list) else run.root / v)
              for name, v in a.build.inputs.items()}
    final = run.root / a.path
    started = time.monotonic()
    with staged(final, where=a.path, progress=run.reporter.build_progress(x)) as out:
        try:
            info = t.fn(inputs, params, out)
        except ReconcileError:
            raise
        except (MemoryError, OSError, RuntimeError) as e:
            if is_out_of_memory(e):  # the machine's limit, not the input: say which limit and how to lift it
                raise out_of_memory(f"transform {t.name}") from None
            if isinstance(e, OSError):
                raise
            raise TransformError(f"transform {t.name} failed: {type(e).__name__}: {e}", where=a.path,
                                 fix="check the inputs named above; if they are valid, report a bug") from e
        except Exception as e:  # a transform bug or unexpected input: one clear line, no traceback
            raise TransformError(f"transform {t.name} failed: {type(e).__name__}: {e}", where=a.path,
                                 fix="check the inputs named above; if they are valid, report a bug") from e
        size, sha = commit(out, final, where=a.path, expected_sha256=a.sha256,
                           mismatch_fix="the pin was made under this same recipe (same transform, params and "
                                        "input bytes) but elsewhere: compare tool versions with `reconcile show "
                                        f"{a.path}`; if the lock was edited by hand, run `reconcile lock` first")
    run.cache.remember_file(a.path, final, sha)
    write_provenance(run.root, a.path, _provenance(recipe, size, sha, started, info, final, out.tensors)
                     | {"origin": "built"})
    return Produced(sha, f"{size:,} bytes via {t.name} v{t.version}", "built")


def refuse_stale(saved: Plan, current: Plan) -> None:
    """Refuse a saved plan when the lock or the observed storage moved since it was made."""
    if saved.lock_digest != current.lock_digest:
        raise LockError("the lock file changed since this plan was made", where="--plan",
                        fix="run `reconcile plan --out FILE` again and review the new plan")
    if saved.state_digest != current.state_digest:
        moved = [a.path for a, b in zip(saved.actions, current.actions) if (a.action, a.found_sha256) !=
                 (b.action, b.found_sha256)]
        hint = f" (e.g. {moved[0]})" if moved else ""
        raise LockError(f"the storage changed since this plan was made{hint}", where="--plan",
                        fix="run `reconcile plan --out FILE` again and review the new plan")


def _run_action(run: _Run, x: Action, sha_of: dict[str, str], jobs: int) -> Produced:
    """Produce one artifact: its published sha256, a line for the user, where the bytes came from."""
    a = run.lock.artifacts[x.path]
    if x.stale_pin is not None:
        a = unpinned(a)  # made under another recipe: the old pin says nothing about the new bytes

    def local() -> Produced:
        if a.fetch is None:
            return _build(run, a, x, sha_of)
        return _fetch_dir(run, a, jobs) if a.is_dir else _fetch_file(run, a)

    return local() if run.node is None else _via_remote(run, a, sha_of, local)


def _via_remote(run: _Run, a: Artifact, sha_of: dict[str, str], local) -> Produced:
    """The remote first (pin or action cache), else `local()` once across nodes and push (remote/node.py)."""
    from .remote.node import provenance_from
    extra: dict = {}
    if a.fetch is None:
        recipe = build_recipe(a, sha_of)
    else:
        src = run.lock.sources[a.fetch.source]
        what = {"path": a.fetch.path} if a.fetch.path else {"glob": a.fetch.glob}
        # Only a pinned commit names the same bytes on every node; a branch would need the hub to resolve.
        recipe = ({"fetch": {"repo": src.repo, "type": src.type, "commit": src.revision, **what}}
                  if src.pinned else None)
        extra = {"ref": src.revision, "commit": src.revision} if src.pinned else {}
    started = time.monotonic()
    got, restored, entry = run.node.produce(run.root, a, recipe, run.cache, local, progress=run.reporter.advance)
    if restored is None:  # this node did the work (and pushed it)
        return got
    final = run.root / a.path
    rec = _provenance(recipe or {}, restored.size, restored.sha256, started, None, final)
    rec |= provenance_from(entry, recipe, restored, extra)
    write_provenance(run.root, a.path, rec)
    return Produced(restored.sha256, got, "remote")


FROM_ENV = "from-env"  # apply's default for hf_cache: the user's Hugging Face cache unless RECONCILE_NO_HF_CACHE


def apply(lock: Lock, root: Path, *, cache: StatCache | None = None, reporter: Reporter | None = None,
          saved_plan: Plan | None = None, keep_going: bool = False, jobs: int = 4,
          wait: float = 0.0, connections: int = 4, hf_cache: HfCache | None | str = FROM_ENV,
          targets: list[str] | None = None, node: Any = None) -> ApplyResult:
    """Converge the root to the lock: plan under the root lock, then fetch (parallel) and build (in order).

    `targets` (paths, folder prefixes or globs): only they and what they need upstream.
    `jobs` files download at once; each large one over `connections` connections (Range requests).
    Fetches first look in `hf_cache` (default: the user's Hugging Face cache; None: never) for bytes that
    verify, and download only what it does not hold. `node` (a `remote.node.NodeCache`) makes every fetch
    and build ask the remote first and push what this node produced.
    """
    cache = cache or StatCache(root)
    if isinstance(hf_cache, str):
        hf_cache = HfCache.from_env()
    try:
        return _apply(lock, root, cache, reporter or Reporter(), saved_plan, keep_going, jobs, wait, connections,
                      hf_cache, targets, node)
    finally:
        cache.flush()  # hashes of what was published, however the run ended


def _apply(lock: Lock, root: Path, cache: StatCache, reporter: Reporter, saved_plan: Plan | None,
           keep_going: bool, jobs: int, wait: float, connections: int, hf_cache: HfCache | None,
          targets: list[str] | None = None, node: Any = None) -> ApplyResult:
    """`apply` itself, under the root lock; the caller flushes the stat cache however it ends."""
    check_root_containment(lock, root)
    with RootLock(root, wait):
        plan = plan_for(lock, root, cache, targets)
        if remove_dead_temps(root, list(plan.untracked) + _state_temps(root)):
            plan = plan_for(lock, root, cache, targets)  # the untracked list no longer names them
        if saved_plan is not None:
            refuse_stale(saved_plan, plan)
        run = _Run(lock, root, cache, reporter, hf_cache=hf_cache, connections=connections, node=node)
        reused_before = hf_cache.reused_bytes if hf_cache is not None else 0
        result = ApplyResult(plan)
        sha_of = {x.path: x.found_sha256 for x in plan.actions if x.action == "ok"}
        stop = _Stopper(keep_going)

        def attempt(x: Action) -> None:
            bad_input = next((p for p in x.inputs if p in result.failed or p in result.skipped), None)
            if bad_input or stop.stopped:
                result.skipped[x.path] = (Skip(SkipReason.INPUT_FAILED, bad_input) if bad_input in result.failed
                                          else Skip(SkipReason.INPUT_SKIPPED, bad_input) if bad_input
                                          else Skip(SkipReason.STOPPED))
                return
            if x.action == "blocked":
                result.failed[x.path] = ReconcileError(x.reason, where=x.path, fix="resolve the cause named above")
                stop.hit()
                return
            reporter.step(x)
            replaced = _replaced_pin(lock, root, x)
            try:
                got = _run_action(run, x, sha_of, jobs)
                if replaced:
                    rec = read_provenance(root, x.path) or {}
                    write_provenance(root, x.path, rec | {"replaced": replaced})
            except Exception as exc:  # noqa: BLE001 - one hostile artifact never stops the others
                err = exc if isinstance(exc, ReconcileError) else (
                    _os_failure(x.path, exc) if isinstance(exc, OSError) else _content_failure(x.path, exc))
                if err.where != x.path:  # always name the artifact; keep the source's own place too
                    err.where = f"{x.path} ({err.where})" if err.where else x.path
                result.failed[x.path] = err
                reporter.failed(x, err)
                stop.hit()
                return
            sha_of[x.path] = got.sha256  # what was just verified and published: no need to look again
            result.done.append(x.path)
            result.produced[x.path] = got
            reporter.done(x, got.detail)

        pending = plan.pending()
        reporter.planned(pending)
        fetches = [x for x in pending if x.kind == "fetch"]
        reporter.download_total(sum(x.download_bytes or 0 for x in fetches))
        with batched_dir_syncs():  # every rename durable when apply returns, one fsync per folder
            with ThreadPoolExecutor(max(1, jobs)) as pool:
                list(pool.map(attempt, fetches))
            for x in pending:
                if x.kind == "build":
                    attempt(x)
        result.hf_cache_bytes = hf_cache.reused_bytes - reused_before if hf_cache is not None else 0
        return result


def _replaced_pin(lock: Lock, root: Path, x: Action) -> dict | None:
    """For an action that replaces a stale pin: the pin and the recipe it was made under, kept in
    the new provenance record so `check` can still tell the lock's pin is stale after apply."""
    a = lock.artifacts[x.path]
    if x.stale_pin is None or a.sha256 is None:
        return None
    old = read_provenance(root, x.path) or {}
    recipe_hash = a.recipe or (old.get("recipe_hash") if old.get("sha256") == a.sha256 else None)
    rep = old.get("replaced") or {}
    if recipe_hash is None and rep.get("sha256") == a.sha256:
        return rep  # replaced again before `reconcile lock`: keep what the pin was made under
    recipe = old.get("recipe") if old.get("recipe_hash") == recipe_hash else rep.get("recipe")
    return {"sha256": a.sha256, "recipe_hash": recipe_hash, "recipe": recipe}
def _content_failure(path: str, e: Exception) -> ReconcileError:
    """Anything else raised while producing one artifact (a hostile header nested too deep, bytes no
    reader expected): that artifact's IntegrityError, so `--keep-going` still builds the rest."""
    return IntegrityError(f"failed while reading or producing its content: {type(e).__name__}: {e}", where=path,
                          fix="check the upstream file or the inputs; if they are valid, report a bug")


def _state_temps(root: Path) -> list[str]:
    """Temp files in the state folders writers publish into (provenance records, the owner file)."""
    state = state_dir(root)
    return [p.relative_to(root).as_posix() for sub in (state, provenance_dir(root))
            if sub.is_dir() for p in sub.iterdir() if is_temp_name(p.name)]


def _os_failure(path: str, e: OSError) -> ReconcileError:
    """The file system refused one artifact (a file where its folder should be, no permission):
    that artifact fails, like any other failure, instead of aborting the whole apply."""
    what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return ReconcileError(f"failed: {type(e).__name__}: {what}", where=path,
                          fix="move away whatever is in the way (e.g. a file where a folder should be), "
                              "check permissions, then re-run apply")


class _Stopper:
    """Remembers the first failure when --keep-going is off."""

    def __init__(self, keep_going: bool):
        self.keep_going = keep_going
        self.stopped = False

    def hit(self) -> None:
        if not self.keep_going:
            self.stopped = True


