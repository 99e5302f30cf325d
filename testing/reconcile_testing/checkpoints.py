"""Deterministic miniature (and one large) checkpoints with the REAL key layouts.

  * `make_meta_checkpoint`: Meta multi-token-prediction folder (`consolidated.pth` + `params.json`).
  * `make_hf_shards`: HF Llama sharded checkpoint (`.bin` or `.safetensors` shards, a real-shaped
    index with `metadata.total_size` and `weight_map`, `config.json`), legacy `inv_freq` buffers included.
  * `make_large_meta_checkpoint`: a Meta-layout checkpoint of at least N bytes (benchmarks), written
    with memory bounded by its largest tensor.

`save_torch_streaming` writes with `torch.save` itself (public API, deterministic bytes: torch
derives the serialization id from the content). torch.save needs every tensor at once, so the
tensors are file-backed (`torch.from_file` on scratch files next to the output): each is filled in
place and its pages go to disk, not to anonymous memory, so memory stays bounded by what the
kernel keeps cached; the scratch files (the checkpoint's size again, on disk) go when it is written.
Values come from a generator seeded by (seed, tensor name), so a tensor's values do not depend on
which other tensors exist.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from reconciler.models.checkpoint_layout import ffn_hidden_dim, hf_llama_shapes, meta_shapes
from reconciler.models.safetensors_io import SafetensorsWriter, dtype_name

SMALL_META_PARAMS = {"dim": 64, "ffn_dim_multiplier": 1.0, "multiple_of": 32, "n_future_tokens": 4,
                     "n_heads": 4, "n_kv_heads": 4, "n_layers": 6, "norm_eps": 1e-05, "rope_theta": 10000.0,
                     "vocab_size": 512}
SMALL_HF_CONFIG = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
                   "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 172,
                   "max_position_embeddings": 256, "model_type": "llama", "num_attention_heads": 4,
                   "num_hidden_layers": 3, "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1,
                   "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                   "torch_dtype": "float32", "transformers_version": "4.28.1", "use_cache": True,
                   "vocab_size": 512}


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor RNG seed derived from (seed, name)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def fill_weights(seed: int) -> Callable[[str, torch.Tensor], None]:
    """An in-place filler: norms ~ 1, inv_freq as RoPE computes it, other weights ~ N(0, 0.02)."""

    def fill(name: str, t: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(tensor_seed(seed, name))
        if name.endswith(("inv_freq", "rope.freqs")):
            half = t.numel()
            t.copy_(1.0 / (10000.0 ** (torch.arange(0, 2 * half, 2, dtype=torch.float64) / (2 * half))))
        elif "norm" in name:
            t.normal_(1.0, 0.02, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)

    return fill


def save_torch_streaming(path: str | Path, specs: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
                         fill: Callable[[str, torch.Tensor], None]) -> int:
    """Write a `torch.load`-able state dict `name -> tensor(shape, dtype)` with `torch.save`.

    Each tensor is file-backed (`torch.from_file`, shared) and filled by `fill(name, tensor)`, so
    its bytes live in the page cache, not in this process's anonymous memory. Returns the file size.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".scratch-") as scratch:
        state = {}
        for i, (name, (shape, dtype)) in enumerate(specs.items()):
            t = torch.from_file(f"{scratch}/{i}", shared=True, size=math.prod(shape), dtype=dtype).view(shape)
            fill(name, t)
            state[name] = t
        torch.save(state, path)
        del state
    return path.stat().st_size


def _write_json(path: Path, value, indent: int, newline: bool) -> None:
    path.write_text(json.dumps(value, indent=indent, sort_keys=True) + ("\n" if newline else ""))


def make_meta_checkpoint(dir: str | Path, params: Mapping | None = None, dtype: torch.dtype = torch.float32,
                         seed: int = 0, rope_freqs: bool = False) -> dict[str, Path]:
    """Write `consolidated.pth` + `params.json` in `dir` (Meta MTP layout); returns their paths.

    `params` defaults to SMALL_META_PARAMS; `rope_freqs` adds the legacy `rope.freqs` buffer.
    params.json is written like the real one: sorted keys, 4-space indent, no trailing newline.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    params = dict(params or SMALL_META_PARAMS)
    specs = {name: (tuple(shape), dtype) for name, shape in meta_shapes(params).items()}
    if rope_freqs:
        specs["rope.freqs"] = ((params["dim"] // params["n_heads"] // 2,), torch.float32)
    ckpt = dir / "consolidated.pth"
    save_torch_streaming(ckpt, specs, fill_weights(seed))
    _write_json(dir / "params.json", params, 4, False)
    return {"checkpoint": ckpt, "params": dir / "params.json"}


def hf_shard_plan(config: Mapping, n_shards: int) -> list[list[str]]:
    """HF state-dict order (embed, layers, norm, lm_head) cut into n_shards runs of similar bytes."""
    shapes = hf_llama_shapes(config, inv_freq=True)
    order = ["model.embed_tokens.weight"]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        order += [p + k for k in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                  "self_attn.o_proj.weight", "self_attn.rotary_emb.inv_freq",
                                  "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                                  "input_layernorm.weight", "post_attention_layernorm.weight")]
    order += [k for k in ("model.norm.weight", "lm_head.weight") if k in shapes]
    total = sum(math.prod(shapes[k]) for k in order)
    shards: list[list[str]] = [[] for _ in range(n_shards)]
    seen = 0
    for k in order:
        shards[min(n_shards - 1, seen * n_shards // total)].append(k)
        seen += math.prod(shapes[k])
    return [s for s in shards if s]


def make_hf_shards(dir: str | Path, config: Mapping | None = None, fmt: str = "bin", n_shards: int = 2,
                   seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Write an HF Llama sharded checkpoint in `dir`: shards, index and config.json.

    `fmt` is "bin" (`pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json`) or
    "safetensors" (`model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`).
    Returns {"index": Path, "shards": [Path, ...], "config": Path}.
    """
    if fmt not in ("bin", "safetensors"):
        raise ValueError(f"fmt must be 'bin' or 'safetensors', not {fmt!r}")
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config = dict(config or SMALL_HF_CONFIG)
    shapes = hf_llama_shapes(config, inv_freq=True)
    plan = hf_shard_plan(config, n_shards)
    stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
    fill = fill_weights(seed)
    weight_map, paths, total = {}, [], 0
    for i, keys in enumerate(plan, 1):
        path = dir / f"{stem}-{i:05d}-of-{len(plan):05d}.{ext}"
        # inv_freq is a float32 buffer even in half-precision checkpoints
        specs = {k: (tuple(shapes[k]), torch.float32 if k.endswith("inv_freq") else dtype) for k in keys}
        if fmt == "bin":
            save_torch_streaming(path, specs, fill)
        else:
            _save_safetensors(path, specs, fill)
        for k, (shape, dt) in specs.items():
            weight_map[k] = path.name
            total += math.prod(shape) * dt.itemsize
        paths.append(path)
    index = dir / f"{stem}.{ext}.index.json"
    _write_json(index, {"metadata": {"total_size": total}, "weight_map": weight_map}, 2, True)
    _write_json(dir / "config.json", config, 2, True)
    return {"index": index, "shards": paths, "config": dir / "config.json"}


def _save_safetensors(path: Path, specs, fill) -> None:
    """Write one safetensors shard with the streaming writer (same bytes as save_file)."""
    with open(path, "wb") as f:
        w = SafetensorsWriter(f, {k: (dtype_name(dt), shape) for k, (shape, dt) in specs.items()})
        for name in w.order:
            t = torch.empty(specs[name][0], dtype=specs[name][1])
            fill(name, t)
            w.write(name, t)
        w.close()


def large_meta_params(min_bytes: int, dim: int = 2048, vocab_size: int = 32000, n_future_tokens: int = 4,
                      bytes_per_param: int = 4) -> dict:
    """Meta params with the fewest layers whose checkpoint holds at least `min_bytes` of weights."""
    hidden = ffn_hidden_dim(dim, 256, 1.0)
    block = 4 * dim * dim + 3 * dim * hidden + 2 * dim
    fixed = 2 * vocab_size * dim + dim
    n_blocks = max(n_future_tokens, math.ceil((min_bytes / bytes_per_param - fixed) / block))
    return {"dim": dim, "ffn_dim_multiplier": 1.0, "multiple_of": 256, "n_future_tokens": n_future_tokens,
            "n_heads": max(1, dim // 128), "n_kv_heads": max(1, dim // 128), "n_layers": n_blocks,
            "norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": vocab_size}


def make_large_meta_checkpoint(dir: str | Path, min_bytes: int, dim: int = 2048, vocab_size: int = 32000,
                               seed: int = 0) -> dict:
    """Write a float32 Meta-layout checkpoint of at least `min_bytes` (e.g. 3e9) in `dir`.

    Memory stays at about the largest tensor (vocab_size x dim x 4 bytes: 262 MB at the
    defaults), not the file size. Returns {"checkpoint", "params", "size", "n_params"}.
    """
    params = large_meta_params(int(min_bytes), dim=dim, vocab_size=vocab_size)
    paths = make_meta_checkpoint(dir, params, torch.float32, seed)
    n = sum(math.prod(s) for s in meta_shapes(params).values())
    return {**paths, "size": paths["checkpoint"].stat().st_size, "n_params": n}
