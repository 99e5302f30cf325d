"""The lock reader's fast paths give the answers of the slow ones they stand in for.

* YAML: `parse_yaml` builds plain documents from libyaml's events; it must equal PyYAML's own
  safe loader on libyaml (`CSafeLoader`, what the full strict loader is based on) on every
  document that loads, and refuse (LockError) every one that does not.
* Schema: the fastjsonschema pre-check (`lockfile.compile_schema(s)(x)`) must never call valid
  what `jsonschema` refuses, for the lock schema and every registered params schema (on those it
  agrees exactly); error messages still come from jsonschema.
* Scale: a 10,000-artifact lock loads through these paths (the bench times it; here: it is valid).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import LockError
from reconciler.lockfile import compile_schema, load_lock, load_schema, parse_yaml
from reconciler.registry import CHECKS, TRANSFORMS, load_plugins
from tests.test_lock_fuzz import locks, trees

load_plugins()

keys = st.one_of(st.text(max_size=8), st.integers(-2, 2), st.booleans(), st.none())
yaml_trees = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(keys, kids, max_size=4)), max_leaves=20)


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _same_as_safe_load(text: str) -> None:
    try:
        want = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        with pytest.raises(LockError):
            parse_yaml(text, "t.yaml")
        return
    try:
        got = parse_yaml(text, "t.yaml")
    except LockError as e:
        assert "duplicate key" in e.message or "constructor" in e.message, e.message
        return
    assert repr(got) == repr(want) and got == want or _nan_equal(got, want), (text, got, want)


def _nan_equal(a, b) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_trees, st.booleans(), st.sampled_from([None, "'", '"']))
def test_dumped_documents_parse_as_safe_load_parses_them(data, flow, style):
    try:
        text = yaml.safe_dump(data, default_flow_style=flow, default_style=style)
    except yaml.YAMLError:
        return
    _same_as_safe_load(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="ab1:- \n{}[],'\"&*!<=~.#?|>0xyen", max_size=60))
def test_arbitrary_text_parses_as_safe_load_parses_it(text):
    _same_as_safe_load(text)


@pytest.mark.parametrize("text", [
    "", "a: 1", "- 1\n- {a: [b, {c: d}]}\n", "a: [yes, No, ~, null, 0x1f, 1_000, 017, 1:20, .inf, -.NaN, 1e3, 3.]",
    "a: &x 1\nb: *x", "<<: {a: 1}\nb: 2", "a: 2024-01-01", "a: !!str 1", "a: b\n...\n", "? x\n", "'1': 1\n1: 2",
    "a:\n  b:\n    - c\n    -\n", "x: 'quoted: yes'\ny: \"tab\\t\"\nz: |\n  block\n",
])
def test_yaml_corners_parse_as_safe_load_parses_them(text):
    _same_as_safe_load(text)


def test_yaml_refusals_keep_their_place():
    with pytest.raises(LockError, match="duplicate key 'a' at line 2, column 1"):
        parse_yaml("a: 1\na: 2\n", "t.yaml")
    with pytest.raises(LockError, match="object-constructing YAML tags are refused"):
        parse_yaml("a: !!python/object/apply:os.system [true]\n", "t.yaml")
    with pytest.raises(LockError, match="line 2, column 1: .*document"):
        parse_yaml("a: 1\n---\nb: 2\n", "t.yaml")


# ---- schema ----------------------------------------------------------------------------------------

def _schemas() -> list[dict]:
    return ([load_schema("storage.lock.schema.json")] + [t.params_schema for t in TRANSFORMS.values()]
            + [c.params_schema for c in CHECKS.values()])


def test_every_shipped_schema_compiles():
    assert all(compile_schema(s) is not None for s in _schemas())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(locks, trees))
def test_compiled_schemas_agree_with_jsonschema(data):
    for schema in _schemas():
        assert compile_schema(schema)(data) == jsonschema.Draft202012Validator(schema).is_valid(data), (schema, data)


EDGES = [
    ({"type": "integer"}, [1, 1.0, 1.5, True, "1", None, float("inf")]),
    ({"type": "number", "minimum": 0}, [0, -1, 0.5, True, float("nan"), "x"]),
    ({"type": ["string", "null"], "pattern": "^[0-9a-f]{4}$"}, ["abcd", "abcd\n", "abc", None, 1, "ABCD"]),
    ({"const": 1}, [1, 1.0, True, "1", [1]]),
    ({"enum": [False, [1], {"a": 1}]}, [0, False, [1], [True], {"a": 1.0}, {"a": True}]),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, [1, 1.5, "x"]),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False,
      "required": ["a"], "minProperties": 1, "maxProperties": 1}, [{"a": "x"}, {"a": 1}, {"a": "x", "b": 1}, {}, []]),
    ({"additionalProperties": {"type": "integer"}, "properties": {"s": {"type": "string"}}},
     [{"s": "x", "n": 1}, {"s": "x", "n": "y"}, {"s": 1}, "not an object"]),
    ({"type": "array", "items": {"minLength": 2}, "minItems": 1, "maxItems": 2}, [[], ["ab"], ["a"], ["ab", 1], [1, 2, 3]]),
    ({"exclusiveMinimum": 0, "maximum": 2, "exclusiveMaximum": 3}, [0, 0.1, 2, 2.5, False]),
    ({"$defs": {"t": {"type": "object", "properties": {"kid": {"$ref": "#/$defs/t"}}, "additionalProperties": False}},
      "$ref": "#/$defs/t"}, [{}, {"kid": {"kid": {}}}, {"kid": {"x": 1}}, {"kid": 1}]),
    (True, [1, None]), (False, [1, None]), ({}, [1]),
]


@pytest.mark.parametrize(("schema", "instances"), EDGES)
def test_the_precheck_never_accepts_what_jsonschema_refuses(schema, instances):
    test, validator = compile_schema(schema), jsonschema.Draft202012Validator(schema)
    for x in instances:
        assert validator.is_valid(x) or not test(x), (schema, x)


def test_the_precheck_fills_in_no_defaults():
    """fastjsonschema would write `default`s into the instance: the params must stay as the lock says."""
    params = {}
    assert compile_schema({"properties": {"dtype": {"default": "float16"}}})(params) and params == {}


@pytest.mark.parametrize("schema", [{"$ref": "other.json"}, {"type": "decimal"}])
def test_schemas_it_cannot_compile_are_left_to_jsonschema(schema):
    assert compile_schema(schema) is None


def test_a_lock_of_10000_artifacts_is_valid(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        from bench_lock import lock_text
    finally:
        sys.path.pop(0)
    path = tmp_path / "storage.lock.yaml"
    path.write_text(lock_text(10_000))
    lock = load_lock(path)
    assert len(lock.artifacts) == 10_000
    assert yaml.load(path.read_text(), Loader=SAFE_LOADER) == lock.raw  # noqa: S506 - a safe loader


def test_the_shipped_lock_validator_is_made_from_the_shipped_schema():
    """`reconciler/schemas/lock_validator.py` is what `python -m reconciler.schemas.generate` writes today."""
    import fastjsonschema

    from reconciler.schemas import generate, lock_validator

    shipped = generate.TARGET.read_text(encoding="utf-8")
    if lock_validator.VERSION != fastjsonschema.VERSION:
        pytest.skip(f"made with fastjsonschema {lock_validator.VERSION}, {fastjsonschema.VERSION} installed")
    assert shipped == generate.render(), "stale: run `make schemas` (python -m reconciler.schemas.generate)"


def test_loading_a_lock_compiles_no_schema_at_run_time(tmp_path, monkeypatch):
    """The lock schema's test comes precompiled: fastjsonschema.compile is never called for it, and an
    invalid lock is still refused with jsonschema's message."""
    import fastjsonschema

    from reconciler import lockfile

    real = fastjsonschema.compile

    def refuse(schema, **k):  # params schemas of transforms still compile on first use; the lock's must not
        if "storage.lock" in str(schema.get("$id", "")):
            raise AssertionError("the lock schema was compiled at run time")
        return real(schema, **k)

    monkeypatch.setattr(fastjsonschema, "compile", refuse)
    monkeypatch.setattr(lockfile, "_VALIDATORS", {})
    lockfile._lock_schema.cache_clear()
    try:
        good = tmp_path / "storage.lock.yaml"
        good.write_text('version: 1\nstorage_version: "1"\nartifacts:\n  a.json:\n    build: {transform: write_json, '
                        'params: {data: 1}}\n')
        assert "a.json" in load_lock(good).artifacts
        bad = tmp_path / "bad.lock.yaml"
        bad.write_text('version: 1\nstorage_version: "1"\nbogus: 1\nartifacts: {}\n')
        with pytest.raises(LockError, match="bogus"):
            load_lock(bad)
    finally:
        lockfile._lock_schema.cache_clear()
