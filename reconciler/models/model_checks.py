"""Model checks: configs agree with the weights (`config_consistent`); the weights load and run (`loads`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import CheckFailed
from ..registry import check
from .checkpoint_layout import ffn_hidden_dim
from .nets import ARCHES, HeaderError, WeightsSummary, block_count, load_strict, read_summary
from .nets.configs import meta_params_with_defaults

# A fixed code prompt: tokenised by the real tokenizer, so the ids exercise real vocabulary rows.
PROMPT = "def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n"
DEFAULT_MAX_PARAMS = 2_000_000_000  # ~8 GB in float32: above this a CPU forward pass is refused


def _load_file(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except FileNotFoundError:
        raise CheckFailed(f"{label} is missing at {path}") from None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise CheckFailed(f"{label} cannot be parsed: {e}") from None


def _summary(path: Path, label: str) -> WeightsSummary:
    try:
        return read_summary(path)
    except (HeaderError, FileNotFoundError) as e:
        raise CheckFailed(f"{label} is not a readable safetensors file: {e}") from None


# ---- facts each source states, under one vocabulary of field names --------------------------------

def weights_facts(w: WeightsSummary) -> dict[str, Any]:
    """Sizes the tensor shapes imply (Meta or HF naming), plus dtype and parameter count."""
    facts: dict[str, Any] = {"dtype": w.dtype, "n_params": w.n_params}
    if w.shape("tok_embeddings.weight"):
        emb, layer0 = w.shape("tok_embeddings.weight"), "layers.0."
        extra = block_count(w.tensors, "extra_heads.")
        facts.update(num_hidden_layers=block_count(w.tensors, "layers.") + extra, n_future_tokens=extra + 1)
        ffn, k = w.shape(layer0 + "feed_forward.w1.weight"), w.shape(layer0 + "attention.wk.weight")
    elif w.shape("model.embed_tokens.weight"):
        emb, layer0 = w.shape("model.embed_tokens.weight"), "model.layers.0."
        facts["num_hidden_layers"] = block_count(w.tensors, "model.layers.")
        ffn, k = w.shape(layer0 + "mlp.gate_proj.weight"), w.shape(layer0 + "self_attn.k_proj.weight")
    else:
        return facts
    facts.update(vocab_size=emb[0], hidden_size=emb[1])
    if ffn:
        facts["intermediate_size"] = ffn[0]
    if k:
        facts["kv_dim"] = k[0]
    return facts


def _with_kv_dim(facts: dict[str, Any]) -> dict[str, Any]:
    h, n, kv = facts.get("hidden_size"), facts.get("num_attention_heads"), facts.get("num_key_value_heads")
    if h and n and kv:
        facts["kv_dim"] = kv * (h // n)  # what wk / k_proj rows must be: heads are invisible in shapes alone
    return facts


def params_facts(p: dict) -> dict[str, Any]:
    """Facts of a Meta params.json, renamed to HF field names."""
    try:
        p = meta_params_with_defaults(p)
    except ValueError as e:
        raise CheckFailed(str(e)) from None
    return _with_kv_dim({
        "hidden_size": p["dim"], "num_hidden_layers": p["n_layers"], "num_attention_heads": p["n_heads"],
        "num_key_value_heads": p["n_kv_heads"], "vocab_size": p["vocab_size"],
        "intermediate_size": ffn_hidden_dim(p["dim"], p["multiple_of"], p["ffn_dim_multiplier"]),
        "n_future_tokens": p["n_future_tokens"], "rope_theta": p["rope_theta"], "rms_norm_eps": p["norm_eps"],
    })


FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "n_future_tokens", "rope_theta", "rms_norm_eps", "dtype", "n_params")


def mapping_facts(d: dict, dtype_key: str) -> dict[str, Any]:
    """Facts of an adapter YAML, metadata.json or HF config.json: the known fields it carries."""
    facts = {k: d[k] for k in FIELDS if k in d and d[k] is not None}
    if d.get(dtype_key) is not None:
        facts["dtype"] = str(d[dtype_key]).removeprefix("torch.")
    if dtype_key == "torch_dtype":  # an HF config: transformers' defaults for absent keys
        facts.setdefault("rope_theta", 10000.0)
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            facts["num_key_value_heads"] = d["num_attention_heads"]
    return _with_kv_dim(facts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def disagreements(sources: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Each field on which two sources differ: `field: A says x, B says y` (first stating source wins)."""
    problems = []
    for field in (*FIELDS, "kv_dim"):
        stated = [(label, facts[field]) for label, facts in sources if field in facts]
        for label, value in stated[1:]:
            if not _same(stated[0][1], value):
                problems.append(f"{field}: {stated[0][0]} says {stated[0][1]!r}, {label} says {value!r}")
    return problems


CONSISTENT_SCHEMA = {"type": "object", "additionalProperties": False, "minProperties": 1,
                     "properties": {k: {"type": "string"} for k in ("params", "adapter", "metadata", "config")}}


@check("config_consistent", "1", refs=("params", "adapter", "metadata", "config"), params_schema=CONSISTENT_SCHEMA)
def config_consistent(path, params, ctx):
    """The safetensors weights agree with params.json, meta_adapter.yaml, metadata.json and config.json."""
    sources = [(f"weights {ctx.artifact}", weights_facts(_summary(Path(path), ctx.artifact)))]
    readers = {"params": params_facts, "adapter": lambda d: mapping_facts(d, "dtype"),
               "metadata": lambda d: mapping_facts(d, "dtype"), "config": lambda d: mapping_facts(d, "torch_dtype")}
    for ref in ("params", "adapter", "metadata", "config"):
        if ref in params:
            data = _load_file(ctx.path(params[ref]), params[ref])
            if not isinstance(data, dict):
                raise CheckFailed(f"{params[ref]} is not a mapping")
            sources.append((params[ref], readers[ref](data)))
    problems = disagreements(sources)
    if problems:
        raise CheckFailed("; ".join(problems))
    compared = sorted({f for _, facts in sources[1:] for f in facts})
    return f"{len(sources)} sources agree on {', '.join(compared)}"


# ---- loads -------------------------------------------------------------------------------------------

LOADS_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["arch", "config", "tokenizer"],
                "properties": {"arch": {"enum": list(ARCHES)}, "config": {"type": "string"},
                               "tokenizer": {"type": "string"},
                               "max_params": {"type": "number", "exclusiveMinimum": 0}}}


def prompt_ids(tokenizer: Path, vocab_size: int) -> list[int]:
    """BOS + the SentencePiece ids of the fixed prompt; every id must be below the model's vocab."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    except (OSError, RuntimeError) as e:
        raise CheckFailed(f"tokenizer {tokenizer.name} cannot be loaded: {e}") from None
    ids = ([sp.bos_id()] if sp.bos_id() >= 0 else []) + sp.encode(PROMPT)
    too_big = [i for i in ids if i >= vocab_size]
    if too_big:
        raise CheckFailed(f"token id {max(too_big)} from the tokenizer is outside the model's vocab_size {vocab_size}")
    return ids


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@check("loads", "1", refs=("config", "tokenizer"), params_schema=LOADS_SCHEMA)
def loads(path, params, ctx):
    """The weights load strictly into the model the config describes and give finite logits of the right shape."""
    import torch

    arch, cfg = params["arch"], _load_file(ctx.path(params["config"]), params["config"])
    if not isinstance(cfg, dict):
        raise CheckFailed(f"{params['config']} is not a JSON object")
    w = _summary(Path(path), ctx.artifact)
    device = _device()
    limit = params.get("max_params", DEFAULT_MAX_PARAMS)
    if device == "cpu" and w.n_params > limit:
        raise CheckFailed(f"{w.n_params:,} parameters is above max_params {int(limit):,} for a CPU forward pass "
                          f"(no CUDA device here); refusing to load it rather than run out of memory",
                          fix="run the check on a machine with CUDA, or raise max_params if the RAM is there")
    vocab = cfg.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise CheckFailed(f"{params['config']}: vocab_size must be a positive integer, got {vocab!r}")
    ids = prompt_ids(ctx.path(params["tokenizer"]), vocab)
    try:
        model = load_strict(arch, cfg, path, device)
    except ValueError as e:
        raise CheckFailed(f"strict load into the {arch} model from {params['config']} failed: {e}") from None
    except torch.cuda.OutOfMemoryError:
        raise CheckFailed(f"out of GPU memory loading {w.n_params:,} parameters") from None
    tokens = torch.tensor([ids], device=device)
    with torch.inference_mode():
        logits = model(tokens, return_all_heads=True) if arch == "mtp" else model(tokens)
    n_future = model.params["n_future_tokens"] if arch == "mtp" else None
    want = (1, len(ids), n_future, vocab) if arch == "mtp" else (1, len(ids), vocab)
    if tuple(logits.shape) != want:
        raise CheckFailed(f"logits have shape {tuple(logits.shape)}, expected {want}")
    bad = (~torch.isfinite(logits)).sum().item()
    if bad:
        raise CheckFailed(f"{bad} of {logits.numel()} logits are not finite ({w.dtype} on {device})")
    return f"loads strictly; logits {want} finite ({w.dtype} on {device})"
