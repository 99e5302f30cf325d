"""The planner, table-driven from tests/cases/plan/*.yaml, and its purity.

Each case gives a lock (inline), what is observed on disk per artifact, and the action and
reason each artifact must get. Hashes are symbolic: `A` in an observed field and `<sha:A>`
in lock text or a reason stand for the same 64-hex digest. A `prov` entry is the record
apply would have written: the recipe is the current one unless the case overrides a part
(`params`, `version`, `inputs`, `commit`), and its sha256 is the observed one unless given.
The planner is called directly on `Observed` values: no disk is involved.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import importlib
import io
import os
import re
from pathlib import Path

import pytest
import yaml

from reconciler.hashing import sha256_json
from reconciler.lockfile import lock_from_data, parse_yaml
from reconciler.plan import ACTIONS, Plan, make_plan
from reconciler.registry import TRANSFORMS
from reconciler.spec import Artifact, Lock
from reconciler.state import Observed

plan_mod = importlib.import_module("reconciler.plan")  # `reconciler.plan` is the API function

CASES = sorted((Path(__file__).parent / "cases" / "plan").glob("*.yaml"))
SYMBOL = re.compile(r"<sha:([A-Za-z0-9_]+)>")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def symbol_sha(name: str) -> str:
    """The digest a symbolic hash name stands for."""
    return hashlib.sha256(f"plan-case:{name}".encode()).hexdigest()


def expand(text: str) -> str:
    """Replace every `<sha:NAME>` in a text by its digest."""
    return SYMBOL.sub(lambda m: symbol_sha(m.group(1)), text)


def resolve(value: str | None) -> str | None:
    """A symbolic name (or a literal 64-hex digest) as a digest."""
    if value is None or HEX64.match(value):
        return value
    return symbol_sha(value)


def recorded_recipe(lock: Lock, a: Artifact, prov: dict, shas: dict[str, str | None]) -> dict:
    """The recipe a provenance record holds, in the format apply writes (overridable per case)."""
    if a.fetch is not None:
        src = lock.sources[a.fetch.source]
        what = {"path": a.fetch.path} if a.fetch.path else {"glob": a.fetch.glob}
        return {"fetch": {"repo": src.repo, "type": src.type, "commit": prov.get("commit", src.revision), **what}}
    t = TRANSFORMS[a.build.transform]
    overrides = prov.get("inputs", {})
    inputs = {}
    for name, v in a.build.inputs.items():
        if name in overrides:
            inputs[name] = resolve(overrides[name])
        elif isinstance(v, list):
            inputs[name] = [shas[p] for p in v]
        else:
            inputs[name] = shas[v]
    return {"transform": prov.get("transform", t.name), "version": prov.get("version", t.version),
            "params": prov.get("params", dict(a.build.params)), "inputs": inputs}


def observed_for(lock: Lock, spec: dict) -> dict[str, Observed]:
    """`Observed` values for every artifact from a case's `observed:` mapping (unlisted = missing)."""
    unknown = set(spec) - set(lock.artifacts)
    assert not unknown, f"observed entries for artifacts not in the lock: {unknown}"
    shas = {p: resolve((spec.get(p) or {}).get("sha256")) for p in lock.artifacts}
    out = {}
    for p, a in lock.artifacts.items():
        o = spec.get(p) or {"kind": "missing"}
        prov = None
        if "prov" in o:
            given = o["prov"] or {}
            recipe = recorded_recipe(lock, a, given, shas)
            prov = {"recipe": recipe, "recipe_hash": sha256_json(recipe),
                    "sha256": resolve(given.get("sha256", o.get("sha256")))}
            prov |= {k: given[k] for k in ("ref", "commit") if k in given}
        members = {n: resolve(s) for n, s in o["members"].items()} if "members" in o else None
        out[p] = Observed(p, o.get("kind", "file"), o.get("size"), shas[p], members,
                          prov["recipe_hash"] if prov else None, prov["sha256"] if prov else None, prov)
    return out


def load_case(path: Path) -> dict:
    case = yaml.safe_load(path.read_text())
    assert {"description", "lock", "observed", "expect"} <= set(case), path.name
    return case


@pytest.mark.parametrize("case_file", CASES, ids=lambda p: p.stem)
def test_plan_case(case_file, monkeypatch):
    case = load_case(case_file)
    for name, fields in (case.get("registry") or {}).items():
        monkeypatch.setitem(TRANSFORMS, name, dataclasses.replace(TRANSFORMS[name], **fields))
    lock = lock_from_data(parse_yaml(expand(case["lock"]), case_file.name), case_file.name)
    assert set(case["expect"]) == set(lock.artifacts), "a case states the action of every artifact"
    observed = observed_for(lock, case["observed"] or {})

    plan = make_plan(lock, observed)

    got = {a.path: a for a in plan.actions}
    assert list(got) == list(lock.artifacts), "one action per artifact, in dependency order"
    for path, want in case["expect"].items():
        action = got[path]
        assert action.action in ACTIONS
        assert (path, action.action) == (path, want["action"]), action.reason
        if "reason" in want:
            assert expand(want["reason"]) in action.reason, f"{path}: {action.reason!r}"
        for field in ("expected_sha256", "found_sha256"):
            if field in want:
                assert getattr(action, field) == resolve(want[field]), f"{path}.{field}"
        if "download_bytes" in want:
            assert action.download_bytes == want["download_bytes"]
    if "order" in case:
        assert [a.path for a in plan.actions] == case["order"]
    if "summary" in case:
        assert plan.summary() == case["summary"]
    assert make_plan(lock, observed) == plan, "the planner is deterministic"
    again = Plan.from_json(plan.to_json())
    assert (again.lock_digest, again.state_digest, again.actions) == (plan.lock_digest, plan.state_digest,
                                                                       plan.actions)


def test_cases_cover_every_action():
    seen = set()
    for path in CASES:
        seen |= {w["action"] for w in load_case(path)["expect"].values()}
    assert seen == set(ACTIONS)


def test_state_digest_moves_with_what_was_observed():
    """A saved plan is tied to what the planner saw: any observed change moves the digest."""
    case = load_case(CASES[0].parent / "all_ok.yaml")
    lock = lock_from_data(parse_yaml(expand(case["lock"]), "all_ok"))
    observed = observed_for(lock, case["observed"])
    base = make_plan(lock, observed).state_digest
    edited = dict(observed, **{"configs/base.json": dataclasses.replace(observed["configs/base.json"],
                                                                       sha256=symbol_sha("OTHER"))})
    assert make_plan(lock, edited).state_digest != base
    assert make_plan(lock, observed, ("stray.txt",)).state_digest == base  # untracked files are not state


# ----------------------------------------------------------------------------- purity

IO_MODULES = {"os", "io", "pathlib", "shutil", "sqlite3", "subprocess", "socket", "tempfile", "glob", "urllib",
              "http", "requests", "huggingface_hub", "filelock", "threading", "concurrent"}
IO_NAMES = {"open", "observe", "StatCache", "read_provenance", "sha256_file", "write_provenance"}


def test_planner_module_imports_nothing_that_does_io():
    tree = ast.parse(Path(plan_mod.__file__).read_text())
    imported: set[str] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Name):
            names.add(node.id)
    assert not imported & IO_MODULES, imported & IO_MODULES
    assert not {m for m in imported if m.startswith(".") and m[1:] in ("apply", "publish", "sources", "lockedit",
                                                                        "verify", "cli")}
    assert not names & IO_NAMES, names & IO_NAMES


def test_make_plan_needs_no_disk(monkeypatch):
    """make_plan with fake observations, no storage root, and every file-system entry point refusing."""
    case = load_case(CASES[0].parent / "input_will_change.yaml")
    lock = lock_from_data(parse_yaml(expand(case["lock"]), "x"))
    assert lock.root == "storage" and not Path("/nonexistent-reconcile-root").exists()
    observed = observed_for(lock, case["observed"])
    expected = make_plan(lock, observed)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the planner touched the file system: {args!r}")

    with monkeypatch.context() as m:
        for mod, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                          (os, "scandir"), (os, "listdir"), (os, "walk"), (os, "replace")):
            m.setattr(mod, name, refuse)
        plan = make_plan(lock, observed)
    assert plan == expected
    assert [a.action for a in plan.actions] == ["rebuild", "rebuild", "rebuild", "ok"]
