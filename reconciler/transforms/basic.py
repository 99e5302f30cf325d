"""The two elementary transforms: `copy` and `write_json`."""

from __future__ import annotations

import shutil

from ..hashing import pretty_json_bytes
from ..registry import transform


@transform("copy", "1", inputs={"src": "file"},
           params_schema={"type": "object", "additionalProperties": False, "properties": {}})
def copy(inputs, params, out):
    """Byte-for-byte copy of one input artifact."""
    with open(inputs["src"], "rb") as src, out.open() as dst:
        shutil.copyfileobj(src, dst, 8 * 1024 * 1024)


@transform("write_json", "1", inputs={},
           params_schema={"type": "object", "additionalProperties": False, "required": ["data"],
                          "properties": {"data": {}}})
def write_json(inputs, params, out):
    """Canonical JSON of `params.data`: sorted keys, 2-space indent, trailing newline."""
    with out.open() as f:
        f.write(pretty_json_bytes(params["data"]))
