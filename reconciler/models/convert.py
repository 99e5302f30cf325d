"""Checkpoint conversions: Meta `consolidated.pth` and HF shards -> one `model.safetensors`.

Both stream tensor by tensor (the real Meta checkpoint is 27 GB float32 on a 24 GB machine):
sources (`.pth`/`.bin` torch zips, `.safetensors`) are read one tensor at a time with ordinary
reads (`models.tensorfile`, never a whole-file mapping), each tensor is cast slice by slice into
the output and dropped before the next.
Both validate the key set and every shape BEFORE writing a byte, and verify the written file
tensor by tensor as they go: stored offsets against the header read back, sampled values against
the source (see `_streaming.write_verified`). Output bytes depend only on
the tensors and params: names are laid out as `safetensors.save_file` does, metadata is
`{"format": "pt"}`, so two builds are byte-identical.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import TransformError
from ..registry import transform
from ._streaming import layout_or_fail, open_source, read_json, write_verified
from .checkpoint_layout import LEGACY_META_KEYS, first_mismatch, matches, meta_shapes

DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
_SCHEMA = {"type": "object", "additionalProperties": False,
           "properties": {"dtype": {"enum": sorted(DTYPES)},
                          "drop": {"type": "array", "items": {"type": "string", "minLength": 1}}}}


@transform("torch_to_safetensors", "1", inputs={"checkpoint": "file", "params": "file"}, params_schema=_SCHEMA)
def torch_to_safetensors(inputs, params, out):
    """Meta consolidated.pth -> model.safetensors, validated against params.json, streamed.

    params: `dtype` (float16 default, bfloat16, float32); `drop`: key globs / dotted suffixes
    to leave out. The legacy `rope.freqs` buffer (precomputed RoPE, not a weight) is always
    tolerated and always left out, listed or not. Keys keep Meta's names.
    """
    dtype = DTYPES[params.get("dtype", "float16")]
    drop = list(params.get("drop", []))
    expected = layout_or_fail(meta_shapes, read_json(inputs["params"], "params"), "params")
    with open_source(inputs["checkpoint"], "checkpoint") as source:
        found = {e.name: e.shape for e in source.entries}
        skip = drop + list(LEGACY_META_KEYS)
        problem = first_mismatch(found, expected, tolerated=skip)
        if problem:
            raise TransformError(f"{problem} (checked against params.json)", where="checkpoint",
                                 fix="pair the checkpoint with its own params.json, or list extra keys in params.drop")
        keep = sorted(name for name in found if not matches(name, skip))
        written = write_verified(out, {name: (dtype, found[name]) for name in keep},
                                 lambda name: (source, source[name]), "checkpoint")
        return {"n_tensors": len(keep), "n_params": sum(math.prod(found[k]) for k in keep),
                "dtype": params.get("dtype", "float16"), **written,
                "source_dtypes": sorted({source[k].dtype for k in keep}),
                "dropped": sorted(set(found) - set(keep))}


@transform("merge_shards", "1", inputs={"index": "file", "shards": "list"}, params_schema=_SCHEMA)
def merge_shards(inputs, params, out):
    """HF sharded checkpoint (.bin or .safetensors shards + index) -> one model.safetensors.

    Every index key must sit in exactly the shard the index names, no shard may hold keys the
    index lacks, and `metadata.total_size` must equal the source tensors' summed bytes (the
    real Sheared-LLaMA index counts the `inv_freq` buffers). params: `dtype` (float16
    default), `drop`: key globs / dotted suffixes, e.g. `*.rotary_emb.inv_freq`.
    """
    dtype = DTYPES[params.get("dtype", "float16")]
    drop = list(params.get("drop", []))
    weight_map, total_size = _read_index(inputs["index"])
    shards = _match_shards(inputs["shards"], weight_map)
    found = _survey(shards, weight_map)  # name -> (shard name, torch dtype name, shape, nbytes)
    summed = sum(v[3] for v in found.values())
    if total_size is not None and summed != total_size:
        raise TransformError(f"index metadata.total_size is {total_size} but the shards' tensors hold {summed} "
                             "bytes", where="index", fix="use the index that was published with these shards")
    keep = sorted(name for name in found if not matches(name, drop))
    with _ShardReader(shards, found) as source:
        written = write_verified(out, {name: (dtype, found[name][2]) for name in keep}, source.get, "shards")
    return {"n_tensors": len(keep), "n_params": sum(math.prod(found[k][2]) for k in keep),
            "dtype": params.get("dtype", "float16"), **written, "n_shards": len(shards),
            "source_dtypes": sorted({found[k][1] for k in keep}),
            "dropped": sorted(set(found) - set(keep))}


def _read_index(path: Path) -> tuple[dict[str, str], int | None]:
    """(weight_map, metadata.total_size or None) of an HF shard index."""
    idx = read_json(path, "index")
    weight_map = idx.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise TransformError("index has no weight_map of tensor name -> shard file", where="index")
    total = (idx.get("metadata") or {}).get("total_size")
    if total is not None and type(total) is not int:
        raise TransformError(f"index metadata.total_size {total!r} is not an integer", where="index")
    return weight_map, total


def _match_shards(paths: list[Path], weight_map: dict[str, str]) -> dict[str, Path]:
    """Shard file name -> input path; inputs and the index must name the same shards."""
    by_name: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.name in by_name:
            raise TransformError(f"two input shards are both named {p.name}", where="shards")
        by_name[p.name] = p
    kinds = {p.suffix for p in by_name.values()}
    if not kinds <= {".bin", ".pt", ".pth", ".safetensors"} or len(kinds) != 1:
        raise TransformError(f"shards must all be .bin or all .safetensors, got {sorted(kinds)}", where="shards")
    named = set(weight_map.values())
    for name in sorted(named - by_name.keys()):
        raise TransformError(f"the index names shard {name}, which is not among the inputs", where="shards")
    for name in sorted(by_name.keys() - named):
        raise TransformError(f"input shard {name} is not named in the index", where="shards")
    return {name: by_name[name] for name in sorted(by_name)}


def _survey(shards: dict[str, Path], weight_map: dict[str, str]) -> dict[str, tuple]:
    """Read every shard's key list, dtypes and shapes (no tensor data) and check them against the index."""
    found: dict[str, tuple] = {}
    for shard, path in shards.items():
        for name, (dtype, shape, nbytes) in sorted(_shard_keys(path, shard).items()):
            if name not in weight_map:
                raise TransformError(f"shard {shard} holds tensor {name}, which the index does not list",
                                     where="shards")
            if name in found:
                raise TransformError(f"tensor {name} is in both {found[name][0]} and {shard}", where="shards")
            if weight_map[name] != shard:
                raise TransformError(f"tensor {name} is in {shard} but the index says {weight_map[name]}",
                                     where="shards")
            found[name] = (shard, dtype, shape, nbytes)
    for name in sorted(weight_map.keys() - found.keys()):
        raise TransformError(f"tensor {name} is listed in the index under {weight_map[name]} but that shard "
                             "does not hold it", where="shards")
    return found


def _shard_keys(path: Path, shard: str) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (dtype, shape, nbytes) of one shard, from its index alone (no tensor data read)."""
    with open_source(path, f"shards: {shard}") as source:
        return {e.name: (e.dtype, e.shape, e.nbytes) for e in source.entries}


class _ShardReader:
    """(TensorFile, Entry) of any tensor: each shard opened once (its index parsed once), all closed together."""

    def __init__(self, shards: dict[str, Path], found: dict[str, tuple]):
        self._shards, self._found = shards, found
        self._files: dict = {}

    def get(self, name: str):
        """The open shard file holding `name`, and its entry."""
        shard = self._found[name][0]
        if shard not in self._files:
            self._files[shard] = open_source(self._shards[shard], f"shards: {shard}")
        tf = self._files[shard]
        return tf, tf[name]

    def close(self) -> None:
        """Close every open shard."""
        for tf in self._files.values():
            tf.close()
        self._files = {}

    def __enter__(self) -> _ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
