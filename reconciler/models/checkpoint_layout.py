"""Expected state-dict key sets and shapes, computed from a model's config alone.

Two layouts (see /work/shared/FORMATS.md §1-2):
  * Meta multi-token-prediction `params.json` (dim, n_layers, n_future_tokens, ...): trunk
    `layers.{i}` (n_layers - n_future_tokens + 1 blocks) plus `extra_heads.{j}`
    (n_future_tokens - 1 blocks), LLaMA-2 blocks, no tied weights; 291 keys for 7B_1T_4.
  * Hugging Face Llama `config.json` (hidden_size, num_hidden_layers, ...), with the legacy
    `self_attn.rotary_emb.inv_freq` buffers optional (older checkpoints carry them).
A `None` dimension means "not knowable from the config" (Meta's vocab_size -1) and matches any size.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

from ..errors import ReconcileError

Shape = tuple  # of int | None
LEGACY_META_KEYS = ("rope.freqs",)  # an old precomputed RoPE buffer: not a weight, always left out
HF_INV_FREQ = "*.rotary_emb.inv_freq"


class LayoutError(ReconcileError):
    """A config that cannot describe a model (missing or inconsistent fields)."""


def ffn_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's SwiGLU width rule: 11008 for dim 4096 (multiple_of 256), 1536 for dim 512."""
    h = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)  # integer ceil: exact at any size


# Upper bounds on config sizes, checked before any key list is built from them: an upstream or
# hand-written config with n_layers 1,000,000 must be one clear error, not minutes and gigabytes
# of expected-key dicts. Several times the largest public LLaMA-family models (405B: 126 layers,
# dim 16384, 128 heads; vocabularies up to 256k).
MAX_LAYERS = 1024
MAX_DIM = 1 << 17
MAX_HEADS = 4096
MAX_VOCAB = 1 << 22
CONFIG_LIMITS = {"n_layers": MAX_LAYERS, "num_hidden_layers": MAX_LAYERS, "n_future_tokens": MAX_LAYERS,
                 "dim": MAX_DIM, "hidden_size": MAX_DIM, "intermediate_size": 1 << 20, "multiple_of": MAX_DIM,
                 "head_dim": MAX_DIM, "n_heads": MAX_HEADS, "n_kv_heads": MAX_HEADS,
                 "num_attention_heads": MAX_HEADS, "num_key_value_heads": MAX_HEADS, "vocab_size": MAX_VOCAB}


def check_limit(key: str, v: int) -> None:
    """LayoutError when an integer config field is above its bound in CONFIG_LIMITS."""
    top = CONFIG_LIMITS.get(key)
    if top is not None and v > top:
        raise LayoutError(f"config field {key} is {v:,}; at most {top:,} is accepted (no real model is that big)")


def _int(cfg: Mapping, key: str, default=None) -> int:
    v = cfg.get(key, default)
    if type(v) is not int:
        raise LayoutError(f"config field {key} must be an integer, got {v!r}")
    check_limit(key, v)
    return v


def is_meta_params(cfg: Mapping) -> bool:
    """True for a Meta `params.json` layout, False for an HF `config.json` (by their keys)."""
    return "dim" in cfg and "n_layers" in cfg


def _block(prefix: str, dim: int, kv: int, hidden: int, q: str, k: str, v: str, o: str,
           w1: str, w2: str, w3: str, n1: str, n2: str) -> dict[str, Shape]:
    return {f"{prefix}{q}": (dim, dim), f"{prefix}{k}": (kv, dim), f"{prefix}{v}": (kv, dim),
            f"{prefix}{o}": (dim, dim), f"{prefix}{w1}": (hidden, dim), f"{prefix}{w2}": (dim, hidden),
            f"{prefix}{w3}": (hidden, dim), f"{prefix}{n1}": (dim,), f"{prefix}{n2}": (dim,)}


def meta_shapes(params: Mapping) -> dict[str, Shape]:
    """Key -> shape of a Meta (multi-token) LLaMA checkpoint described by `params.json`."""
    dim, n_layers, n_heads = _int(params, "dim"), _int(params, "n_layers"), _int(params, "n_heads")
    n_kv = _int(params, "n_kv_heads") if params.get("n_kv_heads") is not None else n_heads
    n_future = _int(params, "n_future_tokens") if params.get("n_future_tokens") is not None else 1
    if dim <= 0 or n_heads <= 0 or dim % n_heads or n_kv <= 0 or n_heads % n_kv:
        raise LayoutError(f"dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv} do not divide evenly")
    if not 1 <= n_future <= n_layers:
        raise LayoutError(f"n_future_tokens {n_future} must be between 1 and n_layers {n_layers}")
    vocab = params.get("vocab_size")
    vocab = vocab if type(vocab) is int and vocab > 0 else None  # -1 in old Meta params: from the tokenizer
    if vocab is not None:
        check_limit("vocab_size", vocab)
    hidden = ffn_hidden_dim(dim, _int(params, "multiple_of", 256), params.get("ffn_dim_multiplier"))
    kv = n_kv * (dim // n_heads)
    names = ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
             "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
             "attention_norm.weight", "ffn_norm.weight")
    out: dict[str, Shape] = {"tok_embeddings.weight": (vocab, dim)}
    for i in range(n_layers - n_future + 1):
        out.update(_block(f"layers.{i}.", dim, kv, hidden, *names))
    for j in range(n_future - 1):
        out.update(_block(f"extra_heads.{j}.", dim, kv, hidden, *names))
    out["norm.weight"] = (dim,)
    out["output.weight"] = (vocab, dim)
    return out


def hf_llama_shapes(config: Mapping, inv_freq: bool = False) -> dict[str, Shape]:
    """Key -> shape of an HF LlamaForCausalLM state dict; `inv_freq` adds the legacy RoPE buffers."""
    dim, n_layers = _int(config, "hidden_size"), _int(config, "num_hidden_layers")
    n_heads = _int(config, "num_attention_heads")
    n_kv = _int(config, "num_key_value_heads") if config.get("num_key_value_heads") is not None else n_heads
    if dim <= 0 or n_heads <= 0 or dim % n_heads or n_kv <= 0:
        raise LayoutError(f"hidden_size {dim} is not divisible by num_attention_heads {n_heads}")
    head_dim = config.get("head_dim") or dim // n_heads
    if type(head_dim) is not int:
        raise LayoutError(f"config field head_dim must be an integer, got {head_dim!r}")
    check_limit("head_dim", head_dim)
    hidden, vocab = _int(config, "intermediate_size"), _int(config, "vocab_size")
    names = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
             "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight",
             "input_layernorm.weight", "post_attention_layernorm.weight")
    out: dict[str, Shape] = {"model.embed_tokens.weight": (vocab, dim)}
    for i in range(n_layers):
        block = _block(f"model.layers.{i}.", dim, n_kv * head_dim, hidden, *names)
        block[f"model.layers.{i}.self_attn.q_proj.weight"] = (n_heads * head_dim, dim)
        block[f"model.layers.{i}.self_attn.o_proj.weight"] = (dim, n_heads * head_dim)
        out.update(block)
        if inv_freq:
            out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = (head_dim // 2,)
    out["model.norm.weight"] = (dim,)
    if not config.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (vocab, dim)
    return out


def shapes_for_config(cfg: Mapping) -> dict[str, Shape]:
    """Expected weights for either config layout (Meta params.json or HF config.json)."""
    if not isinstance(cfg, Mapping):
        raise LayoutError("config is not a JSON object")
    if is_meta_params(cfg):
        return meta_shapes(cfg)
    if "hidden_size" in cfg:
        return hf_llama_shapes(cfg)
    raise LayoutError("config is neither a Meta params.json (dim, n_layers) nor an HF config.json (hidden_size)")


def legacy_keys(cfg: Mapping) -> list[str]:
    """Patterns of non-weight buffers a checkpoint of this layout may carry and a check tolerates."""
    return list(LEGACY_META_KEYS) if is_meta_params(cfg) else [HF_INV_FREQ]


def n_params(shapes: Mapping[str, Shape]) -> int:
    """Total element count (None dimensions are not allowed here)."""
    return sum(math.prod(s) for s in shapes.values())


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a key matches a drop pattern: a glob (`*.rotary_emb.inv_freq`), an exact key,
    or a dotted suffix (`rotary_emb.inv_freq` matches `model.layers.0.self_attn.rotary_emb.inv_freq`)."""
    return any(fnmatch.fnmatchcase(name, p) or name.endswith("." + p) for p in patterns)


def shape_ok(got: tuple, want: Shape) -> bool:
    """Does a concrete shape satisfy an expected one (None = any size)?"""
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))


def first_mismatch(found: Mapping[str, tuple], expected: Mapping[str, Shape],
                   tolerated: Iterable[str] = ()) -> str | None:
    """The first problem (in key order) between found shapes and expected ones, or None.

    Keys matching `tolerated` patterns may be present or absent. Reports "missing tensor X",
    "unexpected tensor X" or "tensor X has shape [..], expected [..]", plus how many more problems.
    """
    tolerated = list(tolerated)
    problems = []
    for name in sorted(expected.keys() | found.keys()):
        if name not in found:
            if not matches(name, tolerated):
                problems.append(f"missing tensor {name} (shape {_fmt(expected[name])})")
        elif name not in expected:
            if not matches(name, tolerated):
                problems.append(f"unexpected tensor {name} (shape {_fmt(found[name])})")
        elif not shape_ok(tuple(found[name]), expected[name]):
            problems.append(f"tensor {name} has shape {_fmt(found[name])}, expected {_fmt(expected[name])}")
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return problems[0] + more


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
