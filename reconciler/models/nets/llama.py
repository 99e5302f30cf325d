"""Hugging Face-named Llama (`LlamaForCausalLM` key names), built from an HF `config.json`.

Same maths as transformers' Llama for the configs the storage holds (no rope scaling, no
attention or MLP bias): pre-norm blocks, RMSNorm, run-time RoPE in HF's rotate-half layout
(HF checkpoints converted from Meta's permute wq/wk rows to match it), SwiGLU. The legacy
`self_attn.rotary_emb.inv_freq` buffers old checkpoints carry are not part of the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .configs import hf_config_with_defaults
from .mtp import RMSNorm, causal_attention, rope_angles


def apply_rope_half(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half RoPE on (b, s, h, d): pairs are (x[i], x[i + d/2])."""
    xf = x.float()
    emb = torch.cat((angles, angles), dim=-1)[None, :, None, :]
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * emb.cos() + rotated * emb.sin()).type_as(x)


class LlamaAttention(nn.Module):
    """`self_attn.{q,k,v,o}_proj` without bias; GQA when num_key_value_heads < num_attention_heads."""

    def __init__(self, hidden: int, n_heads: int, n_kv_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over (b, s, hidden)."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        q, k = apply_rope_half(q, angles), apply_rope_half(k, angles)
        return self.o_proj(causal_attention(q, k, v).reshape(b, s, -1))


class LlamaMLP(nn.Module):
    """down_proj(silu(gate_proj x) * up_proj x)."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated feed-forward."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """input_layernorm, self_attn, post_attention_layernorm, mlp."""

    def __init__(self, c: Mapping):
        super().__init__()
        self.self_attn = LlamaAttention(c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                                        c["head_dim"])
        self.mlp = LlamaMLP(c["hidden_size"], c["intermediate_size"])
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Two residual sub-layers."""
        h = x + self.self_attn(self.input_layernorm(x), angles)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """The `model.` prefix: embed_tokens, layers, norm."""

    def __init__(self, c: Mapping):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(LlamaDecoderLayer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    """HF-named Llama causal LM built from a `config.json` mapping."""

    def __init__(self, config: Mapping):
        super().__init__()
        self.config = hf_config_with_defaults(config)
        self.model = LlamaModel(self.config)
        self.lm_head = nn.Linear(self.config["hidden_size"], self.config["vocab_size"], bias=False)
        if self.config["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, seq, vocab)."""
        c = self.config
        angles = rope_angles(c["head_dim"], tokens.shape[1], c["rope_theta"], tokens.device)
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            h = layer(h, angles)
        return self.lm_head(self.model.norm(h))
