"""Read and validate `storage.lock.yaml`: YAML safety, JSON Schema, semantics, the DAG.

Validation happens in layers, each reporting the first problem at a precise field path
(`artifacts."a/b.json".build.inputs.src: no such artifact`): YAML syntax (line, column),
the JSON Schema in `reconciler/schemas/storage.lock.schema.json`, then semantics the schema cannot
express (path safety, references, registered transforms and checks, cycles, size bounds).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import LockError
from .hashing import sha256_json
from .layout import STATE_DIR, is_state_path
from .pathrule import path_problem, vcs_segment
from .registry import CHECKS, TRANSFORMS, load_plugins
from .spec import Artifact, Build, CheckSpec, Fetch, Lock, Member, Source


def did_you_mean(name: str, known) -> str:
    """` (did you mean 'x'?)` for the closest known name, else the known names when they are few."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known and len(known) <= 40 else ""

@cache
def schema_text(name: str) -> str:
    """The text of a JSON Schema shipped inside the package (`reconciler/schemas/`, read as package data)."""
    return resources.files("reconciler.schemas").joinpath(name).read_text(encoding="utf-8")


@cache
def load_schema(name: str) -> dict:
    """A JSON Schema shipped inside the package, parsed."""
    return json.loads(schema_text(name))


# libyaml's parser (CSafeLoader) reads a 10,000-artifact lock ~5x faster than the pure-Python one.
_BaseSafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseSafeLoader):
    """Safe loader (no object-constructing tags) that also refuses duplicate keys."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` merge keys: SafeLoader resolves them (explicit keys win)
        key = loader.construct_object(key_node, deep=deep)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: SafeLoader reports it below, with its position
            continue
        if dup:
            m = key_node.start_mark
            raise LockError(f"duplicate key {key!r} at line {m.line + 1}, column {m.column + 1}",
                            fix="remove one of the two entries")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def fmt_path(parts) -> str:
    """Render a field path: `artifacts."models_v2/x.json".build.inputs.src`."""
    out = []
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        elif isinstance(p, str) and p.replace("_", "").isalnum():
            out.append(("." if out else "") + p)
        else:
            out.append(("." if out else "") + json.dumps(str(p)))
    return "".join(out) or "(top level)"


def parse_yaml(text: str, name: str) -> Any:
    """Parse lock text safely; syntax errors and unsafe tags become a LockError with line/column."""
    try:
        done, data = _plain_yaml(text)
        return data if done else _load_bounded(text)
    except LockError as e:
        e.where = name
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or str(e)
        if "constructor" in problem:
            problem += " (object-constructing YAML tags are refused)"
        raise LockError(f"{loc}{problem}", where=name, fix="fix the YAML syntax at that place") from None
    except yaml.YAMLError as e:
        raise LockError(f"not valid YAML: {e}", where=name, fix="fix the YAML syntax") from None


# Aliases are references while composed but every later walk (JSON check, schema, digest) meets
# each use again: a "billion laughs" of 9 aliases x 9 levels is 400 bytes and 387 million values.
# A lock of 10,000 artifacts expands to ~200,000 values; 2,000,000 bounds the walk at ~1 s.
MAX_EXPANDED_NODES = 2_000_000


def _load_bounded(text: str) -> Any:
    """The full strict loader, refusing a document whose aliases expand past MAX_EXPANDED_NODES."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = _expanded_size(node)
        if n > MAX_EXPANDED_NODES:
            m = node.start_mark
            raise LockError(f"YAML aliases expand to more than {MAX_EXPANDED_NODES:,} values (an alias bomb?)",
                            where=f"line {m.line + 1}", fix="write the values out, or use fewer nested aliases")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root) -> int:
    """How many values the node graph has once every alias is expanded (iterative: deep input is fine).

    A cycle (`&a [*a]`) counts as over the limit; the constructor then reports it on its own.
    """
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    on_stack: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            on_stack.discard(key)
            sizes[key] = min(1 + sum(sizes[id(k)] for k in kids), MAX_EXPANDED_NODES + 1)
            continue
        if key in on_stack:
            return 0  # a cycle: the constructor builds it, check_json_data refuses it with its message
        on_stack.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


_STR_TAG = "tag:yaml.org,2002:str"
# Plain scalars whose resolved tag the fast path builds itself (with SafeConstructor's own functions).
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null")}
_KEY_WANTED = object()  # an open mapping waiting for its next key
_NOTHING = object()  # no root node yet
_IN_SEQUENCE = object()  # the pending-key slot of an open sequence


def _plain_yaml(text: str) -> tuple[bool, Any]:
    """Build the data of a *plain* YAML document straight from libyaml's events: `(True, data)`.

    Why: composing a node graph and constructing it through SafeConstructor costs ~4x the parse
    itself on a 10,000-artifact lock. Plain means one document of mappings, sequences and
    untagged scalars resolving to str / int / float / bool / null, with no anchors, aliases,
    merge keys, complex keys or duplicate keys. Anything else returns `(False, None)` and the
    text goes to the full strict loader, which builds it or refuses it with its line and column;
    so on plain documents both give equal data, and every refusal keeps its message.
    """
    if _BaseSafeLoader is yaml.SafeLoader:
        return False, None  # no libyaml: the pure-Python events would save nothing
    loader = _StrictLoader(text)
    try:
        return _build_plain(loader)
    except yaml.YAMLError:
        return False, None  # the full loader reports it
    finally:
        loader.dispose()


def _build_plain(loader) -> tuple[bool, Any]:
    """The event loop of `_plain_yaml`: a stack of open containers, each mapping with its pending key."""
    ev = yaml.events
    scalar_ev, map_ev, seq_ev = ev.ScalarEvent, ev.MappingStartEvent, ev.SequenceStartEvent  # locals: hot loop
    ends = (ev.MappingEndEvent, ev.SequenceEndEvent)
    resolve_first = set(loader.yaml_implicit_resolvers)  # first characters that may resolve to a non-str
    any_first = None in resolve_first
    stack: list[list] = []  # [container, its pending key | _KEY_WANTED | _IN_SEQUENCE]
    root, done, get = _NOTHING, False, loader.get_event
    while True:
        e = get()
        kind = type(e)
        if kind is scalar_ev:
            if e.anchor is not None or e.tag is not None:
                return False, None
            item = e.value
            if e.implicit[0] and (any_first or item[:1] in resolve_first):
                tag = loader.resolve(yaml.ScalarNode, item, e.implicit)
                if tag != _STR_TAG:
                    if tag not in _PLAIN_TAGS:
                        return False, None  # merge key `<<`, timestamps, `=`: the full loader decides
                    item = loader.yaml_constructors[tag](loader, yaml.ScalarNode(tag, item))
        elif kind is map_ev or kind is seq_ev:
            if e.anchor is not None or e.tag is not None or (stack and stack[-1][1] is _KEY_WANTED):
                return False, None  # tagged, anchored, or a container used as a mapping key
            item = {} if kind is map_ev else []
        elif kind in ends:
            stack.pop()
            continue
        else:
            end = _stream_event(e, done, root)
            if end is None:
                done = done or type(e) is ev.DocumentEndEvent
                continue
            return end
        if not stack:
            root = item
        else:
            top = stack[-1]
            if top[1] is _IN_SEQUENCE:
                top[0].append(item)
            elif top[1] is _KEY_WANTED:
                if item in top[0]:
                    return False, None  # a duplicate key: the full loader names its line and column
                top[1] = item
            else:
                top[0][top[1]] = item
                top[1] = _KEY_WANTED
        if kind is not scalar_ev:
            stack.append([item, _KEY_WANTED if kind is map_ev else _IN_SEQUENCE])


def _stream_event(e, done: bool, root: Any) -> tuple[bool, Any] | None:
    """The outcome of a stream / document event: None to read on, else `_build_plain`'s result."""
    ev = yaml.events
    if type(e) is ev.StreamEndEvent:
        if root is _NOTHING:
            return True, None  # an empty stream: yaml.load gives None
        return (True, root) if done else (False, None)
    if type(e) in (ev.StreamStartEvent, ev.DocumentEndEvent) or type(e) is ev.DocumentStartEvent and not done:
        return None
    return False, None  # an alias, or a second document (the full loader refuses it)


_VALIDATORS: dict[int, tuple[dict, Any]] = {}
_JSONSCHEMA: dict[int, tuple[dict, Any]] = {}  # schema id -> (schema, jsonschema validator), when asked


def compile_schema(schema: Any) -> Any:
    """A yes/no test `instance -> bool` compiled by fastjsonschema, or None when it cannot compile it.

    A pre-check only: "valid" is trusted, "invalid" is handed to jsonschema, which decides and
    words the error. Defaults are never filled in (the lock's params are hashed as written) and
    `format` is not asserted (as in jsonschema), so the pre-check never accepts what jsonschema
    refuses (tests/test_lock_fastpath.py holds it to that).

    Missing library -> None as well: the pre-check is a speed-up only, and a wheel installed with
    `--no-deps` into a training environment (or an environment made before the dependency existed)
    must still validate its lock, with jsonschema alone (same verdicts, slower on large locks).
    """
    try:
        import fastjsonschema
    except ImportError:
        return None
    try:
        validate = fastjsonschema.compile(schema, use_default=False, use_formats=False)
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, OSError):  # e.g. an unresolvable $ref
        return None
    return _yes_no(validate)


def _yes_no(validate: Any) -> Any:
    """A fastjsonschema validator as a test `instance -> bool`."""
    import fastjsonschema

    def test(instance: Any) -> bool:
        try:
            validate(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return test


def _validators(schema: dict) -> Any:
    """The compiled yes/no test of a schema (None when it cannot be compiled), built once per schema.

    Why: jsonschema alone is 2.5x slower on a 2,000-artifact lock (262 vs 106 ms, README); the
    compiled test answers the common "valid" alone, and jsonschema (~60 ms to import) is
    imported and asked only for the error of an invalid instance.
    """
    hit = _VALIDATORS.get(id(schema))
    if hit is None or hit[0] is not schema:  # the schema is kept in the entry, so its id stays its own
        hit = (schema, compile_schema(schema))
        _VALIDATORS[id(schema)] = hit
    return hit[1]


def _schema_errors(schema: dict, instance: Any) -> list:
    """jsonschema's errors for an instance; none without asking it when the compiled test passes."""
    fast = _validators(schema)
    if fast is not None and fast(instance):
        return []
    hit = _JSONSCHEMA.get(id(schema))
    if hit is None or hit[0] is not schema:
        import jsonschema
        hit = _JSONSCHEMA[id(schema)] = (schema, jsonschema.Draft202012Validator(schema))
    return list(hit[1].iter_errors(instance))


def _best_match(errors: list):
    """jsonschema's most relevant error of a list."""
    from jsonschema.exceptions import best_match
    return best_match(errors)


@cache
def _lock_schema() -> dict:
    """The lock schema; its yes/no test is the one compiled ahead of time when that was made from this
    very text (reconciler/schemas/generate.py says why: ~20 ms of every command's start-up)."""
    text = schema_text("storage.lock.schema.json")
    schema = json.loads(text)
    try:
        from .schemas import lock_validator  # imports fastjsonschema
    except ImportError:  # no fastjsonschema (a --no-deps wheel): compile_schema says None, jsonschema decides
        return schema
    if lock_validator.SCHEMA_SHA256 == hashlib.sha256(text.encode()).hexdigest():
        _VALIDATORS[id(schema)] = (schema, _yes_no(lock_validator.validate))
    return schema


def validate_schema(data: Any) -> None:
    """Validate against the lock JSON Schema; report the deepest, most specific error."""
    errors = _schema_errors(_lock_schema(), data)
    if not errors:
        return
    err = _best_match(errors)
    while err.context:  # descend into oneOf branches for a precise message
        err = _best_match(err.context)
    raise LockError(_schema_message(err), where=fmt_path(err.absolute_path),
                    fix="see the lock format in README.md (reconciler/schemas/storage.lock.schema.json)")


def _schema_message(err) -> str:
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = set(err.schema.get("properties") or {})
        extra = sorted(k for k in err.instance if k not in known)
        hint = did_you_mean(extra[0], known) if extra and known else ""
        return f"unknown field(s): {', '.join(map(repr, extra))}{hint}"
    if err.validator == "type" and isinstance(err.instance, (int, float)) and not isinstance(err.instance, bool) \
            and "string" in (err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]):
        return (f"{err.instance!r} is a YAML number where a string is expected: quote it "
                "(e.g. revision: \"0123456\"; unquoted, YAML reads digits as a number and drops leading zeros)")
    if err.validator == "required":
        return f"missing field: {err.message}"
    if err.validator == "oneOf" and isinstance(err.instance, dict):
        return "must have exactly one of `fetch` or `build` (or for fetch: `path` or `glob`)"
    return err.message


# Names `reconcile` itself writes at the root (`reconcile docs`): an artifact there would fight with it.
GENERATED_NAMES = frozenset({"README.md"})


def check_artifact_path(path: str) -> None:
    """Refuse artifact keys that break the path rule (`pathrule.py`) or hit a name reconcile owns."""
    bad = path_problem(path)
    if bad is None and ":" in path.split("/")[0]:
        bad = "must be a relative POSIX path (no `scheme:` or drive prefix)"
    elif bad is None and is_state_path(path):
        bad = f"must not be under `{STATE_DIR}/`: `{STATE_DIR}/` is reserved for reconcile's own state"
    elif bad is None and vcs_segment(path):
        bad = f"must not be inside a version-control folder ({vcs_segment(path)})"
    elif bad is None and path in GENERATED_NAMES:
        bad = f"must not be {path!r} at the root: `reconcile docs` writes that file"
    if bad and ".." in path.split("/"):
        bad += " (it would escape the storage root)"
    if bad:
        raise LockError(f"artifact path {bad}", where=fmt_path(["artifacts", path]),
                        fix="use a normalised path relative to the storage root")


def check_name_field(value: str, where: list, what: str, *, single: bool = False) -> None:
    """Refuse a `fetch.path`, `fetch.glob` or `files:` name that breaks the path rule (`pathrule.py`)."""
    bad = path_problem(value, single=single)
    if not bad:
        return
    if single:  # a folder artifact's member: a name inside that folder of the storage root
        raise LockError(f"{what} {bad}", where=fmt_path(where),
                        fix="use a single file name: members are files directly inside the artifact's folder")
    # fetch.path / fetch.glob name a file of the source repo at its pinned revision, never another repo
    raise LockError(f"{what} {bad}" + (" (it would leave the source's repo)" if ".." in value.split("/") else ""),
                    where=fmt_path(where),
                    fix="use the file's path inside the source repo, as the hub lists it (e.g. `7B_1T_4/params.json`); "
                        "to fetch from another repo, add a source for it")


def check_root_containment(lock: Lock, root: Path) -> None:
    """Refuse artifacts whose path resolves (through symlinks on disk) outside the root.

    Each distinct parent folder is resolved once, and a leaf only when it is a symlink: 1,000
    artifacts in 10 folders cost 10 realpath calls and 1,000 lstat calls, not 1,000 realpaths.
    """
    real_root = os.path.realpath(root)
    parents: dict[str, str] = {}
    for path in lock.artifacts:
        head, _, name = path.rpartition("/")
        if head not in parents:
            parents[head] = os.path.realpath(os.path.join(root, head)) if head else real_root
        full = os.path.join(parents[head], name)
        target = os.path.realpath(full) if os.path.islink(full) else full
        if target != real_root and not target.startswith(real_root.rstrip("/") + "/"):
            raise LockError(f"resolves outside the storage root (to {target}) through a symlink",
                            where=fmt_path(["artifacts", path]),
                            fix="remove the symlink under the root or change the artifact path")


def check_not_lock_file(lock: Lock, root: Path, lock_file: Path) -> None:
    """Refuse a lock whose root holds the lock file at an artifact's path (or inside a folder artifact)."""
    try:
        rel = Path(lock_file).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return  # the lock file is outside the root
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if "/".join(parts[:i]) in lock.artifacts:
            raise LockError(f"is the lock file itself ({rel} under the storage root)",
                            where=fmt_path(["artifacts", "/".join(parts[:i])]),
                            fix="rename the artifact, or point `root` at a storage folder without the lock file")


def _to_checks(raw: list, where: list) -> tuple[CheckSpec, ...]:
    out = []
    for i, item in enumerate(raw or []):
        if isinstance(item, str):
            name, params = item, {}
        else:
            (name, params), = item.items()
            params = params or {}
        if name not in CHECKS:
            raise LockError(f"unknown check {name!r}{did_you_mean(name, CHECKS)}",
                            where=fmt_path(where + [i]), fix="use a registered check name (`reconcile transforms` lists them)")
        _validate_params(CHECKS[name].params_schema, params, where + [i, name])
        out.append(CheckSpec(name, params))
    return tuple(out)


def _validate_params(schema: dict, params: Any, where: list) -> None:
    errors = _schema_errors(schema, params)
    if errors:
        err = _best_match(errors)
        raise LockError(_schema_message(err), where=fmt_path(where + list(err.absolute_path)),
                        fix="see its params with `reconcile transforms NAME` (or README.md)")


def _to_artifact(path: str, raw: dict) -> Artifact:
    where = ["artifacts", path]
    fetch = Fetch(**raw["fetch"]) if "fetch" in raw else None
    build = None
    if "build" in raw:
        b = raw["build"]
        build = Build(b["transform"], dict(b.get("inputs") or {}), dict(b.get("params") or {}))
    if fetch is not None:
        for key in ("path", "glob"):
            value = getattr(fetch, key)
            if value is not None:
                check_name_field(value, where + ["fetch", key], f"fetch.{key}")
    files = None
    if raw.get("files"):
        for k in raw["files"]:
            check_name_field(k, where + ["files", k], "member name", single=True)
        files = {k: Member(v.get("sha256"), v.get("size")) for k, v in raw["files"].items()}
    if files and (fetch is None or fetch.glob is None):
        raise LockError("`files` is only for glob fetches", where=fmt_path(where + ["files"]),
                        fix="remove `files` or use `fetch: {glob: ...}`")
    return Artifact(path=path, fetch=fetch, build=build, sha256=raw.get("sha256"), size=raw.get("size"),
                    dtype=raw.get("dtype"), max_size=raw.get("max_size"),
                    content_digest=raw.get("content_digest"), recipe=raw.get("recipe"),
                    checks=_to_checks(raw.get("checks"), where + ["checks"]), files=files, open=raw.get("open"))


def _check_build(a: Artifact, artifacts: dict) -> None:
    where = ["artifacts", a.path, "build"]
    t = TRANSFORMS.get(a.build.transform)
    if t is None:
        raise LockError(f"unknown transform {a.build.transform!r}{did_you_mean(a.build.transform, TRANSFORMS)}",
                        where=fmt_path(where + ["transform"]),
                        fix="use a registered transform name (`reconcile transforms` lists them)")
    for name, value in a.build.inputs.items():
        kind = t.inputs.get(name)
        if kind is None:
            raise LockError(f"transform {t.name!r} takes no input {name!r} (inputs: {', '.join(t.inputs) or 'none'})",
                            where=fmt_path(where + ["inputs", name]), fix="rename or remove this input")
        if kind.endswith("list") != isinstance(value, list):
            raise LockError(f"must be {'a list of artifact paths' if kind.endswith('list') else 'one artifact path'}",
                            where=fmt_path(where + ["inputs", name]), fix="change the input's shape")
        for ref in value if isinstance(value, list) else [value]:
            if ref not in artifacts:
                raise LockError(f"no such artifact: {ref!r}", where=fmt_path(where + ["inputs", name]),
                                fix="add that artifact to the lock or correct the path")
    missing = [n for n, k in t.inputs.items() if not k.startswith("optional") and n not in a.build.inputs]
    if missing:
        raise LockError(f"missing input(s) {', '.join(missing)} for transform {t.name!r}",
                        where=fmt_path(where + ["inputs"]), fix="declare every required input")
    _validate_params(t.params_schema, dict(a.build.params), where + ["params"])
    if a.max_size is not None and t.predict_size is not None:
        need = t.predict_size(dict(a.build.params))
        if need > a.max_size:
            raise LockError(f"the recipe implies {need:,} bytes ({need / 1e6:.1f} MB), above max_size "
                            f"{a.max_size:,} ({a.max_size / 1e6:.1f} MB): this bound cannot hold",
                            where=fmt_path(["artifacts", a.path, "max_size"]),
                            fix="raise max_size to the real size or shrink the recipe (dim, layers, vocab, dtype)")


def _check_refs(a: Artifact, artifacts: dict, sources: dict) -> None:
    if a.fetch is not None and a.fetch.source not in sources:
        raise LockError(f"no such source: {a.fetch.source!r}{did_you_mean(a.fetch.source, sources)}", where=fmt_path(["artifacts", a.path, "fetch", "source"]),
                        fix="declare it under `sources:`")
    if a.build is not None and TRANSFORMS[a.build.transform].reads_lock and a.build.params.get("source") is not None:
        if a.build.params["source"] not in sources:
            raise LockError(f"no such source: {a.build.params['source']!r}",
                            where=fmt_path(["artifacts", a.path, "build", "params", "source"]),
                            fix="name a source declared under `sources:`")
    for i, c in enumerate(a.checks):
        for ref in CHECKS[c.name].refs:
            value = c.params.get(ref)
            for r in value if isinstance(value, list) else ([value] if value is not None else []):
                if r not in artifacts:
                    raise LockError(f"no such artifact: {r!r}",
                                    where=fmt_path(["artifacts", a.path, "checks", i, c.name, ref]),
                                    fix="add that artifact to the lock or correct the path")


def _check_nesting(paths: list[str]) -> None:
    ordered = sorted(paths)
    for a, b in zip(ordered, ordered[1:]):
        if b.startswith(a + "/"):
            raise LockError(f"artifact {a!r} is a file but {b!r} needs it to be a folder",
                            where=fmt_path(["artifacts", b]), fix="rename one of the two artifacts")


def topo_order(artifacts: dict[str, Artifact]) -> list[str]:
    """Dependency order (inputs first), ties broken by path; a cycle is a LockError naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for start in sorted(artifacts):
        if state.get(start) == 2:
            continue
        stack = [(start, iter(sorted(set(artifacts[start].input_paths()))))]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[node] = 2
                order.append(node)
            elif state.get(nxt) == 1:
                cyc = [n for n, _ in stack][[n for n, _ in stack].index(nxt):] + [nxt]
                raise LockError("dependency cycle: " + " -> ".join(cyc), where=fmt_path(["artifacts", nxt]),
                                fix="break the cycle: an artifact cannot be built from itself")
            elif state.get(nxt) is None:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(set(artifacts[nxt].input_paths())))))
    return order


def check_json_data(value: Any, where: list) -> None:
    """Refuse what JSON cannot hold (YAML dates, binary, non-string keys): the lock's digest,
    recipe hashes and JSON Schema all assume plain JSON data."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):  # YAML reads `1:`, `yes:` or `2024-01-01:` as non-strings
                raise LockError(f"key {k!r} ({type(k).__name__}) is not a string", where=fmt_path(where),
                                fix="quote the key")
            check_json_data(v, where + [k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json_data(v, where + [i])
    elif isinstance(value, float) and not math.isfinite(value):  # YAML `.nan`, `.inf`: not JSON
        raise LockError(f"{value} is not a JSON number", where=fmt_path(where),
                        fix="use a finite number (JSON has no NaN or Infinity)")
    elif not isinstance(value, (str, int, float, bool)) and value is not None:
        raise LockError(f"{type(value).__name__} value {repr(value)[:60]} is not plain JSON data", where=fmt_path(where),
                        fix="quote it to make it a string")


def lock_from_data(data: Any, name: str = "storage.lock.yaml") -> Lock:
    """Validate plain lock data (schema + semantics) and build the immutable Lock."""
    load_plugins()
    if not isinstance(data, dict):
        raise LockError("the lock must be a YAML mapping with version, storage_version and artifacts",
                        where=name, fix="see the lock format in README.md")
    try:
        check_json_data(data, [])
    except RecursionError:  # `&a [*a]`: an alias inside itself
        raise LockError("the lock contains itself (a YAML alias cycle) or is nested too deeply", where=name,
                        fix="remove the recursive alias") from None
    validate_schema(data)
    sources = {k: Source(k, v["repo"], v["type"], v["revision"], bool(v.get("gated", False)), v.get("licence"))
               for k, v in (data.get("sources") or {}).items()}
    for path in data["artifacts"]:
        check_artifact_path(path)
    _check_nesting(list(data["artifacts"]))
    artifacts = {p: _to_artifact(p, raw) for p, raw in data["artifacts"].items()}
    for a in artifacts.values():
        if a.build is not None:
            _check_build(a, artifacts)
        _check_refs(a, artifacts, sources)
    ordered = {p: artifacts[p] for p in topo_order(artifacts)}
    return Lock(version=data["version"], storage_version=str(data["storage_version"]),
                root=data.get("root", "storage"), sources=sources, artifacts=ordered,
                # Where the lock is cached is not what it describes: moving the remote keeps the digest.
                digest=sha256_json({k: v for k, v in data.items() if k != "remote"}), raw=data,
                remote=(data.get("remote") or {}).get("url"))


# A lock of 10,000 artifacts is ~3 MB; 32 MiB leaves room while bounding what a mistaken
# `--lock /dev/zero` or a runaway generator can make `plan` read and parse.
MAX_LOCK_BYTES = 32 << 20


def read_lock_text(path: str | Path) -> str:
    """The lock file's text: a regular file of at most MAX_LOCK_BYTES, UTF-8; else a LockError."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise LockError("lock file not found", where=str(p),
                        fix="run from the folder holding storage.lock.yaml or pass --lock FILE") from None
    except OSError as e:
        raise LockError(f"cannot read the lock file: {e.strerror or e}", where=str(p), fix="check the file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LockError("the lock is not a regular file (a device, FIFO or folder)", where=str(p),
                        fix="pass --lock a storage.lock.yaml file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_LOCK_BYTES:
            raise LockError(f"the lock file is {st.st_size:,} bytes; the limit is {MAX_LOCK_BYTES:,}",
                            where=str(p), fix="split the storage into several locks")
        try:
            data = f.read(MAX_LOCK_BYTES + 1)
        except OSError as e:
            raise LockError(f"cannot read the lock file: {e.strerror or e}", where=str(p),
                            fix="check the file") from None
    if len(data) > MAX_LOCK_BYTES:  # grew while we read it
        raise LockError(f"the lock file is over {MAX_LOCK_BYTES:,} bytes", where=str(p),
                        fix="split the storage into several locks")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LockError(f"cannot read the lock file: not UTF-8 ({e.reason} at byte {e.start})", where=str(p),
                        fix="save the lock as UTF-8") from None


def load_lock(path: str | Path) -> Lock:
    """Read, parse and validate a lock file; a field error names the file and the line."""
    p = Path(path)
    text = read_lock_text(p)
    data = parse_yaml(text, str(p))
    try:
        return lock_from_data(data, str(p))
    except LockError as e:
        if e.where != str(p):  # a field path: name the file, and the line when it can be found
            line = locate_line(text, e.where or "")
            e.where = f"{p}:{line}: {e.where}" if line else f"{p}: {e.where}"
        raise


_PART = re.compile(r'\.?(?:"((?:[^"\\]|\\.)*)"|\[(\d+)\]|([^.\["]+))')


def locate_line(text: str, where: str) -> int | None:
    """The 1-based line of a field path (`artifacts."a/b".build.params.dim`) in lock text, or None."""
    parts: list = []
    for m in _PART.finditer(where):
        quoted, index, plain = m.groups()
        parts.append(json.loads(f'"{quoted}"') if quoted is not None else int(index) if index else plain)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def resolve_root(lock_path: str | Path, lock: Lock, override: str | Path | None) -> Path:
    """The storage root: --root if given, else the lock's `root` relative to the lock file."""
    if override is not None:
        return Path(override)
    return Path(lock_path).resolve().parent / lock.root
