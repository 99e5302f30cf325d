"""Elementary transforms: `copy`, `write_json` and `sha256sums`."""

from __future__ import annotations

import os
import shutil

from ..errors import TransformError
from ..hashing import pretty_json_bytes, sha256_file
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


@transform("sha256sums", "1", inputs={"files": "list"},
           params_schema={"type": "object", "additionalProperties": False, "properties": {}})
def sha256sums(inputs, params, out):
    """A `SHA256SUMS` file that `sha256sum -c` accepts in its own folder.

    Names are relative to the output's folder (the staging file sits in the final folder),
    so a copy of the folder verifies on a machine without reconcile.
    """
    lines = []
    for path in sorted(inputs["files"], key=lambda p: os.path.relpath(p, out.path.parent)):
        rel = os.path.relpath(path, out.path.parent)
        if rel.startswith(".."):
            raise TransformError(f"{rel} is not inside the SHA256SUMS folder", where="files",
                                 fix="list only files in the same folder (or below it)")
        lines.append(f"{sha256_file(path)}  {rel}\n")
    with out.open() as f:
        f.write("".join(lines).encode())
