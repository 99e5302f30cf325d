"""JSON Schema validation of untrusted schemas (the `jsonl_schema` check): offline and linear-time.

Two things a schema file could otherwise do to `check`, the pre-training gate:

* **reach the network**: jsonschema resolves a `$ref` to an absolute URL by fetching it (and the
  verdict would then be cached as if the storage alone decided it). Here only references inside
  the schema itself (`#...`) are accepted; any other is refused before a row is read, and the
  registry the validator gets retrieves nothing.
* **hang**: `pattern` / `patternProperties` use Python's backtracking `re`, where `^(a+)+$` on a
  30-character row takes minutes. Here they use RE2 (`google-re2`), whose matching time is linear
  in the input whatever the pattern. Why RE2 and not a time limit per check: a time limit turns
  a slow-but-valid check into a flaky one on a loaded machine, and needs a killable worker
  process per check; RE2 refuses only the rare pattern it cannot run (backreferences,
  lookaround), with a message naming it, and answers every other in linear time.
"""

from __future__ import annotations

from functools import cache
from typing import Any

# jsonschema, referencing and re2 are imported where used: plug-in discovery (every command's
# start-up) imports this module, and only a `jsonl_schema` check needs them.


class SchemaRefused(ValueError):
    """The schema asks for something a check must not do (a remote `$ref`, a pattern RE2 cannot run)."""


@cache
def _compiled(pattern: str):
    import re2  # here, not at import: plug-in discovery must not need it
    try:
        return re2.compile(pattern)
    except re2.error as e:
        raise SchemaRefused(f"pattern {pattern!r} is not supported by the linear-time engine RE2 ({e})") from None


def _pattern(validator, pattern, instance, schema):
    from jsonschema.exceptions import ValidationError
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in pattern_properties.items():
        rx = _compiled(pattern)
        for k, v in instance.items():
            if rx.search(k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _no_retrieval(uri: str):
    from referencing.exceptions import NoSuchResource
    raise NoSuchResource(ref=uri)  # never fetched: a check reads only the storage


@cache
def _re2_validator_class():
    from jsonschema import Draft202012Validator, validators
    return validators.extend(Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties})


def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def check_offline(schema: Any) -> None:
    """SchemaRefused unless every `$ref` / `$dynamicRef` points inside the schema and every pattern runs on RE2."""
    for node in _walk(schema):
        for key in ("$ref", "$dynamicRef"):
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                raise SchemaRefused(f"{key} {ref!r} points outside the schema; a check never fetches anything "
                                    "(only `#...` references inside the schema are resolved)")
        if isinstance(node.get("pattern"), str):
            _compiled(node["pattern"])
        if isinstance(node.get("patternProperties"), dict):
            for p in node["patternProperties"]:
                _compiled(p)


def row_validator(schema: dict):
    """A draft 2020-12 validator with RE2 patterns and a registry that retrieves nothing."""
    from referencing import Registry
    return _re2_validator_class()(schema, registry=Registry(retrieve=_no_retrieval))
