"""Checks of Alpaca JSONL datasets: row schema, row counts and ids, stats agreement, split leakage.

All of them stream the JSONL (one row in memory at a time); the id sets they keep are hashes
or problem names, small next to the data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from ..errors import CheckFailed
from ..registry import check
from ..transforms.alpaca_io import BadRow, iter_rows
from ..transforms.alpaca_sample import problem_of


def _rows(path: Path):
    """iter_rows, with unreadable lines reported as a CheckFailed."""
    try:
        yield from iter_rows(path)
    except BadRow as e:
        raise CheckFailed(str(e)) from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@check("jsonl_schema", "1", refs=("schema",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["schema"],
                      "properties": {"schema": {"type": "string"}}})
def jsonl_schema(path, params, ctx):
    """Every row validates against the JSON Schema artifact `schema` (draft 2020-12)."""
    try:
        schema = json.loads(ctx.path(params["schema"]).read_text(encoding="utf-8"))
        validator = Draft202012Validator(schema)
    except (OSError, ValueError) as e:
        raise CheckFailed(f"cannot read the schema {params['schema']} ({e})") from None
    n = 0
    for n, row in _rows(Path(path)):
        if not validator.is_valid(row):
            err = best_match(validator.iter_errors(row))
            field = "/".join(str(p) for p in err.absolute_path) or "<row>"
            raise CheckFailed(f"line {n}: field {field}: {_short(err.message)}")
    return f"{n} rows valid against {params['schema']}"


def _check_ids(path: Path, hashes: np.ndarray) -> None:
    """Name a duplicated task_id: hashes found a collision; a second pass confirms it exactly."""
    s = np.sort(hashes)
    suspects = set(s[1:][s[1:] == s[:-1]].tolist())
    first_line: dict[str, int] = {}
    for n, row in _rows(path):
        tid = str(row.get("task_id"))
        if hash(tid) in suspects:
            if tid in first_line:
                raise CheckFailed(f"line {n}: task_id {tid!r} repeats line {first_line[tid]}")
            first_line[tid] = n


@check("rows", "1",
       params_schema={"type": "object", "additionalProperties": False,
                      "properties": {"count": {"type": "integer", "minimum": 0},
                                     "unique_task_ids": {"type": "boolean"},
                                     "is_correct": {"type": "boolean"}}})
def rows(path, params, ctx):
    """Row count is `count`; task_ids are unique (default); `is_correct` is a bool on every row
    (is_correct: true) or on none (is_correct: false)."""
    want_flag = params.get("is_correct")
    hashes: list[int] = []
    n = 0
    for n, row in _rows(Path(path)):
        if want_flag is True and not isinstance(row.get("is_correct"), bool):
            raise CheckFailed(f"line {n}: field is_correct: missing or not a boolean ({row.get('is_correct')!r})")
        if want_flag is False and "is_correct" in row:
            raise CheckFailed(f"line {n}: field is_correct: present, but this dataset declares none")
        if "task_id" not in row:
            raise CheckFailed(f"line {n}: field task_id: missing")
        hashes.append(hash(str(row["task_id"])))
    if "count" in params and n != params["count"]:
        raise CheckFailed(f"{n} rows, expected {params['count']}")
    if params.get("unique_task_ids", True):
        arr = np.array(hashes, dtype=np.int64)
        if np.unique(arr).size != arr.size:
            _check_ids(Path(path), arr)
    return f"{n} rows"


def _split_counts(path: Path) -> dict:
    counts = {"rows": 0, "correct": 0, "incorrect": 0}
    for _, row in _rows(path):
        counts["rows"] += 1
        flag = row.get("is_correct")
        counts["correct"] += flag is True
        counts["incorrect"] += flag is False
    return counts


@check("stats_consistent", "1", refs=("data",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["data"],
                      "properties": {"data": {"type": "array", "items": {"type": "string"}, "minItems": 1}}})
def stats_consistent(path, params, ctx):
    """summary.json agrees with the JSONL splits it describes (rows, correct, incorrect)."""
    try:
        splits = json.loads(Path(path).read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckFailed(f"cannot read the summary's `splits` ({e})") from None
    for artifact in params["data"]:
        name = Path(artifact).stem
        if name not in splits:
            raise CheckFailed(f"split {name!r} ({artifact}) is missing from the summary")
        actual = _split_counts(ctx.path(artifact))
        for key, value in actual.items():
            claimed = splits[name].get(key, 0)
            if claimed != value:
                raise CheckFailed(f"split {name!r}: summary says {key} = {claimed}, {artifact} has {value}")
    return f"{len(params['data'])} splits agree"


def _problems(path: Path, key: str) -> set[str]:
    return {_problem(row, key) for _, row in _rows(path)}


def _problem(row: dict, key: str) -> str:
    tid = str(row.get("task_id", ""))
    return problem_of(tid) if key == "name" else tid


@check("disjoint", "1", refs=("splits", "subset_of"),
       params_schema={"type": "object", "additionalProperties": False, "required": ["splits", "key"],
                      "properties": {"splits": {"type": "array", "items": {"type": "string"}},
                                     "key": {"enum": ["task_id", "name"]},
                                     "subset_of": {"type": "string"}}})
def disjoint(path, params, ctx):
    """No problem is in two splits. key `task_id`: the problem is the task_id; key `name`: the task_id
    without its `_correct_k`/`_incorrect_k` suffix (CodeContests). With `subset_of`, the artifact is a
    small subset: each row must be a row of `subset_of` and its problem in none of `splits`."""
    key = params["key"]
    if "subset_of" in params:
        return _subset(Path(path), params, ctx)
    names = [ctx.artifact] + [s for s in params["splits"] if s != ctx.artifact]
    seen: dict[str, str] = {}
    for artifact in names:
        for problem in sorted(_problems(ctx.path(artifact) if artifact != ctx.artifact else Path(path), key)):
            if problem in seen:
                raise CheckFailed(f"problem {problem!r} appears in both {seen[problem]} and {artifact}")
            seen[problem] = artifact
    return f"{len(names)} splits, {len(seen)} problems, disjoint"


def _subset(path: Path, params, ctx) -> str:
    """The small-subset form of `disjoint`."""
    key, parent = params["key"], params["subset_of"]
    ids = {str(row.get("task_id", "")) for _, row in _rows(path)}
    missing = set(ids)
    for _, row in _rows(ctx.path(parent)):
        missing.discard(str(row.get("task_id", "")))
    if missing:
        raise CheckFailed(f"task_id {sorted(missing)[0]!r} is not a row of {parent} ({len(missing)} such rows)")
    mine = {problem_of(t) if key == "name" else t for t in ids}
    for other in params["splits"]:
        if other == parent:
            continue
        for _, row in _rows(ctx.path(other)):
            problem = _problem(row, key)
            if problem in mine:
                raise CheckFailed(f"problem {problem!r} appears in both {ctx.artifact} (subset of {parent}) and {other}")
    return f"{len(ids)} rows drawn from {parent} only"
