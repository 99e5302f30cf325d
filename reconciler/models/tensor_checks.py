"""Checks on safetensors files: every tensor's dtype, and key set + shapes against a config.

Both read only the header (strictly validated by `read_header`), so they cost
milliseconds even on a 13 GB file; a corrupt header fails with the reader's message.
"""

from __future__ import annotations

import json

from ..errors import CheckFailed, ReconcileError
from ..registry import check
from .checkpoint_layout import LayoutError, first_mismatch, legacy_keys, shapes_for_config
from .safetensors_io import dtype_name, read_header


def _header(path):
    try:
        return read_header(path)[0]
    except ReconcileError as e:
        raise CheckFailed(f"not a valid safetensors file: {e.message}") from None


@check("dtype", "1", params_schema={"type": "object", "additionalProperties": False, "required": ["dtype"],
                                    "properties": {"dtype": {"type": "string"}}})
def dtype(path, params, ctx):
    """Every tensor in the safetensors file has the given dtype (float16, bfloat16, float32, F16...)."""
    try:
        want = dtype_name(params["dtype"])
    except KeyError:
        raise CheckFailed(f"unknown dtype {params['dtype']!r} in the check's params") from None
    infos = _header(path)
    for name in sorted(infos):
        if infos[name].dtype != want:
            bad = sum(1 for i in infos.values() if i.dtype != want)
            raise CheckFailed(f"tensor {name} has dtype {infos[name].dtype}, expected {want} "
                              f"({bad} of {len(infos)} tensors differ)")
    return f"{len(infos)} tensors, all {want}"


@check("tensors", "1", refs=("config",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["config"],
                      "properties": {"config": {"type": "string"},
                                     "drop": {"type": "array", "items": {"type": "string"}}}})
def tensors(path, params, ctx):
    """Key set and shapes match the model config (Meta params.json or HF Llama config.json).

    `drop` lists key globs / dotted suffixes that were deliberately left out (they may be
    absent). Legacy non-weight buffers (`rope.freqs`, `*.rotary_emb.inv_freq`) are tolerated.
    """
    cfg_path = ctx.path(params["config"])
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        expected = shapes_for_config(cfg)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckFailed(f"cannot read the config {params['config']}: {e}") from None
    except LayoutError as e:
        raise CheckFailed(f"config {params['config']}: {e.message}") from None
    infos = _header(path)
    found = {name: info.shape for name, info in infos.items()}
    problem = first_mismatch(found, expected, tolerated=list(params.get("drop", [])) + legacy_keys(cfg))
    if problem:
        raise CheckFailed(f"{problem} (per {params['config']})")
    return f"{len(found)} tensors match {params['config']}"
