"""Meta's multi-token-prediction LLaMA-2 transformer, with Meta's state-dict key names.

Faithful to `facebook/multi-token-prediction` `llama/model.py` (FORMATS.md §1) minus model
parallelism and the KV cache: `layers` holds `n_layers - n_future_tokens + 1` blocks, of which
`layers[:-1]` is the shared trunk; the prediction heads are `[layers[-1]] + extra_heads`, each
applied to the trunk output (not chained), stacked, then the one shared `norm` and `output`.
RoPE is computed at run time (interleaved pairs, Meta's complex layout), so nothing but weights
lives in the state dict.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# The SwiGLU width rule and the legacy `rope.freqs` buffer are layout facts: checkpoint_layout owns them.
from ..checkpoint_layout import LEGACY_META_KEYS, ffn_hidden_dim
from .configs import meta_params_with_defaults

LEGACY_KEYS = LEGACY_META_KEYS  # an old buffer some Meta checkpoints carry; the model recomputes it


class RMSNorm(nn.Module):
    """Weight-only RMSNorm, normalised in float32 and cast back (as Meta and HF do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension by its root mean square, then scale."""
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_angles(head_dim: int, seq_len: int, theta: float, device: torch.device) -> torch.Tensor:
    """(seq, head_dim // 2) rotation angles `pos * theta^(-2i/head_dim)`, in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    return torch.outer(pos, inv_freq)


def apply_rope_interleaved(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate (x[2i], x[2i+1]) pairs: Meta's `view_as_complex` layout. x is (b, s, h, d)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = angles.cos()[None, :, None, :]
    sin = angles.sin()[None, :, None, :]
    even, odd = xf[..., 0], xf[..., 1]
    out = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over (b, s, h, d) inputs; kv heads are repeated for GQA as Meta/HF do."""
    n_rep = q.shape[2] // k.shape[2]
    if n_rep > 1:
        # Head i uses kv head i // n_rep (Meta's and HF's repeat_kv), hence repeat_interleave.
        k = k.repeat_interleave(n_rep, dim=2)
        v = v.repeat_interleave(n_rep, dim=2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Bias-free multi-head attention (GQA when n_kv_heads < n_heads), Meta names wq/wk/wv/wo."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Self-attention over a (b, s, dim) input with run-time RoPE angles."""
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.n_heads, self.head_dim)
        k = self.wk(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = apply_rope_interleaved(q, angles), apply_rope_interleaved(k, angles)
        return self.wo(causal_attention(q, k, v).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated feed-forward."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm LLaMA-2 block: attention_norm, attention, ffn_norm, feed_forward."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, eps: float):
        super().__init__()
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.feed_forward = FeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Two residual sub-layers."""
        h = x + self.attention(self.attention_norm(x), angles)
        return h + self.feed_forward(self.ffn_norm(h))


class MTPTransformer(nn.Module):
    """Meta's multi-token-prediction transformer, built from a Meta `params.json` mapping."""

    def __init__(self, params: Mapping):
        super().__init__()
        p = meta_params_with_defaults(params)
        self.params = p
        n_future = p["n_future_tokens"]
        hidden = ffn_hidden_dim(p["dim"], p["multiple_of"], p["ffn_dim_multiplier"])

        def block() -> TransformerBlock:
            return TransformerBlock(p["dim"], p["n_heads"], p["n_kv_heads"], hidden, p["norm_eps"])

        self.tok_embeddings = nn.Embedding(p["vocab_size"], p["dim"])
        self.layers = nn.ModuleList(block() for _ in range(p["n_layers"] - n_future + 1))
        self.extra_heads = nn.ModuleList(block() for _ in range(n_future - 1))
        self.norm = RMSNorm(p["dim"], p["norm_eps"])
        self.output = nn.Linear(p["dim"], p["vocab_size"], bias=False)

    def forward(self, tokens: torch.Tensor, return_all_heads: bool = False) -> torch.Tensor:
        """Logits (batch, seq, n_heads_used, vocab): 1 head, or all n_future_tokens heads."""
        h = self.tok_embeddings(tokens)
        angles = rope_angles(self.params["dim"] // self.params["n_heads"], tokens.shape[1],
                             self.params["rope_theta"], tokens.device)
        for layer in self.layers[:-1]:
            h = layer(h, angles)
        trunk = h
        heads = [self.layers[-1], *self.extra_heads]
        used = heads if return_all_heads else heads[:1]
        latents = torch.stack([head(trunk, angles) for head in used], dim=-2)
        return self.output(self.norm(latents))
