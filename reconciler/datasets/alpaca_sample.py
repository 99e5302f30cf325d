"""`alpaca_sample`: a small, deterministic, spread and balanced subset of an Alpaca JSONL split.

Two streaming passes keep memory bounded (a problem index and a label per row, 5 bytes):
pass 1 indexes every row's problem and label, the selection runs on that index, pass 2 copies
the chosen lines verbatim in source order.

Selection, all from one `random.Random(seed)`: rounds over the problems in a shuffled order.
The first round takes one row from every problem (until `n`), so the rows spread over as many
problems as possible; each take prefers the label (is_correct true / false / absent) picked least
so far, and later rounds take only that label, so correct and incorrect rows are balanced where
both exist. Within a (problem, label) group the rows are drawn in a random order.
"""

from __future__ import annotations

import random
import re
from array import array
from pathlib import Path

from .._lazy import lazy_module
from ..errors import TransformError
from ..registry import transform
from .alpaca_io import BadRow, iter_rows

np = lazy_module("numpy")

_SUFFIX = re.compile(r"_(?:correct|incorrect)_[0-9]+$")
LABELS = {True: 1, False: 0, None: 2}


def problem_of(task_id: str) -> str:
    """The problem a row belongs to: its task_id without a `_correct_k` / `_incorrect_k` suffix."""
    return _SUFFIX.sub("", task_id)


def index_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: (problem index, label) of every line; problems numbered in first-seen order."""
    problems: dict[str, int] = {}
    prob, lab = array("i"), array("b")
    try:
        for _, row in iter_rows(path):
            p = problem_of(str(row.get("task_id", "")))
            prob.append(problems.setdefault(p, len(problems)))
            flag = row.get("is_correct")
            lab.append(LABELS[flag] if isinstance(flag, bool) else 2)
    except BadRow as e:
        raise TransformError(str(e), where="data", fix="rebuild that JSONL artifact") from None
    return np.frombuffer(prob, np.int32), np.frombuffer(lab, np.int8)


class _Groups:
    """Line indices grouped by (problem, label), each group drawn in a lazily shuffled order."""

    def __init__(self, problems: np.ndarray, labels: np.ndarray, rng: random.Random):
        keys = problems.astype(np.int64) * 4 + labels
        self.lines = np.argsort(keys, kind="stable")  # grouped, source order within a group
        uniq, self.starts, self.counts = np.unique(keys[self.lines], return_index=True, return_counts=True)
        self.index = {int(k): i for i, k in enumerate(uniq)}
        self.rng = rng
        self.order: dict[int, list[int]] = {}  # group -> its undrawn offsets, next one last

    def available(self, problem: int, label: int) -> bool:
        """True while the group exists and still has undrawn lines."""
        g = self.index.get(problem * 4 + label)
        return g is not None and (g not in self.order or bool(self.order[g]))

    def draw(self, problem: int, label: int) -> int:
        """The next line of the group in its shuffled order (shuffled on first use only)."""
        g = self.index[problem * 4 + label]
        if g not in self.order:
            c = int(self.counts[g])
            self.order[g] = self.rng.sample(range(c), c)
        return int(self.lines[self.starts[g] + self.order[g].pop()])


def select(problems: np.ndarray, labels: np.ndarray, n: int, rng: random.Random) -> list[int]:
    """Line indices (sorted) of the sample: spread over problems first, balanced over labels."""
    present = [lab for lab in (1, 0, 2) if (labels == lab).any()]
    left = {lab: int((labels == lab).sum()) for lab in present}
    picked = dict.fromkeys(present, 0)
    groups = _Groups(problems, labels, rng)
    order = sorted(set(problems.tolist()))
    rng.shuffle(order)
    chosen: list[int] = []
    first_round = True
    target = min(n, problems.size)  # n may exceed the rows there are: then take them all
    while len(chosen) < target:
        for p in order:
            if len(chosen) == target:
                break
            need = min((lab for lab in present if left[lab]), key=lambda lab: picked[lab])
            avail = [lab for lab in present if groups.available(p, lab)]
            if need in avail:
                lab = need
            elif first_round and avail:  # one row from every problem before balancing
                lab = min(avail, key=lambda lab: picked[lab])
            else:
                continue
            chosen.append(groups.draw(p, lab))
            picked[lab] += 1
            left[lab] -= 1
        first_round = False
    return sorted(chosen)


@transform("alpaca_sample", "1", inputs={"data": "file"},
           params_schema={"type": "object", "additionalProperties": False, "required": ["n"],
                          "properties": {"n": {"type": "integer", "minimum": 1},
                                         "seed": {"type": "integer"}}})
def alpaca_sample(inputs, params, out):
    """Write <= n rows of `data` sampled with `seed` (default 0), spread and balanced, in source order."""
    path = Path(inputs["data"])
    problems, labels = index_rows(path)
    chosen = select(problems, labels, int(params["n"]), random.Random(int(params.get("seed", 0))))
    picked = iter(chosen)
    want = next(picked, None)
    with open(path, "rb") as src, out.open() as f:
        for i, line in enumerate(src):
            if want is None:
                break
            if i == want:
                f.write(line if line.endswith(b"\n") else line + b"\n")
                want = next(picked, None)
    return {"rows_written": len(chosen), "rows_in": int(problems.size),
            "problems": int(np.unique(problems[chosen]).size) if chosen else 0}
