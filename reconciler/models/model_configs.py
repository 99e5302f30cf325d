"""Derived model configs: every field read from an upstream file or a safetensors header.

Nothing here is hand-written or time-dependent: the same inputs give the same bytes
(sorted keys; canonical JSON via `pretty_json_bytes`, YAML via `yaml.safe_dump`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..errors import TransformError
from ..hashing import pretty_json_bytes
from ..registry import transform
from .checkpoint_layout import ffn_hidden_dim
from .nets import HeaderError, WeightsSummary, read_summary
from .nets.configs import meta_params_with_defaults

TORCH_DTYPES = ["bfloat16", "float16", "float32"]
_NO_PARAMS = {"type": "object", "additionalProperties": False, "properties": {}}


def read_json_object(path: Path, where: str) -> dict:
    """A JSON object from an input file, or a TransformError naming the input."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TransformError(f"not valid JSON ({e})", where=where, fix="point this input at the JSON file") from None
    if not isinstance(value, dict):
        raise TransformError("expected a JSON object", where=where, fix="point this input at the JSON file")
    return value


def read_weights(path: Path, where: str) -> WeightsSummary:
    """The safetensors header of an input, or a TransformError naming the input."""
    try:
        return read_summary(path)
    except HeaderError as e:
        raise TransformError(str(e), where=where, fix="point this input at a safetensors file") from None


def adapter_fields(meta: dict, weights: WeightsSummary) -> dict[str, Any]:
    """HF-style fields of a Meta params.json; vocab -1 (LLaMA-1 style) is read from the embedding."""
    meta = dict(meta)
    emb = weights.shape("tok_embeddings.weight")
    if meta.get("vocab_size", -1) == -1 and emb is not None:
        meta["vocab_size"] = emb[0]
    try:
        p = meta_params_with_defaults(meta)
    except ValueError as e:
        raise TransformError(str(e), where="params", fix="point params at the checkpoint's params.json") from None
    if emb is not None and tuple(emb) != (p["vocab_size"], p["dim"]):
        raise TransformError(f"params.json says (vocab_size, dim) = ({p['vocab_size']}, {p['dim']}) but "
                             f"tok_embeddings.weight is {list(emb)}", where="params",
                             fix="give the params.json that belongs to these weights")
    return {
        "hidden_size": p["dim"], "num_hidden_layers": p["n_layers"],
        "num_attention_heads": p["n_heads"], "num_key_value_heads": p["n_kv_heads"],
        "intermediate_size": ffn_hidden_dim(p["dim"], p["multiple_of"], p["ffn_dim_multiplier"]),
        "rope_theta": float(p["rope_theta"]), "rms_norm_eps": float(p["norm_eps"]),
        "vocab_size": p["vocab_size"], "n_future_tokens": p["n_future_tokens"],
    }


@transform("meta_adapter", "1", inputs={"params": "file", "weights": "file"}, params_schema=_NO_PARAMS)
def meta_adapter(inputs, params, out):
    """configs/meta_adapter.yaml: HF-style sizes of a Meta params.json plus the weights' dtype."""
    weights = read_weights(inputs["weights"], "weights")
    if len(weights.dtypes) != 1:
        raise TransformError(f"the weights mix dtypes {weights.dtypes}; the adapter needs one", where="weights",
                             fix="convert the checkpoint to a single dtype first")
    cfg = adapter_fields(read_json_object(inputs["params"], "params"), weights)
    cfg["dtype"] = weights.dtype
    with out.open() as f:
        f.write(yaml.safe_dump(cfg, sort_keys=True, default_flow_style=False).encode("utf-8"))
    return {"dtype": cfg["dtype"], "intermediate_size": cfg["intermediate_size"]}


MTP_CONFIG_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["model_name", "max_position_embeddings"],
    "properties": {"model_name": {"type": "string", "minLength": 1}, "target_device": {"type": "string"},
                   "max_position_embeddings": {"type": "integer", "minimum": 1}},
}


@transform("mtp_config", "1", inputs={"params": "file", "weights": "file"}, params_schema=MTP_CONFIG_SCHEMA)
def mtp_config(inputs, params, out):
    """configs/config.json of a Meta-layout MTP model: the fields the WMTP scripts read, sizes from params.json.

    Same derivation as meta_adapter (params.json checked against the weights' embedding; dtype from
    the header), so config.json, params.json and the weights cannot disagree.
    """
    weights = read_weights(inputs["weights"], "weights")
    if len(weights.dtypes) != 1:
        raise TransformError(f"the weights mix dtypes {weights.dtypes}; config.json needs one", where="weights",
                             fix="convert the checkpoint to a single dtype first")
    cfg = adapter_fields(read_json_object(inputs["params"], "params"), weights)
    cfg.update(model_name=params["model_name"], dtype=weights.dtype,
               max_position_embeddings=params["max_position_embeddings"])
    if "target_device" in params:
        cfg["target_device"] = params["target_device"]
    with out.open() as f:
        f.write(pretty_json_bytes(cfg))
    return {"dtype": cfg["dtype"], "intermediate_size": cfg["intermediate_size"]}


# ---- SentencePiece -----------------------------------------------------------------------------

SP_MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def proto_fields(buf: bytes):
    """Yield (field number, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def trainer_spec_facts(model_bytes: bytes) -> dict[str, Any]:
    """model_type and byte_fallback from ModelProto.trainer_spec (field 2: fields 3 and 35).

    The sentencepiece processor API exposes neither, and its protobuf module needs the
    `protobuf` package, which is not a dependency; the two fields are simple to read directly.
    """
    model_type, byte_fallback = 1, False  # proto2 defaults: UNIGRAM, no byte fallback
    for field, value in proto_fields(model_bytes):
        if field == 2:
            for sub, v in proto_fields(value):
                if sub == 3:
                    model_type = v
                elif sub == 35:
                    byte_fallback = bool(v)
    return {"model_type": SP_MODEL_TYPES.get(model_type, f"unknown({model_type})"), "byte_fallback": byte_fallback}


def sentencepiece_facts(path: Path) -> dict[str, Any]:
    """Vocab size, special ids and pieces, model type and byte fallback of a SentencePiece model."""
    import sentencepiece as spm

    data = Path(path).read_bytes()
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
        facts = trainer_spec_facts(data)
    except (RuntimeError, ValueError, IndexError) as e:
        raise TransformError(f"not a SentencePiece model ({e})", where="tokenizer",
                             fix="point tokenizer at a tokenizer.model file") from None
    if sp.vocab_size() <= 0:  # a 0-byte file parses as an empty model proto: vocab_size 0
        raise TransformError(f"not a SentencePiece model: empty vocabulary ({len(data)} bytes)", where="tokenizer",
                             fix="point tokenizer at a real tokenizer.model file (re-fetch it)")

    def piece(i: int) -> str | None:
        return sp.id_to_piece(i) if 0 <= i < sp.vocab_size() else None

    facts.update({"vocab_size": sp.vocab_size()})
    for role in ("unk", "bos", "eos", "pad"):
        i = getattr(sp, f"{role}_id")()
        facts[f"{role}_id"] = i if i >= 0 else None
        facts[f"{role}_token"] = piece(i)
    return facts


# ---- metadata and HF config ----------------------------------------------------------------------

METADATA_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["model_name", "source"],
    "properties": {
        "model_name": {"type": "string"},
        "source": {"type": "string", "description": "the lock source the weights come from (its commit is recorded)"},
        "tokenizer_shared_with": {"type": "string", "description": "the model whose tokenizer this one shares"},
        "target_device": {"type": "string"}, "notes": {"type": "string"}, "extra": {"type": "object"},
    },
}


def _file_shas(paths, shas) -> dict[str, str]:
    paths, shas = (paths, shas) if isinstance(paths, list) else ([paths], [shas])
    return {Path(p).name: s for p, s in zip(paths, shas)}


# Version 2: v1's layout (version, format, files' sha256, created_at, source{repo, revision}); the
# commit, release date and input sha256s come from the lock (reads_lock), never from a clock or a re-hash.
@transform("model_metadata", "2", inputs={"weights": "file", "tokenizer": "file", "checkpoint": "optional-list"},
           params_schema=METADATA_SCHEMA, reads_lock=True)
def model_metadata(inputs, params, out):
    """metadata.json: names, pinned source commit, release date, dtype and n_params from the header, sha256s."""
    lock = params.get("lock")
    if not lock or "source" not in lock:
        raise TransformError("model_metadata needs the lock's facts (release, source commit, input sha256s)",
                             where="params", fix="build it with `reconcile apply`")
    weights = read_weights(inputs["weights"], "weights")
    shas = lock["input_sha256"]
    tok = sentencepiece_facts(inputs["tokenizer"])
    meta: dict[str, Any] = {
        "model_name": params["model_name"], "version": lock["storage_version"], "format": "safetensors",
        "created_at": lock["release_date"], "dtype": weights.dtype, "n_params": weights.n_params,
        "n_tensors": len(weights.tensors),
        "source": {"repo": lock["source"]["repo"], "revision": lock["source"]["commit"]},
        "sha256": {"weights": {Path(inputs["weights"]).name: shas["weights"]},
                   "tokenizer": {Path(inputs["tokenizer"]).name: shas["tokenizer"]}},
        # What the plan wants recorded about the tokenizer, here rather than in tokenizer_config.json
        # (transformers misreads a model_type there).
        "tokenizer": {"type": "sentencepiece", "model_type": tok["model_type"], "vocab_size": tok["vocab_size"],
                      "byte_fallback": tok["byte_fallback"], "bos_id": tok["bos_id"], "eos_id": tok["eos_id"],
                      "unk_id": tok["unk_id"], "pad_id": tok["pad_id"]},
    }
    if inputs.get("checkpoint") is not None:
        meta["sha256"]["checkpoint"] = _file_shas(inputs["checkpoint"], shas["checkpoint"])
    for key in ("tokenizer_shared_with", "target_device", "notes"):
        if key in params:
            meta[key] = params[key]
    clash = sorted(set(params.get("extra", {})) & set(meta))
    if clash:
        raise TransformError(f"extra keys {clash} would overwrite derived fields", where="params.extra",
                             fix="rename those extra keys")
    meta.update(params.get("extra", {}))
    with out.open() as f:
        f.write(pretty_json_bytes(meta))
    return {"n_params": meta["n_params"], "dtype": meta["dtype"], "revision": meta["source"]["revision"]}


@transform("hf_config", "1", inputs={"config": "file"},
           params_schema={"type": "object", "additionalProperties": False, "required": ["torch_dtype"],
                          "properties": {"torch_dtype": {"enum": TORCH_DTYPES},
                                         "drop_keys": {"type": "array", "items": {"type": "string"}}}})
def hf_config(inputs, params, out):
    """The upstream HF config.json with torch_dtype set to the converted dtype (canonical JSON)."""
    cfg = read_json_object(inputs["config"], "config")
    for key in params.get("drop_keys", []):
        if key not in cfg:
            raise TransformError(f"drop_keys names {key!r}, which the config does not have", where="params.drop_keys",
                                 fix=f"remove {key!r} from drop_keys")
        del cfg[key]
    before = cfg.get("torch_dtype")
    cfg["torch_dtype"] = params["torch_dtype"]
    with out.open() as f:
        f.write(pretty_json_bytes(cfg))
    return {"torch_dtype": [before, params["torch_dtype"]]}
