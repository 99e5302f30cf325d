"""Micro models: tiny MTP / Llama checkpoints cut from a real base (or seeded), and their configs.

One "micro spec" (the params shared by `micro_model`, `micro_params` and `micro_hf_config`, so a
lock can write it once with a YAML anchor) fixes every tensor shape. The configs are derived from
it (plus the base's own config for the fields that do not change sizes), never hand-written, and
the weights file is written by `safetensors_io.SafetensorsWriter`, whose header (`encode_header`) is a
pure function of the spec, so `predict_size` is the exact file size (header included) before anything is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ReconcileError, ResourceError, TransformError
from ..hashing import pretty_json_bytes
from ..registry import transform
from ._streaming import open_source
from .checkpoint_layout import CONFIG_LIMITS, ffn_hidden_dim, n_params
from .model_configs import read_json_object
from .nets import HeaderError, block_count, expected_shapes, read_summary
from .safetensors_io import METADATA, SafetensorsWriter, dtype_name, encode_header, expected_nbytes
from .tensorfile import TensorFile

if TYPE_CHECKING:  # torch only where weights are made: the lock validator calls predict_size without it
    import torch

DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}  # spec dtype -> safetensors dtype


def _pos_int(key: str) -> dict:
    # Bounded like upstream configs (checkpoint_layout.CONFIG_LIMITS): the lock validator refuses
    # n_layers 10,000,000 from the schema alone, before any size or key list is computed.
    return {"type": "integer", "minimum": 1, "maximum": CONFIG_LIMITS[key]}


SPEC_PROPERTIES: dict[str, Any] = {
    "arch": {"enum": ["mtp", "llama"]},
    **{k: _pos_int(k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "n_future_tokens",
                                "intermediate_size", "multiple_of")},
    "ffn_dim_multiplier": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 64},
    "norm_eps": {"type": "number", "exclusiveMinimum": 0}, "rope_theta": {"type": "number", "exclusiveMinimum": 0},
    "dtype": {"enum": sorted(DTYPES)},
    "init": {"enum": ["slice", "random"]}, "seed": {"type": "integer", "minimum": 0},
}
SPEC_REQUIRED = ["arch", "dim", "n_layers", "n_heads", "vocab_size", "dtype"]
CONFIG_SCHEMA = {"type": "object", "additionalProperties": False, "required": SPEC_REQUIRED,
                 "properties": SPEC_PROPERTIES}
MODEL_SCHEMA = {**CONFIG_SCHEMA, "required": [*SPEC_REQUIRED, "init"]}
LLAMA_DEFAULTS = {"bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
                  "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
# Keys of an HF base config that would describe the base, not the micro model.
_HF_DROPPED = ("_name_or_path", "transformers_version", "head_dim")


# ---- the spec -> configs ---------------------------------------------------------------------------

def micro_meta_params(params: Mapping, base: Mapping | None = None) -> dict:
    """Meta params.json of an mtp micro spec; norm_eps / rope_theta inherited from the base's params."""
    _need_arch(params, "mtp")
    if "intermediate_size" in params:
        raise TransformError("arch mtp takes its FFN width from multiple_of / ffn_dim_multiplier (LLaMA rule), "
                             "not intermediate_size", where="params.intermediate_size",
                             fix="remove intermediate_size, or set multiple_of / ffn_dim_multiplier")
    base = base or {}
    out = {k: params[k] for k in ("dim", "n_layers", "n_heads", "vocab_size")}
    out["n_kv_heads"] = params.get("n_kv_heads", params["n_heads"])
    out["n_future_tokens"] = params.get("n_future_tokens", 1)
    out["multiple_of"] = params.get("multiple_of", 256)
    out["ffn_dim_multiplier"] = params.get("ffn_dim_multiplier")
    out["norm_eps"] = params.get("norm_eps", base.get("norm_eps", 1e-5))
    out["rope_theta"] = params.get("rope_theta", base.get("rope_theta", 10000.0))
    return out


def micro_llama_config(params: Mapping, base: Mapping | None = None) -> dict:
    """HF config.json of a llama micro spec: the base config's other fields, the spec's sizes."""
    _need_arch(params, "llama")
    if params.get("n_future_tokens", 1) != 1:
        raise TransformError("arch llama has one prediction head; n_future_tokens must be 1 or absent",
                             where="params.n_future_tokens", fix="use arch: mtp for multi-token prediction")
    c = {**LLAMA_DEFAULTS, **{k: v for k, v in (base or {}).items() if k not in _HF_DROPPED}}
    ffn = ffn_hidden_dim(params["dim"], params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    c.update({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": params["dim"], "num_hidden_layers": params["n_layers"],
        "num_attention_heads": params["n_heads"], "num_key_value_heads": params.get("n_kv_heads", params["n_heads"]),
        "intermediate_size": params.get("intermediate_size", ffn), "vocab_size": params["vocab_size"],
        "torch_dtype": params["dtype"], "tie_word_embeddings": False,
    })
    for key in ("norm_eps", "rope_theta"):
        if key in params:
            c["rms_norm_eps" if key == "norm_eps" else key] = params[key]
    return c


def micro_config(params: Mapping, base: Mapping | None = None) -> dict:
    """The model config (Meta params.json or HF config.json) a micro spec implies."""
    return micro_meta_params(params, base) if params["arch"] == "mtp" else micro_llama_config(params, base)


def micro_shapes(params: Mapping) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a micro spec, sorted by name (the file's order)."""
    try:
        return expected_shapes(params["arch"], micro_config(params))
    except ValueError as e:
        raise TransformError(str(e), where="params", fix="choose dims that divide evenly") from None


def _need_arch(params: Mapping, arch: str) -> None:
    if params.get("arch") != arch:
        raise TransformError(f"this transform needs arch {arch}, the spec says {params.get('arch')!r}",
                             where="params.arch", fix=f"set arch: {arch} or use the other config transform")


# ---- the safetensors layout ------------------------------------------------------------------------

def micro_specs(params: Mapping) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (safetensors dtype, shape) of a micro spec: what the writer's header declares."""
    st = dtype_name(params["dtype"])
    return {name: (st, shape) for name, shape in micro_shapes(params).items()}


def predict_micro_size(params: Mapping) -> int:
    """Exact byte size of the micro model file a spec implies: the writer's header plus tensor bytes."""
    specs = micro_specs(params)
    return len(encode_header(specs, METADATA)) + sum(expected_nbytes(d, s) for d, s in specs.values())


# ---- the weights -----------------------------------------------------------------------------------

def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded float32 init: N(0, 0.02) for matrices, ones for norm weights; independent of order."""
    import torch

    if len(shape) == 1:
        return torch.ones(shape)
    # A per-tensor seed derived from (seed, name): adding or reordering tensors changes no other tensor.
    derived = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(derived)) * 0.02


def base_name_map(params: Mapping, base_names) -> dict[str, str]:
    """micro tensor name -> base tensor name, keeping each block's role.

    mtp: trunk `layers.i` <- base `layers.i`; the first prediction head (micro `layers[-1]`)
    <- base `layers[-1]`; `extra_heads.j` <- base `extra_heads.j`. llama: same names.
    """
    shapes = micro_shapes(params)
    names = set(base_names)
    emb = "tok_embeddings.weight" if params["arch"] == "mtp" else "model.embed_tokens.weight"
    if emb not in names:
        raise TransformError(f"the base has no {emb}: it is not a {params['arch']}-named checkpoint",
                             where="base", fix="use a Meta-named base for arch mtp, an HF-named one for llama")
    if params["arch"] == "llama":
        return {n: n for n in shapes}
    micro_layers = block_count(shapes, "layers.")
    base_layers, base_extra = block_count(names, "layers."), block_count(names, "extra_heads.")
    head = f"layers.{micro_layers - 1}."
    mapping = {n: f"layers.{base_layers - 1}.{n[len(head):]}" if n.startswith(head) else n for n in shapes}
    need_extra = block_count(shapes, "extra_heads.")
    if need_extra > base_extra or micro_layers > base_layers:
        raise TransformError(f"the micro spec needs {micro_layers} layers and {need_extra} extra heads; the base has "
                             f"{base_layers} and {base_extra}", where="base",
                             fix="lower n_layers / n_future_tokens, or use init: random")
    return mapping


def sliced_tensor(base: TensorFile, base_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The leading `shape` slice of a base tensor, reading only its first rows from disk (no mapping)."""
    if base_name not in base:
        raise TransformError(f"the base has no tensor {base_name}", where="base",
                             fix="use a base with the same layout, or init: random")
    have = base[base_name].shape
    if len(have) != len(shape) or any(h < s for h, s in zip(have, shape)):
        raise TransformError(f"base tensor {base_name} has shape {list(have)}; cannot cut {list(shape)} from it",
                             where="base", fix="make the micro spec no larger than the base")
    try:
        return base.read_leading(base_name, shape)
    except ResourceError:
        raise
    except ReconcileError as e:
        raise TransformError(e.message, where="base", fix=e.fix) from None


def _check_base_config(params: Mapping, base_config: dict, base_shapes: Mapping) -> None:
    """The base config, when given, must be the base's: same embedding shape."""
    emb = "tok_embeddings.weight" if params["arch"] == "mtp" else "model.embed_tokens.weight"
    dim_key, vocab_key = ("dim", "vocab_size") if params["arch"] == "mtp" else ("hidden_size", "vocab_size")
    shape = base_shapes.get(emb)
    want = (base_config.get(vocab_key), base_config.get(dim_key))
    if shape is not None and tuple(shape) != want:
        raise TransformError(f"config says ({vocab_key}, {dim_key}) = {want} but base {emb} is {list(shape)}",
                             where="config", fix="give the config that belongs to the base")


def _write(out, specs: Mapping[str, tuple[str, tuple[int, ...]]], tensor_for) -> None:
    """Stream every tensor through the shared writer (it casts to the declared dtype slice by slice).

    The writer's per-tensor sha256s become `out.tensors`, the manifest apply records (no re-read).
    """
    manifest = {}
    with out.open() as f:
        writer = SafetensorsWriter(f, specs, METADATA)
        for name in writer.order:
            sha, _ = writer.write(name, tensor_for(name, specs[name][1]))
            manifest[name] = {"dtype": specs[name][0], "shape": list(specs[name][1]), "sha256": sha}
        writer.close()
    out.tensors = dict(sorted(manifest.items()))


# Version 2: the header is safetensors_io's (save_file's entry key order), no longer a sorted-keys copy.
@transform("micro_model", "2", inputs={"base": "optional-file", "config": "optional-file"},
           params_schema=MODEL_SCHEMA, predict_size=predict_micro_size)
def micro_model(inputs, params, out):
    """A micro MTP or Llama safetensors: leading slices of a real base (init: slice) or seeded (random)."""
    specs = micro_specs(params)
    shapes = {name: shape for name, (_, shape) in specs.items()}
    base = inputs.get("base")
    if params["init"] == "slice" and base is None:
        raise TransformError("init: slice needs a base checkpoint", where="inputs.base",
                             fix="add inputs.base (a safetensors file), or use init: random")
    if params["init"] == "random":
        _write(out, specs, lambda name, shape: random_tensor(name, shape, params.get("seed", 0)))
        return {"n_params": n_params(shapes), "init": "random"}
    return _write_sliced(inputs, params, out, specs, shapes)


def _write_sliced(inputs, params, out, specs, shapes) -> dict:
    try:
        base_shapes = {k: s for k, (_, s) in read_summary(inputs["base"]).tensors.items()}
    except HeaderError as e:
        raise TransformError(str(e), where="base", fix="point base at a safetensors checkpoint") from None
    base_config = _base_config(inputs)
    if base_config is not None:
        _check_base_config(params, base_config, base_shapes)
    mapping = base_name_map(params, base_shapes)
    with open_source(inputs["base"], "base") as base:
        _write(out, specs, lambda name, shape: sliced_tensor(base, mapping[name], shape))
    return {"n_params": n_params(shapes), "init": "slice",
            "renamed": {k: v for k, v in sorted(mapping.items()) if k != v}}


def _base_config(inputs) -> dict | None:
    return read_json_object(inputs["config"], "config") if inputs.get("config") is not None else None


@transform("micro_params", "1", inputs={"config": "optional-file"}, params_schema=CONFIG_SCHEMA)
def micro_params(inputs, params, out):
    """Meta params.json of an mtp micro spec (norm_eps / rope_theta from the base's params.json if given)."""
    micro_shapes(params)  # refuse a spec the model cannot represent
    cfg = micro_meta_params(params, _base_config(inputs))
    with out.open() as f:
        f.write(pretty_json_bytes(cfg))


@transform("micro_hf_config", "1", inputs={"config": "optional-file"}, params_schema=CONFIG_SCHEMA)
def micro_hf_config(inputs, params, out):
    """HF LlamaForCausalLM config.json of a llama micro spec (other fields from the base's config.json)."""
    micro_shapes(params)
    cfg = micro_llama_config(params, _base_config(inputs))
    with out.open() as f:
        f.write(pretty_json_bytes(cfg))
