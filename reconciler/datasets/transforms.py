"""Dataset transforms: upstream parquet -> Alpaca JSONL (`to_alpaca`) and its schema (`alpaca_schema`).

The row format, filters and task-id rules are documented in `alpaca_convert`; the summary
statistics and small subsets live in `alpaca_stats` and `alpaca_sample`.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import TransformError
from ..hashing import pretty_json_bytes
from ..registry import transform
from .alpaca_io import TokenCounter, load_tokenizer, parquet_files

DATASETS = ("codecontests", "mbpp", "humaneval")
DEFAULT_MAX_TOKENS = 2048


@transform("to_alpaca", "2", inputs={"data": "file", "tokenizer": "file"},
           params_schema={"type": "object", "additionalProperties": False, "required": ["dataset"],
                          "properties": {"dataset": {"enum": list(DATASETS)},
                                         "max_tokens": {"type": "integer", "minimum": 1}}})
def to_alpaca(inputs, params, out):
    """Convert a split's raw parquet (one file or a folder of shards) into Alpaca JSONL rows.

    Rows keep source order (shards in sorted name order, problems, then each problem's correct
    and then incorrect Python solutions). Returns rows written and rows dropped by reason.
    A folder of shards is converted on every core, one process per shard (`parallel`); the bytes
    are the same for any number of processes (`RECONCILE_WORKERS`, default: every core).
    """
    from . import parallel
    from .alpaca_convert import Converter, Tally  # pyarrow: imported when converting, not at start-up
    dataset = params["dataset"]
    max_tokens = int(params.get("max_tokens", DEFAULT_MAX_TOKENS))
    files = parquet_files(Path(inputs["data"]))
    sp = load_tokenizer(inputs.get("tokenizer"))  # refused here, before any worker starts
    workers = parallel.workers_for(len(files))
    with out.open() as f:
        if workers > 1:
            tallies, tokens = parallel.convert_shards(dataset, files, Path(inputs["tokenizer"]), max_tokens, f.write,
                                                      out.path.parent, workers)
            tally = Tally()
            for t in tallies:
                tally.written += t.written
                for reason, n in t.dropped.items():
                    tally.dropped[reason] = tally.dropped.get(reason, 0) + n
        else:
            counter = TokenCounter(sp)
            tally = Converter(dataset, counter, max_tokens).run(files, f.write)
            tokens = counter.tokens
    return {**tally.as_info(), "shards": len(files), "tokens_counted": tokens}


def schema_path(dataset: str):
    """The canonical JSON Schema file of one dataset's Alpaca rows (package data)."""
    return resources.files("reconciler.schemas").joinpath(f"alpaca_{dataset}.schema.json")


def load_schema(dataset: str) -> dict:
    """The canonical row schema of `dataset`, or a TransformError when the file is missing."""
    path = schema_path(dataset)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TransformError(f"cannot read the row schema {path} ({e})", where="dataset",
                             fix="reinstall reconcile: the wheel ships reconciler/schemas/") from None


@transform("alpaca_schema", "2", inputs={},
           params_schema={"type": "object", "additionalProperties": False, "required": ["dataset"],
                          "properties": {"dataset": {"enum": list(DATASETS)}}})
def alpaca_schema(inputs, params, out):
    """Write the JSON Schema (draft 2020-12) of one dataset's Alpaca rows as canonical JSON."""
    with out.open() as f:
        f.write(pretty_json_bytes(load_schema(params["dataset"])))
