"""Deterministic miniature upstream dataset files in the exact hub parquet schemas.

Used by tests, `make demo` and `make bench` (see ../shared/FORMATS.md §3). Struct columns are
column-wise exactly as on the hub (`public_tests: struct{input: list<str>, output: list<str>}`),
so the transforms meet the same layout as the real shards. The CodeContests writer emits one
row group at a time through `pq.ParquetWriter`, so a benchmark-sized split never sits in memory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_TESTS = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
_SOLUTIONS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])

CODECONTESTS_SCHEMA = pa.schema([
    ("name", pa.string()), ("description", pa.string()),
    ("public_tests", _TESTS), ("private_tests", _TESTS), ("generated_tests", _TESTS),
    ("source", pa.int64()), ("difficulty", pa.int64()),
    ("solutions", _SOLUTIONS), ("incorrect_solutions", _SOLUTIONS),
    ("cf_contest_id", pa.int64()), ("cf_index", pa.string()), ("cf_points", pa.float32()),
    ("cf_rating", pa.int64()), ("cf_tags", pa.list_(pa.string())),
    ("is_description_translated", pa.bool_()), ("untranslated_description", pa.string()),
    ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
    ("memory_limit_bytes", pa.int64()), ("input_file", pa.string()), ("output_file", pa.string()),
])
MBPP_SCHEMA = pa.schema([
    ("task_id", pa.int32()), ("text", pa.string()), ("code", pa.string()),
    ("test_list", pa.list_(pa.string())), ("test_setup_code", pa.string()),
    ("challenge_test_list", pa.list_(pa.string())),
])
HUMANEVAL_SCHEMA = pa.schema([(c, pa.string()) for c in
                              ("task_id", "prompt", "canonical_solution", "test", "entry_point")])

# Real MBPP `full` split sizes and task-id ranges (train 601-974, validation 511-600, ...).
MBPP_SPLITS = {"train": (601, 374), "validation": (511, 90), "test": (11, 500), "prompt": (1, 10)}
# CodeContests language enum: 0 unknown, 1 PYTHON (2), 2 CPP, 3 PYTHON3, 4 JAVA. Weights make
# Python a minority of entries, as upstream, so the language filter has real work to do.
_LANGS = (3, 3, 3, 1, 2, 2, 2, 4, 0)

_WORDS = ("array integer string query graph tree vertex edge sum maximum minimum number "
          "sequence subarray prefix modulo permutation interval segment Petya Vasya "
          "robot grid cell path cost operation distinct pair element coin game").split()
_CODE = (
    "n = int(input())", "a = list(map(int, input().split()))", "s = input().strip()",
    "ans = 0", "for i in range(n):", "    ans += a[i] * {k}", "    if a[i] % {k} == 0:",
    "        ans -= {k}", "print(ans)", "res = sorted(a, reverse=True)[:{k}]",
    "import sys", "input = sys.stdin.readline", "d = {{}}", "while n > {k}:", "    n //= 2",
    "print(' '.join(map(str, res)))", "def solve(x):", "    return x * {k} + 1",
)
_UNICODE = ("≤", "é", "—", "×", "∑", "日本")


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words)).capitalize() + "."


def _description(rng: random.Random, i: int) -> str:
    parts = [_sentence(rng, rng.randint(6, 18)) for _ in range(rng.randint(3, 10))]
    # Real statements carry non-ASCII maths (≤, ×): the JSON writer must keep them verbatim.
    parts.append(f"Constraints: 1 {rng.choice(_UNICODE)} n {rng.choice(_UNICODE)} 10^5 (problem {i}).")
    return "\n\n".join(parts)


def _code(rng: random.Random, lang: int) -> str:
    lines = [rng.choice(_CODE).format(k=rng.randint(1, 999)) for _ in range(rng.randint(4, 30))]
    if lang == 1:
        lines.append("print ans")  # Python 2 syntax, as in real PYTHON (language 1) entries
    elif lang in (2, 4):
        lines = ["#include <bits/stdc++.h>" if lang == 2 else "import java.util.*;"] + lines
    if rng.random() < 0.005:
        lines = lines * 25  # the odd huge solution, so the 2048-token filter drops something
    return "\n".join(lines) + "\n"


def _tests(rng: random.Random, n: int, allow_empty: bool) -> dict:
    ins, outs = [], []
    for _ in range(n):
        ins.append(f"{rng.randint(1, 100)}\n" + " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(1, 8))) + "\n")
        outs.append("" if allow_empty and rng.random() < 0.2 else f"{rng.randint(0, 10**6)}\n")
    return {"input": ins, "output": outs}


def _solutions(rng: random.Random, n: int) -> dict:
    langs = [rng.choice(_LANGS) for _ in range(n)]
    return {"language": langs, "solution": [_code(rng, lang) for lang in langs]}


def codecontests_row(rng: random.Random, i: int, solutions_per_problem: int, seed: int = 0) -> dict:
    """One synthetic CodeContests problem row (a dict of every hub column)."""
    n_public = rng.choice((0, 1, 1, 2, 3))
    cf = rng.random() < 0.7
    return {
        "name": f"{1000 + i}_{chr(65 + i % 6)}. Synthetic problem {i} (seed {seed})",  # unique across seeds
        "description": _description(rng, i),
        "public_tests": _tests(rng, n_public, allow_empty=True),
        "private_tests": _tests(rng, rng.randint(0, 3), allow_empty=False),
        "generated_tests": _tests(rng, rng.randint(0, 4), allow_empty=False),
        "source": rng.randint(0, 6), "difficulty": rng.randint(0, 12),
        "solutions": _solutions(rng, solutions_per_problem),
        "incorrect_solutions": _solutions(rng, solutions_per_problem // 2),
        "cf_contest_id": 1000 + i if cf else 0, "cf_index": chr(65 + i % 6) if cf else "",
        "cf_points": float(rng.choice((0, 500, 1000, 1500))), "cf_rating": rng.choice((0, 800, 1600, 2400)),
        "cf_tags": rng.sample(["greedy", "math", "dp", "graphs", "strings", "implementation"], rng.randint(0, 3)),
        "is_description_translated": False, "untranslated_description": "",
        # Some real rows have no time limit at all: a null struct, not a zero one.
        "time_limit": None if i % 4 == 3 else {"seconds": rng.randint(1, 5), "nanos": 0},
        "memory_limit_bytes": 256 * 1024 * 1024, "input_file": "", "output_file": "",
    }


def make_codecontests_parquet(path: str | Path, n_problems: int, solutions_per_problem: int = 8,
                              seed: int = 0, row_group_size: int = 64) -> Path:
    """Write a synthetic CodeContests split (hub schema) row group by row group; returns `path`.

    Each problem has `solutions_per_problem` correct and half as many incorrect entries in a mix
    of languages (Python 2, Python 3, C++, Java, unknown). Deterministic for a given seed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with pq.ParquetWriter(path, CODECONTESTS_SCHEMA) as writer:
        for start in range(0, n_problems, row_group_size):
            rows = [codecontests_row(rng, i, solutions_per_problem, seed)
                    for i in range(start, min(start + row_group_size, n_problems))]
            writer.write_table(pa.Table.from_pylist(rows, schema=CODECONTESTS_SCHEMA))
    return path


def write_codecontests_rows(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write hand-made CodeContests rows; missing columns get neutral values (hub schema kept)."""
    full = [{**_neutral_codecontests_row(), **row} for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(full, schema=CODECONTESTS_SCHEMA), path)
    return path


def _neutral_codecontests_row() -> dict:
    empty_tests = {"input": [], "output": []}
    return {"name": "0_A. x", "description": "", "public_tests": empty_tests, "private_tests": empty_tests,
            "generated_tests": empty_tests, "source": 0, "difficulty": 0,
            "solutions": {"language": [], "solution": []}, "incorrect_solutions": {"language": [], "solution": []},
            "cf_contest_id": 0, "cf_index": "", "cf_points": 0.0, "cf_rating": 0, "cf_tags": [],
            "is_description_translated": False, "untranslated_description": "", "time_limit": None,
            "memory_limit_bytes": 0, "input_file": "", "output_file": ""}


def _mbpp_synthetic(split: str, n: int, seed: int) -> Iterator[dict]:
    first, _ = MBPP_SPLITS[split]
    rng = random.Random(f"mbpp-{split}-{seed}")
    for i in range(n):
        name = f"func_{first + i}"
        body = "\r\n".join([f"def {name}(a, b): ", f"\tres = a * {rng.randint(1, 9)} + b ", "\treturn res"])
        yield {"task_id": first + i, "text": f"Write a function to {_sentence(rng, rng.randint(5, 12)).lower()}",
               # Real MBPP code mixes \r\n and \n line endings: the transform must normalise them.
               "code": body if i % 3 else body.replace("\r\n", "\n"),
               "test_list": [f"assert {name}({k}, 1) == {k}" for k in range(3)],
               "test_setup_code": "import math" if i % 7 == 0 else "",
               "challenge_test_list": []}


def make_mbpp_parquet(path: str | Path, split: str, rows: int | Sequence[Mapping[str, Any]] | None = None,
                      seed: int = 0) -> Path:
    """Write an MBPP `full` split parquet (hub schema); returns `path`.

    `rows`: None for the real split size of synthetic rows, an int for that many synthetic rows,
    or a sequence of row dicts (e.g. `load_mbpp_json(...)` of the real rows) written as given.
    """
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; expected one of {sorted(MBPP_SPLITS)}")
    if rows is None or isinstance(rows, int):
        n = MBPP_SPLITS[split][1] if rows is None else rows
        data = list(_mbpp_synthetic(split, n, seed))
    else:
        data = [dict(r) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(data, schema=MBPP_SCHEMA), path)
    return path


def load_mbpp_json(path: str | Path) -> list[dict]:
    """The rows of a real MBPP split as stored in ../shared/upstream/mbpp-full/<split>.json."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def make_humaneval_parquet(path: str | Path, n: int = 164, seed: int = 0) -> Path:
    """Write a synthetic HumanEval test split (`HumanEval/0`..`HumanEval/{n-1}`); returns `path`."""
    rng = random.Random(f"humaneval-{seed}")
    rows = []
    for i in range(n):
        fn = f"candidate_{i}"
        rows.append({
            "task_id": f"HumanEval/{i}",
            "prompt": f"from typing import List\n\n\ndef {fn}(xs: List[int]) -> int:\n"
                      f"    \"\"\" {_sentence(rng, rng.randint(5, 15))}\n    >>> {fn}([1, 2])\n    3\n    \"\"\"\n",
            "canonical_solution": f"    return sum(xs) * {rng.randint(1, 5)}\n",
            "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n",
            "entry_point": fn,
        })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=HUMANEVAL_SCHEMA), path)
    return path
