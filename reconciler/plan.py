"""The planner: a pure function of (lock, observed state) -> Plan.

Nothing here touches disk or network. Each artifact gets exactly one action from a closed
set, with a human reason. Downstream artifacts are planned from the *plan* of their inputs
(the sha256 an input will have after apply), not from today's disk: repairing a pinned
input does not rebuild its consumers, while an input that will change to unknown bytes does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from .errors import LockError
from .hashing import sha256_json
from .pins import StalePin, build_recipe, fetch_recipe_at, recipe_change, source_commits, stale_pins
from .spec import Artifact, Lock, Observed
from .units import human_bytes

__all__ = ["Action", "Plan", "build_recipe", "make_plan", "recipe_change"]

FORMAT_VERSION = 1
ACTIONS = ("ok", "fetch", "build", "rebuild", "blocked")


@dataclass(frozen=True)
class Action:
    """What apply will do for one artifact, and why."""

    path: str
    action: str  # one of ACTIONS
    reason: str
    kind: str  # "fetch" | "build"
    inputs: tuple[str, ...] = ()
    recipe_hash: str | None = None
    expected_sha256: str | None = None
    found_sha256: str | None = None
    download_bytes: int | None = None
    stale_pin: str | None = None  # why the lock's pin no longer holds (re-pinned by `reconcile lock`)


@dataclass(frozen=True)
class Plan:
    """A plan is a value: versioned, serialisable, and tied to the lock and state it came from."""

    lock_digest: str
    state_digest: str
    actions: tuple[Action, ...]
    untracked: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION

    def pending(self) -> list[Action]:
        """Actions that change something (everything but ok)."""
        return [a for a in self.actions if a.action != "ok"]

    def counts(self) -> dict[str, int]:
        """Number of actions of each kind."""
        out = {k: 0 for k in ACTIONS}
        for a in self.actions:
            out[a.action] += 1
        return out

    def summary(self) -> str:
        """`Plan: 2 to fetch, 5 to build, 1 to rebuild, 12 up to date` (+ blocked)."""
        c = self.counts()
        text = (f"Plan: {c['fetch']} to fetch, {c['build']} to build, {c['rebuild']} to rebuild, "
                f"{c['ok']} up to date")
        text += f", {c['blocked']} blocked" if c["blocked"] else ""
        fetches = [a for a in self.actions if a.action == "fetch"]
        if fetches:
            known = sum(a.download_bytes or 0 for a in fetches)
            unknown = sum(a.download_bytes is None for a in fetches)
            text += f"; {human_bytes(known)} to download" + (
                f" (+{unknown} of unknown size: `plan --refresh` asks the hub)" if unknown else "")
        stale = sum(a.stale_pin is not None for a in self.actions)
        if stale:
            text += f"; {stale} stale pin(s): `reconcile apply && reconcile lock` re-pins them"
        return text

    def to_json(self) -> dict:
        """The plan's JSON form (reconciler/schemas/plan.schema.json)."""
        return {"format_version": self.format_version, "lock_digest": self.lock_digest,
                "state_digest": self.state_digest, "summary": self.counts(),
                "actions": [asdict(a) | {"inputs": list(a.inputs)} for a in self.actions],
                "untracked": list(self.untracked)}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        """Parse a saved plan, refusing other format versions."""
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise LockError(f"unsupported plan format {data.get('format_version') if isinstance(data, dict) else '?'}"
                            f" (this reconcile reads {FORMAT_VERSION})", fix="re-run `reconcile plan --out FILE`")
        actions = tuple(Action(**(a | {"inputs": tuple(a["inputs"])})) for a in data["actions"])
        return cls(data["lock_digest"], data["state_digest"], actions, tuple(data.get("untracked", [])))


def state_digest(observed: Mapping[str, Observed]) -> str:
    """Digest of everything the planner looked at on disk (a saved plan is stale when it moves)."""
    return sha256_json([observed[p].as_dict() for p in sorted(observed)])


def fetch_recipe(lock: Lock, a: Artifact, obs: Observed) -> dict:
    """What a fetch depends on: repo, type, file and the commit (pinned, or the one last fetched)."""
    src = lock.sources[a.fetch.source]
    commit = src.revision
    prov = obs.prov or {}
    if not src.pinned and prov.get("ref") == src.revision and prov.get("commit"):
        commit = prov["commit"]  # a branch is fresh at the commit it was fetched from; `lock` pins it
    return fetch_recipe_at(lock, a, commit)


def _known_size(a: Artifact) -> int | None:
    """Bytes a fetch downloads, when the lock pins them (a folder: every member's size)."""
    if a.files:
        sizes = [m.size for m in a.files.values()]
        return None if any(s is None for s in sizes) else sum(sizes)
    return a.size


def _short(sha: str | None) -> str:
    return sha if sha else "nothing"


def _plan_fetch(lock: Lock, a: Artifact, obs: Observed) -> tuple[Action, str | None]:
    recipe = fetch_recipe(lock, a, obs)
    rh = sha256_json(recipe)
    common = {"path": a.path, "kind": "fetch", "recipe_hash": rh, "expected_sha256": a.sha256,
              "found_sha256": obs.sha256, "download_bytes": _known_size(a)}
    if obs.kind == "wrong_type":
        what = "a folder" if not a.is_dir else "a file (or a member that is a symlink or a folder)"
        return Action(action="blocked", reason=f"{what} sits where the artifact should be; move it away", **common), None
    if obs.kind == "missing" or (a.is_dir and obs.sha256 is None):
        return Action(action="fetch", reason="missing" if obs.kind == "missing" else "incomplete", **common), a.sha256
    if a.sha256:
        if obs.sha256 == a.sha256:
            return Action(action="ok", reason="sha256 matches the pin", **common), a.sha256
        return Action(action="fetch", reason=f"sha256 mismatch: expected {a.sha256}, found {obs.sha256}",
                      **common), a.sha256
    if obs.prov_recipe != rh:
        reason = recipe_change((obs.prov or {}).get("recipe"), recipe) if obs.prov else "no fetch record and no pin"
        return Action(action="fetch", reason=reason, **common), None
    if obs.prov_sha256 != obs.sha256:
        return Action(action="fetch", reason=f"changed on disk since fetched: expected {obs.prov_sha256}, "
                                             f"found {obs.sha256}", **common), None
    return Action(action="ok", reason="matches its fetch record (unpinned: run `reconcile lock`)", **common), obs.sha256


def _plan_build(lock: Lock, a: Artifact, obs: Observed, planned: Mapping[str, str | None],
                by_path: Mapping[str, Action], commits: Mapping[str, str]) -> tuple[Action, str | None]:
    ins = tuple(a.input_paths())
    blocked = [p for p in ins if by_path[p].action == "blocked"]
    recipe = build_recipe(a, planned, lock, commits)
    rh = sha256_json(recipe) if recipe else None
    common = {"path": a.path, "kind": "build", "inputs": ins, "recipe_hash": rh,
              "expected_sha256": a.sha256, "found_sha256": obs.sha256}
    if blocked:
        return Action(action="blocked", reason=f"input {blocked[0]} cannot be produced", **common), None
    if obs.kind == "wrong_type":
        return Action(action="blocked", reason="a folder sits where the file should be; move it away", **common), None
    if obs.kind == "missing":
        return Action(action="build", reason="missing", **common), a.sha256
    if recipe is None:
        changing = next((f"input {p}" for p in ins if planned[p] is None),
                        f"source {a.build.params.get('source')!r}")  # its commit is known once fetched
        return Action(action="rebuild", reason=f"{changing} will change", **common), a.sha256
    if a.sha256 and obs.sha256 != a.sha256:
        return Action(action="rebuild", reason=f"sha256 mismatch: expected {a.sha256}, found {obs.sha256}",
                      **common), a.sha256
    if obs.prov is None:
        if a.sha256:  # bytes equal the pin: the lock vouches for them even without a build record
            return Action(action="ok", reason="sha256 matches the pin (no build record)", **common), a.sha256
        return Action(action="rebuild", reason="no build record and no pin", **common), None
    if obs.prov_recipe != rh:
        return Action(action="rebuild", reason=recipe_change(obs.prov.get("recipe"), recipe), **common), a.sha256
    if not a.sha256 and obs.prov_sha256 != obs.sha256:
        return Action(action="rebuild", reason=f"changed on disk since built: expected {_short(obs.prov_sha256)}, "
                                               f"found {obs.sha256}", **common), None
    return Action(action="ok", reason="recipe and bytes match", **common), obs.sha256


def unpinned(a: Artifact) -> Artifact:
    """The artifact with its pins dropped (what apply produces for a stale pin is not checked
    against the old bytes; `reconcile lock` pins the new ones)."""
    return replace(a, sha256=None, size=None, content_digest=None, files=None, recipe=None)


def _mark_stale(x: Action, why: StalePin) -> Action:
    """Say in the plan that this artifact's pin is stale, and what happens to it."""
    if x.action == "ok":
        reason = f"matches the new recipe; its pin is stale ({why.reason}): run `reconcile lock`"
    elif why.upstream is None and not x.reason.startswith("input "):
        reason = f"{x.reason}; pinned bytes will be replaced"
    else:
        reason = x.reason
    return replace(x, reason=reason, stale_pin=why.reason)


def make_plan(lock: Lock, observed: Mapping[str, Observed], untracked: tuple[str, ...] = ()) -> Plan:
    """Decide one action per artifact, in dependency order. Pure: no disk, no network."""
    planned: dict[str, str | None] = {}  # sha256 each artifact will have after apply (None = unknown)
    by_path: dict[str, Action] = {}
    stale = stale_pins(lock, lambda p: observed[p].prov if p in observed else None)
    commits = source_commits(lock, lambda p: observed[p].prov if p in observed else None)
    for path, a in lock.artifacts.items():
        obs = observed[path]
        if path in stale:  # the pin is not a promise any more: plan it like an unpinned artifact
            a = unpinned(a)
        if a.fetch is not None:
            action, sha = _plan_fetch(lock, a, obs)
        else:
            action, sha = _plan_build(lock, a, obs, planned, by_path, commits)
        if path in stale:
            action = _mark_stale(action, stale[path])
        by_path[path] = action
        planned[path] = sha
    return Plan(lock.digest, state_digest(observed), tuple(by_path.values()), tuple(untracked))
