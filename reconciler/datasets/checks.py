"""Checks of Alpaca JSONL datasets: row schema, row counts and ids, stats agreement, split leakage.

All of them stream the JSONL (one row in memory at a time); the id sets they keep are hashes
or problem names, small next to the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._lazy import lazy_module
from ..errors import CheckFailed
from ..registry import check
from ..safeschema import check_offline, row_validator
from .alpaca_io import BadRow, iter_rows
from .alpaca_sample import problem_of

np = lazy_module("numpy")
jsonschema = lazy_module("jsonschema")


def _rows(path: Path):
    """iter_rows, with unreadable lines reported as a CheckFailed."""
    try:
        yield from iter_rows(path)
    except BadRow as e:
        raise CheckFailed(str(e)) from None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


PARALLEL_BYTES = 64 << 20  # larger files are validated by a process per CPU (jsonschema: ~0.2 ms a row)


def _row_failure(validator, line: bytes) -> str | None:
    """Why one JSONL line fails the schema ("field f: message", or not JSON), or None."""
    try:
        row = json.loads(line)
    except ValueError as e:
        return f"is not JSON ({e})"
    if validator.is_valid(row):
        return None
    err = jsonschema.exceptions.best_match(validator.iter_errors(row))
    return f"field {'/'.join(str(p) for p in err.absolute_path) or '<row>'}: {_short(err.message)}"


def _validate_range(schema: dict, path: str, start: int, end: int) -> tuple[int, int, str | None]:
    """Validate the lines in bytes [start, end): (lines seen, index of the first bad one or -1, why)."""
    validator = row_validator(schema)  # RE2 patterns, no remote $ref (safeschema.py)
    pos, n = start, 0
    with open(path, "rb") as f:
        f.seek(start)
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            failure = _row_failure(validator, line)
            if failure:
                return n + 1, n, failure
            n += 1
    return n, -1, None


def _line_ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """Byte ranges that cut the file into about `parts` pieces at line starts."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(k * size // parts, cuts[-1]))
            f.readline()
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _validate(schema: dict, path: Path, workers: int) -> tuple[int, str | None]:
    """(rows, "line N: why" of the first bad row) over `workers` processes; ranges combine in order."""
    if workers <= 1:
        seen, bad, why = _validate_range(schema, str(path), 0, path.stat().st_size)
        return seen, (f"line {bad + 1}: {why}" if why else None)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    done = 0
    try:
        # spawn, not fork: the caller may hold threads (and locks) that a forked child would inherit.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_validate_range, schema, str(path), a, b)
                       for a, b in _line_ranges(path, workers * 4)]
            for fut in futures:
                seen, bad, why = fut.result()
                if why:
                    for other in futures:
                        other.cancel()
                    return done + seen, f"line {done + bad + 1}: {why}"
                done += seen
    except (BrokenProcessPool, OSError):
        # Workers could not start (e.g. a __main__ that spawn cannot re-import): same answer, one process.
        return _validate(schema, path, 1)
    return done, None


@check("jsonl_schema", "1", refs=("schema",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["schema"],
                      "properties": {"schema": {"type": "string"}}})
def jsonl_schema(path, params, ctx):
    """Every row validates against the JSON Schema artifact `schema` (draft 2020-12)."""
    try:
        schema = json.loads(ctx.path(params["schema"]).read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        check_offline(schema)  # a remote $ref or a pattern RE2 cannot run: refused before any row
    except (OSError, ValueError, jsonschema.exceptions.SchemaError) as e:
        raise CheckFailed(f"cannot use the schema {params['schema']} ({_short(str(e))})") from None
    path = Path(path)
    workers = (os.cpu_count() or 1) if path.stat().st_size > PARALLEL_BYTES else 1
    rows, failure = _validate(schema, path, workers)
    if failure:
        raise CheckFailed(failure)
    return f"{rows} rows valid against {params['schema']}"


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
