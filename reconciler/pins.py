"""Pins that know their recipe: which of the lock's pins were made under another recipe.

`reconcile lock` records next to every pin (sha256, size, content_digest, files) the hash of the
recipe it was made under: for a build, transform + version + canonical params + the sha256 pins
of its inputs; for a fetch, repo + type + commit + path. That is exactly the `recipe_hash` apply
writes to provenance, so the two can be compared. A pin is *stale* when the lock's current recipe
hashes differently (a param, transform or revision was edited), or when an input's bytes will
change (its own pin is stale). Stale pins are not promises: the planner plans their artifacts
as unpinned (no check against the old bytes), and `check` / `lock --check` report them until
`reconcile apply && reconcile lock` re-pins them, all fields together.

Pure: a validated lock (plus, optionally, the provenance records on disk) in, verdicts out.
Locks written before recipes were recorded keep working: a pin without `recipe:` is trusted,
unless provenance shows the bytes it pins were made under another recipe than today's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .hashing import sha256_json
from .registry import TRANSFORMS
from .spec import Artifact, Lock

FIX = "reconcile apply && reconcile lock"


@dataclass(frozen=True)
class StalePin:
    """A pin made under another recipe than the lock's current one."""

    path: str
    reason: str  # "recipe changed: param dim 64 -> 48" | "input X will change" | ...
    upstream: str | None = None  # the input whose change makes this pin stale (None: its own recipe)


def source_commits(lock: Lock, prov_of: Callable[[str], Mapping | None]) -> dict[str, str]:
    """Each source's commit: its pinned revision, or the commit its fetches recorded for the branch.

    The same rule as the planner's fetch recipe, so `reconcile lock` pinning the fetched commit changes nothing.
    """
    out = {n: s.revision for n, s in lock.sources.items() if s.pinned}
    for a in lock.artifacts.values():
        if a.fetch is None or a.fetch.source in out:
            continue
        prov = prov_of(a.path) or {}
        if prov.get("ref") == lock.sources[a.fetch.source].revision and prov.get("commit"):
            out[a.fetch.source] = prov["commit"]
    return out


def lock_facts(lock: Lock, a: Artifact, commits: Mapping[str, str]) -> dict | None:
    """What a `reads_lock` transform learns from the lock; None while its source's commit is unknown."""
    releases = (lock.raw or {}).get("releases") or [{}]
    facts: dict[str, Any] = {"storage_version": lock.storage_version, "release_date": releases[0].get("date")}
    name = a.build.params.get("source")
    if name is not None:
        if name not in commits:
            return None
        src = lock.sources[name]
        facts["source"] = {"name": name, "repo": src.repo, "type": src.type, "commit": commits[name]}
    return facts


def build_recipe(a: Artifact, input_sha: Mapping[str, str | None], lock: Lock | None = None,
                 commits: Mapping[str, str] | None = None) -> dict | None:
    """Transform, version, canonical params, input sha256s (and, for a `reads_lock` transform, the
    lock's facts: release and source commit); None while one of them is unknown."""
    t = TRANSFORMS[a.build.transform]
    inputs: dict = {}
    for name, v in sorted(a.build.inputs.items()):
        shas = [input_sha.get(p) for p in (v if isinstance(v, list) else [v])]
        if any(s is None for s in shas):
            return None
        inputs[name] = shas if isinstance(v, list) else shas[0]
    recipe = {"transform": t.name, "version": t.version, "params": json.loads(json.dumps(a.build.params)),
              "inputs": inputs}
    if t.reads_lock and lock is not None:
        facts = lock_facts(lock, a, commits or {})
        if facts is None:
            return None
        recipe["lock"] = facts
    return recipe


def fetch_recipe_at(lock: Lock, a: Artifact, commit: str) -> dict:
    """What a fetch depends on: repo, type, file (or glob) and the commit."""
    src = lock.sources[a.fetch.source]
    what = {"path": a.fetch.path} if a.fetch.path else {"glob": a.fetch.glob}
    return {"fetch": {"repo": src.repo, "type": src.type, "commit": commit, **what}}


def recipe_change(old: Mapping | None, new: Mapping) -> str:
    """Say what differs between a recorded recipe and the current one."""
    if not old:
        return "recipe changed since it was pinned"
    if "fetch" in new:
        o, n = old.get("fetch", {}), new["fetch"]
        diffs = [f"{k} {o.get(k)} -> {n.get(k)}" for k in sorted(n) if o.get(k) != n.get(k)]
        return "source changed: " + ", ".join(diffs)
    if old.get("transform") != new["transform"]:
        return f"transform changed: {old.get('transform')} -> {new['transform']}"
    if old.get("version") != new["version"]:
        return f"transform {new['transform']} version {old.get('version')} -> {new['version']}"
    op, np_ = old.get("params", {}), new["params"]
    diffs = [f"param {k} {json.dumps(op.get(k))} -> {json.dumps(np_.get(k))}"
             for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)]
    if diffs:
        return "recipe changed: " + ", ".join(diffs)
    oi, ni = old.get("inputs", {}), new["inputs"]
    for k in sorted(set(oi) | set(ni)):
        if oi.get(k) != ni.get(k):
            return f"recipe changed: input {k} has new bytes"
    return "recipe changed"


def lock_recipe(lock: Lock, a: Artifact, expected: Mapping[str, str | None]) -> dict | None:
    """The recipe the lock declares now for `a`, given the sha256 each input will have; None when
    the lock alone cannot say (an unpinned input, or a source on a branch)."""
    if a.build is not None:
        return build_recipe(a, expected, lock, {n: s.revision for n, s in lock.sources.items() if s.pinned})
    src = lock.sources[a.fetch.source]
    return fetch_recipe_at(lock, a, src.revision) if src.pinned else None


def _recorded_recipe(prov: Mapping | None, pin: str) -> str | None:
    """The recipe hash a pin was made under, from provenance: the record of the pinned bytes, or
    the pin that the last apply replaced (apply keeps it in `replaced` when a stale pin's bytes change)."""
    if not prov:
        return None
    if prov.get("sha256") == pin:
        return prov.get("recipe_hash")
    rep = prov.get("replaced") or {}
    return rep.get("recipe_hash") if rep.get("sha256") == pin else None


def _old_recipe(prov: Mapping | None, recipe_hash: str) -> Mapping | None:
    """The full recipe behind a hash, when provenance still holds it (to say what changed)."""
    for rec in (prov or {}), (prov or {}).get("replaced") or {}:
        if rec.get("recipe_hash") == recipe_hash:
            return rec.get("recipe")
    return None


def stale_pins(lock: Lock, prov_of: Callable[[str], Mapping | None] | None = None) -> dict[str, StalePin]:
    """Every pinned artifact whose pin was made under another recipe, in dependency order.

    `prov_of(path)` (optional) gives an artifact's provenance record: it names what changed
    ("param dim 64 -> 48") and lets pins written before `recipe:` existed be judged too.
    """
    prov_of = prov_of or (lambda _p: None)
    expected: dict[str, str | None] = {}  # sha256 the lock vouches for (None: unknown or changing)
    changing: set[str] = set()  # artifacts whose bytes the next apply will change
    out: dict[str, StalePin] = {}
    for path, a in lock.artifacts.items():
        moving = next((p for p in a.input_paths() if p in changing), None)
        recipe = None if moving else lock_recipe(lock, a, expected)
        recorded, prov = a.recipe, None
        if a.sha256 is not None and recorded is None and not moving:
            prov = prov_of(path)  # an older lock: the record of the pinned bytes says what they were made under
            recorded = _recorded_recipe(prov, a.sha256)
        stale = None
        if a.sha256 is not None and moving:
            stale = StalePin(path, f"its input {moving} is stale", moving)
        elif a.sha256 is not None and recipe is not None and recorded and sha256_json(recipe) != recorded:
            prov = prov or prov_of(path)  # only read to say what changed
            stale = StalePin(path, recipe_change(_old_recipe(prov, recorded), recipe))
        if stale:
            out[path] = stale
        if stale or moving:
            changing.add(path)
        expected[path] = None if path in changing else a.sha256
    return out
