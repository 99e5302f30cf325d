"""Config validation of the model zoo, without torch: defaults filled in, impossible configs refused.

Why apart from `mtp` / `llama`: the lock validator (micro-model `predict_size`), the config
transforms and the `config_consistent` check need only these rules, and importing the model
modules costs a torch import (seconds) on every `reconcile` command. The model modules
re-export these names, so `reconciler.models.mtp.meta_params_with_defaults` still works.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..checkpoint_layout import CONFIG_LIMITS, LEGACY_META_KEYS

META_LEGACY_KEYS = LEGACY_META_KEYS  # an old buffer some Meta checkpoints carry; the model recomputes it
LEGACY_SUFFIXES = (".rotary_emb.inv_freq",)  # old HF buffers that current loaders ignore


def is_legacy_key(name: str) -> bool:
    """True for a state-dict key that HF loaders ignore (recomputed RoPE buffers)."""
    return name.endswith(LEGACY_SUFFIXES)


def meta_params_with_defaults(params: Mapping) -> dict:
    """A Meta params.json mapping with Meta's ModelArgs defaults filled in (and checked)."""
    p = dict(params)
    for key in ("dim", "n_layers", "n_heads", "vocab_size"):
        if not isinstance(p.get(key), int) or p[key] <= 0:
            raise ValueError(f"params.json: {key} must be a positive integer, got {p.get(key)!r}")
        if p[key] > CONFIG_LIMITS[key]:
            raise ValueError(f"params.json: {key} {p[key]:,} is above the bound {CONFIG_LIMITS[key]:,}")
    p.setdefault("n_kv_heads", None)
    if p["n_kv_heads"] is None:
        p["n_kv_heads"] = p["n_heads"]
    p.setdefault("multiple_of", 256)
    p.setdefault("ffn_dim_multiplier", None)
    p.setdefault("norm_eps", 1e-5)
    p.setdefault("rope_theta", 10000.0)
    p.setdefault("n_future_tokens", 1)
    if p["dim"] % p["n_heads"] or p["n_heads"] % p["n_kv_heads"]:
        raise ValueError(f"params.json: dim {p['dim']}, n_heads {p['n_heads']} and n_kv_heads "
                         f"{p['n_kv_heads']} do not divide evenly")
    if not 1 <= p["n_future_tokens"] <= p["n_layers"]:
        raise ValueError(f"params.json: n_future_tokens {p['n_future_tokens']} must be in 1..n_layers")
    if (p["dim"] // p["n_heads"]) % 2:
        raise ValueError(f"params.json: head dim {p['dim'] // p['n_heads']} must be even for RoPE")
    return p


def hf_config_with_defaults(config: Mapping) -> dict:
    """An HF Llama config with transformers' defaults for absent keys (rope_theta 10000)."""
    c = dict(config)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(c.get(key), int) or c[key] <= 0:
            raise ValueError(f"config.json: {key} must be a positive integer, got {c.get(key)!r}")
        if c[key] > CONFIG_LIMITS[key]:
            raise ValueError(f"config.json: {key} {c[key]:,} is above the bound {CONFIG_LIMITS[key]:,}")
    if c.get("num_key_value_heads") is None:
        c["num_key_value_heads"] = c["num_attention_heads"]
    if c.get("head_dim") is None:
        c["head_dim"] = c["hidden_size"] // c["num_attention_heads"]
    c["rope_theta"] = c.get("rope_theta") or 10000.0
    c["rms_norm_eps"] = c.get("rms_norm_eps") or 1e-6
    c["tie_word_embeddings"] = bool(c.get("tie_word_embeddings", False))
    if c.get("rope_scaling"):
        raise ValueError(f"config.json: rope_scaling {c['rope_scaling']!r} is not supported by this small model")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError("config.json: attention_bias / mlp_bias are not supported by this small model")
    if c["num_attention_heads"] % c["num_key_value_heads"] or c["head_dim"] % 2:
        raise ValueError(f"config.json: num_attention_heads {c['num_attention_heads']}, num_key_value_heads "
                         f"{c['num_key_value_heads']} and head_dim {c['head_dim']} do not fit together")
    return c
