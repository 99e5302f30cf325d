"""Input side of the Alpaca transforms: parquet shards, column checks, UTF-8, tokenizer.

Everything here streams: parquet is read batch by batch with only the needed columns, and
token counts come from SentencePiece's multi-threaded batch encode in bounded chunks, so the
memory used is flat in the size of the split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._lazy import lazy_module
from ..errors import TransformError

np = lazy_module("numpy")
pa = lazy_module("pyarrow")
pc = lazy_module("pyarrow.compute")
pq = lazy_module("pyarrow.parquet")

BATCH_ROWS = 16  # problems per record batch: a CodeContests row can hold thousands of solutions
ENCODE_CHUNK_CHARS = 4 << 20  # text per SentencePiece call: bounds the id lists held at once


def parquet_files(data: Path) -> list[Path]:
    """The parquet file itself, or every `*.parquet` under a directory in sorted relative-path order."""
    if data.is_file():
        return [data]
    if data.is_dir():
        files = sorted((p for p in data.rglob("*.parquet") if p.is_file()),
                       key=lambda p: p.relative_to(data).as_posix())
        if files:
            return files
        raise TransformError(f"directory {data} holds no *.parquet shard", where="data",
                             fix="point `data` at the split's parquet file or at the folder of its shards")
    raise TransformError(f"{data} does not exist", where="data", fix="fetch the split's parquet first")


def _matches(t: pa.DataType, spec) -> bool:
    if spec == "str":
        return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t)
    if spec == "int":
        return pa.types.is_integer(t)
    if spec == "bool":
        return pa.types.is_boolean(t)
    kind, inner = spec
    if kind == "list":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _matches(t.value_type, inner)
    if not pa.types.is_struct(t):
        return False
    names = [t.field(i).name for i in range(t.num_fields)]
    return all(f in names and _matches(t.field(f).type, s) for f, s in inner.items())


def _describe(spec) -> str:
    if isinstance(spec, str):
        return {"str": "string", "int": "integer", "bool": "bool"}[spec]
    kind, inner = spec
    if kind == "list":
        return f"list<{_describe(inner)}>"
    return "struct{" + ", ".join(f"{k}: {_describe(v)}" for k, v in inner.items()) + "}"


def open_checked(path: Path, columns: dict) -> pq.ParquetFile:
    """Open a parquet file and check that every needed column exists with the expected type.

    `columns` maps a name to a type spec: "str" (string or binary), "int", "bool",
    ("list", spec) or ("struct", {field: spec}).
    """
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise TransformError(f"{path.name} is not a readable parquet file ({e})", where=str(path),
                             fix="re-fetch the split (its bytes are damaged or it is not parquet)") from None
    schema = pf.schema_arrow
    for name, spec in columns.items():
        idx = schema.get_field_index(name)
        if idx < 0:
            raise TransformError(f"column {name!r} is missing from {path.name}", where=str(path),
                                 fix="check that `dataset` matches the parquet you pass as `data`")
        if not _matches(schema.field(idx).type, spec):
            raise TransformError(f"column {name!r} of {path.name} has type {schema.field(idx).type}, "
                                 f"expected {_describe(spec)}", where=str(path),
                                 fix="check that `dataset` matches the parquet you pass as `data`")
    return pf


@dataclass
class Batch:
    """One record batch of one shard, with where its first row sits in that shard."""

    path: Path
    first_row: int
    table: pa.RecordBatch

    def col(self, name: str) -> pa.Array:
        """A column of the batch by name."""
        return self.table.column(name)

    def strings(self, arr: pa.Array, column: str, row_of: Callable[[int], int] | None = None) -> list[str]:
        """Python strs of a flat string/binary array, or a TransformError naming the bad row."""
        return to_str_list(arr, column, self.path, lambda i: self.first_row + (row_of(i) if row_of else i))

    def str_lists(self, arr: pa.Array, column: str) -> list[list[str]]:
        """Per-row Python lists of a list<string> column (null lists are empty)."""
        values, parents = arr.flatten(), list_parents(arr).tolist()
        texts = self.strings(values, column, row_of=lambda i: parents[i])
        out: list[list[str]] = [[] for _ in range(len(arr))]
        for p, t in zip(parents, texts):
            out[p].append(t)
        return out

    def required(self, values: list, column: str) -> list:
        """`values` unchanged, or a TransformError naming the first null row."""
        for i, v in enumerate(values):
            if v is None:
                raise TransformError(f"{self.path.name} row {self.first_row + i} column {column!r} is null",
                                     where=str(self.path), fix="repair or re-fetch the upstream file")
        return values


def iter_batches(files: Sequence[Path], columns: dict) -> Iterator[Batch]:
    """Record batches of every shard in order, reading only `columns`, one row group at a time."""
    for path in files:
        pf = open_checked(path, columns)
        first = 0
        try:
            for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=list(columns), use_threads=True):
                yield Batch(path, first, rb)
                first += rb.num_rows
        except (OSError, pa.ArrowException) as e:
            raise TransformError(f"{path.name} could not be read near row {first} ({e})", where=str(path),
                                 fix="re-fetch the split (its bytes are damaged)") from None


def to_str_list(arr: pa.Array, column: str, path: Path, row_of: Callable[[int], int]) -> list[str]:
    """Decode a flat string or binary array to strs; invalid UTF-8 names its row and column."""
    try:
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            arr = arr.cast(pa.large_string())  # the cast validates UTF-8
        return arr.to_pylist()
    except (UnicodeDecodeError, pa.ArrowInvalid):
        pass
    for i, raw in enumerate(arr.cast(pa.large_binary()).to_pylist()):
        try:
            (raw or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            raise TransformError(f"{path.name} row {row_of(i)} column {column!r}: value is not valid UTF-8 "
                                 f"({e.reason} at byte {e.start})", where=str(path),
                                 fix="repair or re-fetch the upstream file") from None
    raise TransformError(f"{path.name} column {column!r}: could not decode strings", where=str(path))


def list_parents(arr: pa.Array) -> np.ndarray:
    """Row index of each value of `arr.flatten()` (null lists contribute none, even when backed by values)."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    return np.repeat(np.arange(len(arr)), lengths)


def struct_lists(arr: pa.Array, fields: Sequence[str], path: Path, column: str) -> list[pa.Array]:
    """The list children of a (nullable) struct-of-lists column, checked to have equal lengths per row."""
    children = [pc.struct_field(arr, f) for f in fields]
    lengths = [pc.fill_null(pc.list_value_length(c), 0) for c in children]
    for f, n in zip(fields[1:], lengths[1:]):
        if not pc.all(pc.equal(lengths[0], n)).as_py():
            raise TransformError(f"{path.name} column {column!r}: {fields[0]} and {f} lists differ in length",
                                 where=str(path), fix="repair or re-fetch the upstream file")
    return children


def load_tokenizer(path: Path | None):
    """A SentencePieceProcessor for the required `tokenizer` input, or a TransformError."""
    import sentencepiece as spm

    if path is None:
        raise TransformError("the `tokenizer` input is required (token filter)", where="tokenizer",
                             fix="add `tokenizer: <path of tokenizer.model>` to the build's inputs")
    if not Path(path).is_file():
        raise TransformError(f"tokenizer {path} does not exist", where="tokenizer",
                             fix="fetch the tokenizer artifact before building")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise TransformError(f"tokenizer {path} is not a SentencePiece model ({e})", where="tokenizer",
                             fix="point `tokenizer` at a SentencePiece tokenizer.model") from None
    if sp.vocab_size() <= 0:  # an empty file loads as a model with no pieces
        raise TransformError(f"tokenizer {path} is not a SentencePiece model: empty vocabulary", where="tokenizer",
                             fix="point `tokenizer` at a real tokenizer.model (re-fetch it)")
    return sp


class TokenCounter:
    """Token counts (no BOS/EOS) of many texts via SentencePiece's multi-threaded batch encode."""

    def __init__(self, sp, threads: int | None = None):
        self.sp = sp
        self.threads = threads or os.cpu_count() or 1
        self.tokens = 0  # running total of tokens counted, for throughput figures
        # sentencepiece >= 0.2.1 can return each text's ids as one int32 buffer: counting their
        # sizes skips building a Python int per token (about a tenth of the encode's CPU time).
        try:
            sp.encode(["a"], out_type="numpy", num_threads=1)
            self.out_type = "numpy"
        except (ValueError, TypeError, RuntimeError):
            self.out_type = int

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text, in order; encodes in chunks of bounded total size."""
        out: list[int] = []
        start, size = 0, 0
        for i, t in enumerate(texts):
            size += len(t)
            if size >= ENCODE_CHUNK_CHARS:
                out.extend(self._encode(texts[start:i + 1]))
                start, size = i + 1, 0
        out.extend(self._encode(texts[start:]))
        return out

    def _encode(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        lens = list(map(len, self.sp.encode(list(texts), out_type=self.out_type, num_threads=self.threads)))
        self.tokens += sum(lens)
        return lens


class BadRow(ValueError):
    """A JSONL line that is not a JSON object (message names the file and line)."""


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, row) for each line of a JSONL file; BadRow names a bad line."""
    with open(path, "rb") as f:  # binary: only b"\n" ends a row, and errors get exact line numbers
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except UnicodeDecodeError as e:
                raise BadRow(f"{path.name} line {n} is not valid UTF-8 ({e.reason})") from None
            except json.JSONDecodeError as e:
                raise BadRow(f"{path.name} line {n} is not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise BadRow(f"{path.name} line {n} is not a JSON object")
            yield n, row
