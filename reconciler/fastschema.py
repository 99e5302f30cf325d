"""A compiled yes/no JSON Schema test for the keyword subset the lock and plug-in schemas use.

Why: `jsonschema` walks the schema for every instance through generic keyword dispatch, so a
10,000-artifact lock spent seconds only to be found valid. `compile_schema` turns a schema,
once, into nested closures that answer just "valid or not". The callers keep `jsonschema`
for the answer "not": it alone computes the error (best_match, field path), so every message
is unchanged. A schema using any keyword outside the subset compiles to None, and its callers
use `jsonschema` for every instance: the fast test never guesses at a keyword it does not know.

Semantics follow Draft 2020-12 as `jsonschema` implements it: booleans are neither integers
nor numbers, 1.0 is an integer, `pattern` is `re.search`, `const` / `enum` compare JSON values
(so `true` never equals `1`), `items` applies to every element (no `prefixItems` here).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Test = Callable[[Any], bool]

ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
TYPES: dict[str, Test] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}

# Classes that are certainly of a JSON type (`type(True)` is bool, so bool never passes as an integer);
# any other class (a float holding an integer, a subclass) goes through TYPES.
EXACT = {"object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
         "number": (int, float), "integer": (int,)}


class Unsupported(Exception):
    """A keyword (or keyword value) outside the compiled subset."""


def compile_schema(schema: Any) -> Test | None:
    """A function `instance -> bool` equal to `Draft202012Validator(schema).is_valid`, or None
    when the schema uses something this module does not compile (then use jsonschema)."""
    try:
        return _Compiler(schema).compile(schema)
    except Unsupported:
        return None


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: `true` != `1`, `1` == `1.0`, containers compared element-wise."""
    if a is b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return a == b


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _true(v: Any) -> bool:
    return True


def _all(tests: list[Test]) -> Test:
    """The conjunction of tests, as one call (explicit loops: a generator per call cost 2x here)."""
    if not tests:
        return _true
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        a, b = tests
        return lambda v: a(v) and b(v)

    def test(v: Any) -> bool:
        for t in tests:
            if not t(v):
                return False
        return True
    return test


class _Compiler:
    """Compiles one root schema; `$ref`s to `#/$defs/NAME` are compiled once each (recursion allowed)."""

    def __init__(self, root: Any):
        self.root = root
        self.refs: dict[str, Test] = {}
        self.pending: dict[str, list] = {}  # refs being compiled: a recursive $ref calls through the box

    def compile(self, schema: Any) -> Test:
        """The test of one (sub)schema: the conjunction of its keywords' tests."""
        if schema is True or schema == {}:
            return _true
        if schema is False:
            return lambda v: False
        if not isinstance(schema, dict):
            raise Unsupported(repr(schema))
        unknown = set(schema) - ANNOTATIONS - set(_KEYWORDS) - {"properties", "additionalProperties"}
        if unknown:
            raise Unsupported(", ".join(sorted(unknown)))
        tests = [_KEYWORDS[k](self, schema[k], schema) for k in schema if k in _KEYWORDS]
        if "properties" in schema or "additionalProperties" in schema:
            tests.append(self.members(schema))
        return _all([t for t in tests if t is not None])

    def members(self, schema: dict) -> Test:
        """`properties` and `additionalProperties` as one pass over the instance's keys."""
        if "patternProperties" in schema:
            raise Unsupported("patternProperties")
        props = {k: self.compile(sub) for k, sub in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties", True)
        other = None if extra is False else self.compile(extra)

        def test(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for k, x in v.items():
                t = props.get(k, other)
                if t is None or not t(x):  # None: a key that additionalProperties: false refuses
                    return False
            return True
        return test

    def ref(self, target: Any) -> Test:
        """The test of `#/$defs/NAME`; the only reference form the lock and plug-in schemas use."""
        if not isinstance(target, str) or not target.startswith("#/$defs/") or "/" in target[8:] or "~" in target:
            raise Unsupported(f"$ref {target!r}")
        if target in self.refs:
            return self.refs[target]
        if target in self.pending:
            box = self.pending[target]
            return lambda v: box[0](v)
        try:
            sub = self.root["$defs"][target[8:]]
        except (KeyError, TypeError):
            raise Unsupported(f"$ref {target!r}") from None
        self.pending[target] = box = [None]
        box[0] = self.refs[target] = self.compile(sub)
        del self.pending[target]
        return box[0]


def _type(c: _Compiler, value: Any, _s: dict) -> Test:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(n not in TYPES for n in names):
        raise Unsupported(f"type {value!r}")
    tests = [TYPES[n] for n in names]
    full = tests[0] if len(tests) == 1 else (lambda v: any(t(v) for t in tests))
    exact = frozenset(cls for n in names for cls in EXACT[n])
    return lambda v: type(v) in exact or full(v)  # the exact-class lookup settles nearly every instance


def _required(c: _Compiler, value: Any, _s: dict) -> Test:
    names = frozenset(value)
    return lambda v: not isinstance(v, dict) or names <= v.keys()


def _items(c: _Compiler, value: Any, _s: dict) -> Test:
    test = c.compile(value)
    return lambda v: not isinstance(v, list) or all(test(x) for x in v)


def _one_of(c: _Compiler, value: Any, _s: dict) -> Test:
    tests = [c.compile(sub) for sub in value]

    def test(v: Any) -> bool:
        found = False
        for t in tests:
            if t(v):
                if found:
                    return False  # valid under two: oneOf fails
                found = True
        return found
    return test


def _enum(c: _Compiler, value: Any, _s: dict) -> Test:
    options = list(value)
    return lambda v: any(json_equal(v, o) for o in options)


def _pattern(c: _Compiler, value: Any, _s: dict) -> Test:
    rx = re.compile(value)
    return lambda v: not isinstance(v, str) or rx.search(v) is not None


def _bound(kind: type, measure: Callable[[Any], Any] | None, fails: Callable[[Any, Any], bool]):
    """A keyword that fails when `fails(measure(instance), limit)`, on instances of `kind` only.

    Written as jsonschema's failure test (not its negation), so NaN passes `minimum` as there.
    """
    def keyword(c: _Compiler, limit: Any, _s: dict) -> Test:
        if not _number(limit):
            raise Unsupported(f"limit {limit!r}")
        if measure is None:  # numbers: int or float, never bool
            return lambda v: not _number(v) or not fails(v, limit)
        return lambda v: not isinstance(v, kind) or not fails(measure(v), limit)
    return keyword


_KEYWORDS: dict[str, Callable[[_Compiler, Any, dict], Test | None]] = {
    "type": _type,
    "const": lambda c, value, _s: (lambda v: json_equal(v, value)),
    "enum": _enum,
    "required": _required,
    "items": _items,
    "oneOf": _one_of,
    "pattern": _pattern,
    "$ref": lambda c, value, _s: c.ref(value),
    "$defs": lambda c, value, _s: None,  # compiled when a $ref reaches them
    "minLength": _bound(str, len, lambda n, lim: n < lim),
    "maxLength": _bound(str, len, lambda n, lim: n > lim),
    "minItems": _bound(list, len, lambda n, lim: n < lim),
    "maxItems": _bound(list, len, lambda n, lim: n > lim),
    "minProperties": _bound(dict, len, lambda n, lim: n < lim),
    "maxProperties": _bound(dict, len, lambda n, lim: n > lim),
    "minimum": _bound(float, None, lambda n, lim: n < lim),
    "maximum": _bound(float, None, lambda n, lim: n > lim),
    "exclusiveMinimum": _bound(float, None, lambda n, lim: n <= lim),
    "exclusiveMaximum": _bound(float, None, lambda n, lim: n >= lim),
}
