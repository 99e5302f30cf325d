"""The small model zoo (MTP, HF Llama), strict loading, the `loads` check and the stand-in tokenizer."""

from __future__ import annotations

import hashlib
import json

import pytest
import sentencepiece as spm
import torch
from reconcile_testing.tokenizer import tokenizer_model_bytes
from safetensors.torch import load_file, save_file

from reconciler.errors import CheckFailed
from reconciler.models import model_checks
from reconciler.models.model_configs import trainer_spec_facts
from reconciler.models.nets import (
    HeaderError,
    build_model,
    expected_shapes,
    key_problems,
    load_strict,
    read_summary,
)
from reconciler.models.nets.mtp import MTPTransformer, ffn_hidden_dim
from tests.test_micro import SMALL_LLAMA, SMALL_MTP, build, run_check

MTP_PARAMS = {"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300, "multiple_of": 32,
              "n_future_tokens": 3}
LLAMA_CONFIG = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4, "vocab_size": 300, "rms_norm_eps": 1e-5}


def _seeded(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def test_ffn_width_follows_the_llama_rule():
    assert ffn_hidden_dim(4096, 256, 1.0) == 11008 and ffn_hidden_dim(512) == 1536


def test_mtp_layout_matches_the_7b_state_dict():
    shapes = expected_shapes("mtp", {"dim": 4096, "n_layers": 32, "n_heads": 32, "vocab_size": 32000,
                                     "n_future_tokens": 4, "ffn_dim_multiplier": 1.0})
    assert len(shapes) == 291 and sum(torch.Size(s).numel() for s in shapes.values()) == 6_738_415_616
    assert shapes["layers.28.feed_forward.w2.weight"] == (4096, 11008) and "layers.29.ffn_norm.weight" not in shapes
    assert shapes["extra_heads.2.attention.wq.weight"] == (4096, 4096)


@pytest.mark.parametrize("arch, config", [
    ("mtp", MTP_PARAMS), ("mtp", {**MTP_PARAMS, "n_future_tokens": 1, "ffn_dim_multiplier": 1.3}),
    ("llama", LLAMA_CONFIG), ("llama", {**LLAMA_CONFIG, "num_key_value_heads": 2, "head_dim": 32}),
    ("llama", {**LLAMA_CONFIG, "tie_word_embeddings": True}),
])
def test_expected_shapes_are_the_built_models_state_dict(arch, config):
    with torch.device("meta"):
        model = build_model(arch, config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight")  # tied: the checkpoint stores the embedding once
    assert expected_shapes(arch, config) == dict(sorted(state.items()))


@pytest.mark.parametrize("arch, config, error", [
    ("mtp", {**MTP_PARAMS, "dim": 60}, "head dim 15 must be even"), ("gpt2", {}, "unknown arch"),
    ("llama", {**LLAMA_CONFIG, "rope_scaling": {"type": "linear"}}, "rope_scaling"),
    ("mtp", {**MTP_PARAMS, "multiple_of": 32.0}, "multiple_of must be an integer"),
])
def test_expected_shapes_refuse_what_the_model_refuses(arch, config, error):
    with pytest.raises(ValueError, match=error):
        expected_shapes(arch, config)


def test_mtp_logits_shape_one_head_or_all():
    model = _seeded(MTPTransformer(MTP_PARAMS))
    tokens = torch.randint(0, 300, (2, 7))
    assert model(tokens).shape == (2, 7, 1, 300)
    assert model(tokens, return_all_heads=True).shape == (2, 7, 3, 300)


def test_mtp_heads_all_read_the_trunk_output_not_each_other():
    model = _seeded(MTPTransformer(MTP_PARAMS))
    tokens = torch.randint(0, 300, (1, 5))
    logits = model(tokens, return_all_heads=True)
    from reconciler.models.nets.mtp import rope_angles

    angles = rope_angles(16, 5, 10000.0, tokens.device)
    trunk = model.tok_embeddings(tokens)
    for layer in model.layers[:-1]:
        trunk = layer(trunk, angles)
    for j, head in enumerate([model.layers[-1], *model.extra_heads]):
        assert torch.allclose(logits[:, :, j], model.output(model.norm(head(trunk, angles))), atol=1e-5)


def test_models_are_causal():
    model = _seeded(MTPTransformer(MTP_PARAMS))
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[5, 6, 7, 9]])
    assert torch.allclose(model(a, True)[:, :3], model(b, True)[:, :3], atol=1e-6)
    assert not torch.allclose(model(a, True)[:, 3], model(b, True)[:, 3])


def _meta_to_hf(state: dict, n_heads: int, dim: int) -> dict:
    """Meta -> HF names, permuting wq/wk rows for HF's rotate-half RoPE (as HF's converter does)."""
    def permute(w, heads):
        return w.view(heads, w.shape[0] // heads // 2, 2, dim).transpose(1, 2).reshape(w.shape[0], dim)

    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"],
           "lm_head.weight": state["output.weight"]}
    for k, v in state.items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            mod = rest.rsplit(".", 1)[0]
            heads = n_heads if mod == "attention.wq" else v.shape[0] // (dim // n_heads)
            out[f"model.layers.{i}.{names[mod]}.weight"] = permute(v, heads) if mod in ("attention.wq", "attention.wk") else v
    return out


def test_llama_equals_a_single_head_mtp_converted_to_hf_naming():
    meta = {**MTP_PARAMS, "n_future_tokens": 1, "n_layers": 2}
    mtp = _seeded(MTPTransformer(meta))
    hf_cfg = {**LLAMA_CONFIG, "intermediate_size": ffn_hidden_dim(64, 32), "num_key_value_heads": 2}
    llama = build_model("llama", hf_cfg).eval()
    llama.load_state_dict(_meta_to_hf(mtp.state_dict(), 4, 64), strict=True)
    tokens = torch.randint(0, 300, (1, 9))
    assert torch.allclose(mtp(tokens)[:, :, 0], llama(tokens), atol=1e-4)


def test_strict_load_names_missing_unexpected_and_misshapen_keys():
    expected = expected_shapes("llama", LLAMA_CONFIG)
    found = dict(expected)
    found.pop("model.layers.1.mlp.up_proj.weight")
    found["model.layers.0.self_attn.rotary_emb.inv_freq"] = (8,)  # legacy: ignored
    found["model.extra.weight"] = (3,)
    found["lm_head.weight"] = (301, 64)
    problems = key_problems("llama", expected, found)
    assert problems == ["missing tensor model.layers.1.mlp.up_proj.weight (expected shape [96, 64])",
                        "unexpected tensor model.extra.weight",
                        "tensor lm_head.weight has shape [301, 64], the config implies [300, 64]"]
    assert key_problems("mtp", {"a": (1,)}, {"a": (1,), "rope.freqs": (4,)}) == []


def test_load_strict_ignores_legacy_buffers_and_keeps_the_file_dtype(tmp_path):
    model = _seeded(build_model("mtp", MTP_PARAMS))
    state = {k: v.half() for k, v in model.state_dict().items()}
    save_file({**state, "rope.freqs": torch.ones(8)}, str(tmp_path / "m.safetensors"))
    loaded = load_strict("mtp", MTP_PARAMS, tmp_path / "m.safetensors", "cpu")
    assert loaded.output.weight.dtype == torch.float16 and torch.equal(loaded.output.weight, state["output.weight"])
    assert torch.isfinite(loaded(torch.tensor([[1, 2, 3]]), return_all_heads=True)).all()


def test_read_summary_counts_params_and_dtype(tmp_path):
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5, dtype=torch.bfloat16)},
              str(tmp_path / "x.safetensors"))
    s = read_summary(tmp_path / "x.safetensors")
    assert (s.n_params, s.dtype, s.shape("a")) == (17, "bfloat16", (3, 4))


def test_read_summary_validates_strictly(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(3, 4)}, str(path))
    path.write_bytes(path.read_bytes()[:-4])  # a truncated download: the header alone still parses
    with pytest.raises(HeaderError, match=r"x.safetensors: tensor a: data ends at byte \d+, past the end"):
        read_summary(path)


# ---- the loads check ---------------------------------------------------------------------------------

@pytest.fixture
def mtp_dir(tmp_path, tokenizer_model):
    build("micro_model", {}, SMALL_MTP, tmp_path / "m.safetensors")
    build("micro_params", {}, SMALL_MTP, tmp_path / "params.json")
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    return tmp_path


LOADS = {"arch": "mtp", "config": "params.json", "tokenizer": "tokenizer.model"}


def test_loads_fails_on_a_missing_key_naming_it(mtp_dir):
    state = load_file(str(mtp_dir / "m.safetensors"))
    del state["extra_heads.0.feed_forward.w3.weight"]
    save_file(state, str(mtp_dir / "m.safetensors"))
    with pytest.raises(CheckFailed, match=r"missing tensor extra_heads\.0\.feed_forward\.w3\.weight"):
        run_check("loads", mtp_dir, "m.safetensors", LOADS)


def test_loads_fails_when_the_config_is_not_the_models(mtp_dir):
    p = json.loads((mtp_dir / "params.json").read_text())
    (mtp_dir / "params.json").write_text(json.dumps({**p, "n_future_tokens": 1}))
    with pytest.raises(CheckFailed, match="unexpected tensor extra_heads.0"):
        run_check("loads", mtp_dir, "m.safetensors", LOADS)


def test_loads_needs_token_ids_below_the_vocab(tmp_path, tokenizer_model):
    spec = {**SMALL_MTP, "vocab_size": 200}
    build("micro_model", {}, spec, tmp_path / "m.safetensors")
    build("micro_params", {}, spec, tmp_path / "params.json")
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    with pytest.raises(CheckFailed, match=r"token id \d+ from the tokenizer is outside the model's vocab_size 200"):
        run_check("loads", tmp_path, "m.safetensors", LOADS)


def test_loads_refuses_a_model_too_big_for_cpu(mtp_dir, monkeypatch):
    monkeypatch.setattr(model_checks, "_device", lambda: "cpu")
    with pytest.raises(CheckFailed, match="above max_params 1,000 for a CPU forward pass") as e:
        run_check("loads", mtp_dir, "m.safetensors", {**LOADS, "max_params": 1000})
    assert "CUDA" in e.value.fix


def test_loads_checks_a_llama_with_gqa(tmp_path, tokenizer_model):
    build("micro_model", {}, SMALL_LLAMA, tmp_path / "m.safetensors")
    build("micro_hf_config", {}, SMALL_LLAMA, tmp_path / "config.json")
    (tmp_path / "tok.model").write_bytes(tokenizer_model.read_bytes())
    detail = run_check("loads", tmp_path, "m.safetensors", {"arch": "llama", "config": "config.json",
                                                            "tokenizer": "tok.model"})
    assert "bfloat16" in detail and ", 1000)" in detail


# ---- the stand-in tokenizer --------------------------------------------------------------------------

def test_stand_in_tokenizer_training_is_byte_deterministic():
    assert hashlib.sha256(tokenizer_model_bytes()).digest() == hashlib.sha256(tokenizer_model_bytes()).digest()


def test_stand_in_tokenizer_looks_like_llamas(tokenizer_model):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    assert (sp.vocab_size(), sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (1000, 0, 1, 2, -1)
    assert trainer_spec_facts(tokenizer_model.read_bytes()) == {"model_type": "BPE", "byte_fallback": True}
    ids = sp.encode("def f(x):\n    return x  # ünïcode ☃")
    assert sp.decode(ids) == "def f(x):\n    return x  # ünïcode ☃"  # byte fallback: nothing is <unk>
    assert 0 not in ids
