"""`alpaca_stats`: per-split summary statistics of Alpaca JSONL files (`stats/summary.json`).

For each split (named by its file's stem): the row count; for CodeContests-style rows (with
`is_correct`) the correct / incorrect counts and `correct_ratio` = correct / (correct + incorrect);
and token lengths (SentencePiece, no BOS/EOS) of instruction, input, output and their sum as
mean / p50 / p95 / max. Percentiles are nearest-rank on the exact lengths: the file is streamed
and only four int32 lengths per row are kept, so millions of rows cost tens of MB.
"""

from __future__ import annotations

import math
from array import array
from pathlib import Path

from .._lazy import lazy_module
from ..errors import TransformError
from ..hashing import pretty_json_bytes
from ..registry import transform
from .alpaca_io import BadRow, TokenCounter, iter_rows, load_tokenizer

np = lazy_module("numpy")

FIELDS = ("instruction", "input", "output")
ROWS_PER_CHUNK = 4096  # rows tokenized per batched encode


def summarize_lengths(lengths: np.ndarray) -> dict:
    """mean (3 decimals), nearest-rank p50 / p95, and max of integer lengths; zeros when empty."""
    if lengths.size == 0:
        return {"max": 0, "mean": 0.0, "p50": 0, "p95": 0}
    s = np.sort(lengths)

    def rank(p: float) -> int:
        return int(s[max(0, math.ceil(p / 100 * s.size) - 1)])

    return {"max": int(s[-1]), "mean": round(int(s.sum(dtype=np.int64)) / s.size, 3), "p50": rank(50), "p95": rank(95)}


class _SplitStats:
    """Accumulates one split's counts and token lengths while streaming its rows."""

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.rows = self.correct = self.incorrect = 0
        self.lengths = {f: array("i") for f in FIELDS}
        self.pending: list[dict] = []
        # Consecutive CodeContests rows repeat their problem's text: tokenize it once.
        self.last: dict[str, tuple[str, int]] = {f: ("", 0) for f in FIELDS}

    def add(self, row: dict) -> None:
        """Count one row; tokenize in chunks."""
        self.rows += 1
        flag = row.get("is_correct")
        self.correct += flag is True
        self.incorrect += flag is False
        self.pending.append(row)
        if len(self.pending) >= ROWS_PER_CHUNK:
            self.flush()

    def flush(self) -> None:
        """Tokenize the pending rows' texts (repeats of the previous text are not re-encoded)."""
        for f in FIELDS:
            texts = [str(r.get(f) or "") for r in self.pending]
            todo, prev = [], self.last[f][0]
            for t in texts:
                if t != prev:
                    todo.append(t)
                    prev = t
            counts = iter(self.counter.counts(todo))
            prev_text, prev_n = self.last[f]
            out = self.lengths[f]
            for t in texts:
                if t != prev_text:
                    prev_text, prev_n = t, next(counts)
                out.append(prev_n)
            self.last[f] = (prev_text, prev_n)
        self.pending = []

    def summary(self) -> dict:
        """The split's JSON-able summary."""
        self.flush()
        arrays = {f: np.frombuffer(self.lengths[f], dtype=np.int32) for f in FIELDS}
        total = sum((a.astype(np.int64) for a in arrays.values()), np.zeros(self.rows, np.int64))
        out: dict = {"rows": self.rows,
                     "tokens": {**{f: summarize_lengths(a) for f, a in arrays.items()}, "total": summarize_lengths(total)}}
        if self.correct or self.incorrect:
            out.update(correct=self.correct, incorrect=self.incorrect,
                       correct_ratio=round(self.correct / (self.correct + self.incorrect), 6))
        return out


@transform("alpaca_stats", "1", inputs={"data": "list", "tokenizer": "file"},
           params_schema={"type": "object", "additionalProperties": False, "properties": {}})
def alpaca_stats(inputs, params, out):
    """Write `summary.json`: per split rows, correct/incorrect counts and token-length stats."""
    counter = TokenCounter(load_tokenizer(inputs.get("tokenizer")))
    splits: dict[str, dict] = {}
    for path in inputs["data"]:
        path = Path(path)
        if path.stem in splits:
            raise TransformError(f"two inputs share the split name {path.stem!r}", where="data",
                                 fix="give each split's JSONL a distinct file name")
        acc = _SplitStats(counter)
        try:
            for _, row in iter_rows(path):
                acc.add(row)
        except BadRow as e:
            raise TransformError(str(e), where="data", fix="rebuild that JSONL artifact") from None
        splits[path.stem] = acc.summary()
    with out.open() as f:
        f.write(pretty_json_bytes({"splits": splits, "token_count": "sentencepiece, no BOS/EOS, per field",
                                   "tokenizer_vocab": counter.sp.get_piece_size()}))
