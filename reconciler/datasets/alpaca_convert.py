"""Upstream parquet rows -> Alpaca JSONL lines, per dataset (CodeContests, MBPP, HumanEval).

Line format (one JSON object per line, UTF-8, compact separators, non-ASCII kept): keys in the
fixed order `instruction, input, output, task_id, [is_correct,] metadata`; `metadata` keys are
sorted. Lines are assembled from pre-encoded JSON fragments because a CodeContests problem's
description (often kilobytes) is repeated on every one of its hundreds of solution rows: it is
JSON-encoded and tokenized once per problem, not once per row.

Token filter: a row is kept when tokens(instruction) + tokens(input) + tokens(output) <=
max_tokens, each text encoded separately by the SentencePiece model with no BOS/EOS.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .alpaca_io import Batch, TokenCounter, iter_batches, list_parents, struct_lists

_str = json.encoder.encode_basestring  # the C encoder json uses with ensure_ascii=False
_META = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)

# deepmind/code_contests `source` enum (contest_problem.proto); other values keep their number.
CC_SOURCES = {0: "unknown", 1: "codechef", 2: "codeforces", 3: "hackerearth", 4: "codejam",
              5: "atcoder", 6: "aizu"}
# The v1 scripts' metadata (the baseline earlier results were computed on): the dataset name as
# `source`, the raw difficulty enum with -1 when absent. The contest site goes to `contest_site`.
V1_SOURCE = "code_contests"
V1_NO_DIFFICULTY = -1
CC_LANGUAGES = {1: "python2", 3: "python3"}  # PYTHON is Python 2; PYTHON3 is Python 3
CC_PUBLIC_TESTS = 2  # at most this many example blocks in `input`
PREFETCH = 1  # batches tokenized ahead of the one being written: overlap with bounded memory

_TESTS = ("struct", {"input": ("list", "str"), "output": ("list", "str")})
_SOLS = ("struct", {"language": ("list", "int"), "solution": ("list", "str")})
COLUMNS = {
    "codecontests": {"name": "str", "description": "str", "public_tests": _TESTS, "source": "int",
                     "difficulty": "int", "solutions": _SOLS, "incorrect_solutions": _SOLS},
    "mbpp": {"task_id": "int", "text": "str", "code": "str", "test_list": ("list", "str"),
             "test_setup_code": "str"},
    "humaneval": {"task_id": "str", "prompt": "str", "canonical_solution": "str", "test": "str",
                  "entry_point": "str"},
}


@dataclass
class Tally:
    """Rows written and rows dropped by reason: what the engine records as provenance."""

    written: int = 0
    dropped: dict = field(default_factory=lambda: {"too_long": 0, "wrong_language": 0, "empty": 0})

    def as_info(self) -> dict:
        """The JSON-able provenance dict."""
        return {"rows_written": self.written, "rows_dropped": dict(self.dropped)}


def source_name(source: int | None) -> str:
    """CodeContests `source` int -> its enum name (lower case), `source_<n>` when unknown."""
    return CC_SOURCES.get(source or 0, f"source_{source}")


def examples_block(inputs: Sequence[str], outputs: Sequence[str]) -> str:
    """The `input` text of a CodeContests row from its public tests.

    The first <= 2 tests whose input and output are both non-blank, each as
    `Input:\\n{input}\\nOutput:\\n{output}` with trailing newlines of both removed, joined by one
    blank line. "" when no test qualifies.
    """
    blocks = []
    for i, o in zip(inputs, outputs):
        if i.strip() and o.strip():
            blocks.append(f"Input:\n{i.rstrip(chr(13) + chr(10))}\nOutput:\n{o.rstrip(chr(13) + chr(10))}")
            if len(blocks) == CC_PUBLIC_TESTS:
                break
    return "\n\n".join(blocks)


@dataclass
class Prepared:
    """One record batch, extracted and tokenized, ready to filter and format.

    `entries[i]` lists problem i's candidate rows as (output, task_id JSON, JSON tail after
    task_id, output tokens); `head_tokens[i]` = tokens(instruction) + tokens(input).
    """

    instructions: list[str]
    inputs: list[str]
    head_tokens: list[int]
    entries: list[list[tuple[str, str, str, int]]]
    wrong_language: int = 0


class Converter:
    """Streams one dataset's shards into Alpaca lines, applying the language/empty/token filters.

    Two stages overlap: a worker thread extracts and tokenizes batch i+1 while this thread filters,
    formats and writes batch i, so Python work runs while SentencePiece's C++ threads encode.
    Batches are consumed in submission order, so the bytes do not depend on thread timing.
    """

    def __init__(self, dataset: str, counter: TokenCounter, max_tokens: int):
        self.dataset = dataset
        self.counter = counter
        self.max_tokens = max_tokens
        self.tally = Tally()

    def run(self, files, write: Callable[[bytes], object]) -> Tally:
        """Convert every batch of `files` in order, passing each batch's UTF-8 lines to `write`."""
        prepare = {"codecontests": self._codecontests, "mbpp": self._mbpp, "humaneval": self._humaneval}[self.dataset]
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alpaca-tokenize") as pool:
            try:
                for batch in iter_batches(files, COLUMNS[self.dataset]):
                    pending.append(pool.submit(prepare, batch))
                    if len(pending) > PREFETCH:
                        self._emit(pending.popleft().result(), write)
                while pending:
                    self._emit(pending.popleft().result(), write)
            finally:
                for f in pending:
                    f.cancel()
        return self.tally

    def _emit(self, p: Prepared, write: Callable[[bytes], object]) -> None:
        """Filter (empty, then too long) and write one prepared batch's rows."""
        dropped, limit, lines = self.tally.dropped, self.max_tokens, []
        dropped["wrong_language"] += p.wrong_language
        for i, entries in enumerate(p.entries):
            blank = not p.instructions[i] or p.instructions[i].isspace()
            head, prefix = p.head_tokens[i], None
            for out, task_id, tail, tokens in entries:
                if blank or not out or out.isspace():  # isspace: no copy of a long text
                    dropped["empty"] += 1
                elif head + tokens > limit:
                    dropped["too_long"] += 1
                else:
                    if prefix is None:  # JSON-encode the (long) description once per problem
                        prefix = f'{{"instruction":{_str(p.instructions[i])},"input":{_str(p.inputs[i])},"output":'
                    lines.append(f"{prefix}{_str(out)},\"task_id\":{task_id}{tail}")
        self.tally.written += len(lines)
        if lines:
            write("".join(lines).encode("utf-8"))

    def _simple(self, instructions, outputs, task_ids, metas) -> Prepared:
        """One row per problem with an empty `input` (MBPP, HumanEval)."""
        counts = self.counter.counts([*instructions, *outputs])
        n = len(instructions)
        entries = [[(outputs[i], _str(task_ids[i]), f',"metadata":{_META.encode(metas[i])}}}\n', counts[n + i])]
                   for i in range(n)]
        return Prepared(instructions, [""] * n, counts[:n], entries)

    def _mbpp(self, b: Batch) -> Prepared:
        ids = b.required(b.col("task_id").to_pylist(), "task_id")
        texts = [t or "" for t in b.strings(b.col("text"), "text")]
        codes = [(c or "").replace("\r\n", "\n") for c in b.strings(b.col("code"), "code")]
        tests = b.str_lists(b.col("test_list"), "test_list")
        setup = [s or "" for s in b.strings(b.col("test_setup_code"), "test_setup_code")]
        metas = [{"source": "mbpp", "difficulty": None, "has_tests": bool(t), "test_list": t,
                  "test_setup_code": s} for t, s in zip(tests, setup)]
        return self._simple(texts, codes, [str(i) for i in ids], metas)

    def _humaneval(self, b: Batch) -> Prepared:
        ids = b.required(b.strings(b.col("task_id"), "task_id"), "task_id")
        prompts = [p or "" for p in b.strings(b.col("prompt"), "prompt")]
        sols = [s or "" for s in b.strings(b.col("canonical_solution"), "canonical_solution")]
        tests = [t or "" for t in b.strings(b.col("test"), "test")]
        entry = [e or "" for e in b.strings(b.col("entry_point"), "entry_point")]
        metas = [{"source": "humaneval", "difficulty": None, "has_tests": bool(t.strip()), "test": t,
                  "entry_point": e} for t, e in zip(tests, entry)]
        return self._simple(prompts, sols, ids, metas)

    def _python_solutions(self, b: Batch, column: str) -> tuple[list[int], list[int], list[str], int, list[int]]:
        """(rows, languages, texts, non-Python count, index in the row's full list) of the Python 2/3 entries."""
        langs_l, sols_l = struct_lists(b.col(column), ("language", "solution"), b.path, column)
        langs = pc.fill_null(langs_l.flatten(), 0)
        mask = pc.is_in(langs, value_set=pa.array(sorted(CC_LANGUAGES), langs.type)).to_numpy(zero_copy_only=False)
        parents = list_parents(langs_l)
        # Position of each value inside its own row's list (all languages): the v1 scripts' k.
        starts = np.concatenate(([0], np.cumsum(np.bincount(parents, minlength=len(langs_l)))[:-1]))
        positions = (np.arange(len(parents)) - starts[parents])[mask].tolist()
        rows = parents[mask].tolist()
        texts = b.strings(sols_l.flatten().filter(pa.array(mask)), f"{column}.solution", row_of=lambda i: rows[i])
        return rows, langs.filter(pa.array(mask)).to_pylist(), texts, len(langs) - len(rows), positions

    def _codecontests(self, b: Batch) -> Prepared:
        names = b.required(b.strings(b.col("name"), "name"), "name")
        descs = [d or "" for d in b.strings(b.col("description"), "description")]
        tests = struct_lists(b.col("public_tests"), ("input", "output"), b.path, "public_tests")
        ins, outs = (b.str_lists(c, f"public_tests.{f}") for f, c in zip(("input", "output"), tests))
        blocks = [examples_block(i, o) for i, o in zip(ins, outs)]
        good = self._python_solutions(b, "solutions")
        bad = self._python_solutions(b, "incorrect_solutions")
        n = len(names)
        # One batched encode for the whole record batch: descriptions and blocks once each.
        counts = self.counter.counts([*descs, *blocks, *good[2], *bad[2]])
        sources, diffs = b.col("source").to_pylist(), b.col("difficulty").to_pylist()
        tails = [{(flag, lang): f',"is_correct":{flag},"metadata":' + _META.encode(
                    {"contest_site": source_name(sources[i]), "has_tests": bool(blocks[i]), "language": lang_name,
                     "difficulty": V1_NO_DIFFICULTY if diffs[i] is None else diffs[i],
                     "source": V1_SOURCE}) + "}\n"
                  for flag in ("true", "false") for lang, lang_name in CC_LANGUAGES.items()} for i in range(n)]
        entries: list[list[tuple[str, str, str, int]]] = [[] for _ in range(n)]
        _solution_entries(entries, names, tails, "correct", good, counts[2 * n:2 * n + len(good[0])])
        _solution_entries(entries, names, tails, "incorrect", bad, counts[2 * n + len(good[0]):])
        head = [counts[i] + counts[n + i] for i in range(n)]
        return Prepared(descs, blocks, head, entries, good[3] + bad[3])


def _solution_entries(entries, names, tails, label, solutions, counts) -> None:
    """Append one problem's candidate rows for its Python solutions of one label, in order.

    k is the solution's index in the problem's full list of that label (every language), as the
    v1 scripts numbered it: ids have gaps where non-Python solutions sit, and a task_id names the
    same solution whatever the filters (language, empty, max_tokens) drop.
    """
    rows, langs, texts, _, positions = solutions
    flag = "true" if label == "correct" else "false"
    for j, row in enumerate(rows):
        entries[row].append((texts[j], _str(f"{names[row]}_{label}_{positions[j]}"), tails[row][(flag, langs[j])],
                             counts[j]))
