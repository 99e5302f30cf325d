"""Micro models: exact predicted sizes, real leading slices, determinism, derived configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reconciler.errors import TransformError
from reconciler.models.nets import expected_shapes, read_summary
from reconciler.models.nets.mtp import ffn_hidden_dim
from reconciler.publish import commit, staged
from reconciler.registry import CHECKS, TRANSFORMS, CheckContext, load_plugins
from tests.conftest import UPSTREAM

load_plugins()

MICRO_MTP = {"arch": "mtp", "dim": 512, "n_layers": 4, "n_heads": 8, "vocab_size": 32000, "n_future_tokens": 4,
             "dtype": "float16", "init": "random", "seed": 0}
SMALL_MTP = {"arch": "mtp", "dim": 64, "n_layers": 3, "n_heads": 4, "vocab_size": 1000, "n_future_tokens": 2,
             "multiple_of": 32, "dtype": "float16", "init": "random", "seed": 1}
SMALL_LLAMA = {"arch": "llama", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 1000,
               "dtype": "bfloat16", "init": "random", "seed": 2}
BASE_META = {"dim": 128, "n_layers": 5, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 1200, "multiple_of": 32,
             "ffn_dim_multiplier": 1.0, "norm_eps": 1e-05, "rope_theta": 10000.0, "n_future_tokens": 3}


def build(name: str, inputs: dict, params: dict, final: Path):
    """Run a registered transform the way the engine does (staged, then committed); returns its info."""
    with staged(final, where=final.name) as out:
        info = TRANSFORMS[name].fn(inputs, params, out)
        commit(out, final, where=final.name, expected_sha256=None)
    return info


def run_check(name: str, root: Path, artifact: str, params: dict):
    """Run a registered check on root/artifact with a CheckContext like the engine's."""
    ctx = CheckContext(root=root, deep=False, artifact=artifact, lock=None)
    return CHECKS[name].fn(root / artifact, params, ctx)


def meta_base(path: Path, params: dict = BASE_META, extra: dict | None = None) -> Path:
    """A float32 Meta-layout checkpoint with FORMATS.md §1 key names, written by safetensors itself."""
    dim, vocab = params["dim"], params["vocab_size"]
    hidden = ffn_hidden_dim(dim, params["multiple_of"], params["ffn_dim_multiplier"])
    g = torch.Generator().manual_seed(7)
    tensors = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g),
               "norm.weight": torch.rand(dim, generator=g), "output.weight": torch.randn(vocab, dim, generator=g)}
    n_blocks = params["n_layers"] - params["n_future_tokens"] + 1
    prefixes = [f"layers.{i}." for i in range(n_blocks)]
    prefixes += [f"extra_heads.{j}." for j in range(params["n_future_tokens"] - 1)]
    for p in prefixes:
        for w in ("wq", "wk", "wv", "wo"):
            tensors[f"{p}attention.{w}.weight"] = torch.randn(dim, dim, generator=g)
        tensors[f"{p}feed_forward.w1.weight"] = torch.randn(hidden, dim, generator=g)
        tensors[f"{p}feed_forward.w3.weight"] = torch.randn(hidden, dim, generator=g)
        tensors[f"{p}feed_forward.w2.weight"] = torch.randn(dim, hidden, generator=g)
        tensors[f"{p}attention_norm.weight"] = torch.rand(dim, generator=g)
        tensors[f"{p}ffn_norm.weight"] = torch.rand(dim, generator=g)
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return meta_base(tmp_path_factory.mktemp("base") / "base.safetensors")


# ---- sizes -------------------------------------------------------------------------------------------

def test_predict_size_of_the_wmtp_micro_mtp_is_92_8_mb():
    shapes = expected_shapes("mtp", {k: MICRO_MTP[k] for k in ("dim", "n_layers", "n_heads", "vocab_size",
                                                               "n_future_tokens")})
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    assert n_params == 46_404_096
    size = TRANSFORMS["micro_model"].predict_size(MICRO_MTP)
    assert 2 * n_params < size < 2 * n_params + 8192  # tensor bytes + a few KB of header
    assert round(size / 1e6, 1) == 92.8 and size > 50 * 1000 * 1000  # "< 50 MB" cannot hold


def test_the_wmtp_micro_mtp_file_has_exactly_the_predicted_size(tmp_path, tokenizer_model):
    out = tmp_path / "micro.safetensors"
    info = build("micro_model", {}, MICRO_MTP, out)
    assert out.stat().st_size == TRANSFORMS["micro_model"].predict_size(MICRO_MTP)
    assert info["n_params"] == 46_404_096 == read_summary(out).n_params
    build("micro_params", {}, MICRO_MTP, tmp_path / "params.json")
    real = UPSTREAM / "multi-token-prediction" / "tokenizer.model"  # the LLaMA-2 tokenizer when present
    (tmp_path / "tokenizer.model").write_bytes((real if real.exists() else tokenizer_model).read_bytes())
    detail = run_check("loads", tmp_path, "micro.safetensors",
                       {"arch": "mtp", "config": "params.json", "tokenizer": "tokenizer.model"})
    assert re.search(r"logits \(1, \d+, 4, 32000\) finite \(float16", detail)


@pytest.mark.parametrize("spec", [
    SMALL_MTP, SMALL_LLAMA, {**SMALL_MTP, "dtype": "float32", "n_kv_heads": 1, "n_future_tokens": 3},
    {**SMALL_LLAMA, "dtype": "float16", "intermediate_size": 100, "n_layers": 1},
])
def test_predict_size_matches_built_file(tmp_path, spec):
    out = tmp_path / "m.safetensors"
    build("micro_model", {}, spec, out)
    assert out.stat().st_size == TRANSFORMS["micro_model"].predict_size(spec)
    assert read_summary(out).dtype == spec["dtype"]


def test_predict_size_of_a_slice_build_matches(tmp_path, base):
    spec = {**SMALL_MTP, "init": "slice"}
    out = tmp_path / "m.safetensors"
    build("micro_model", {"base": base}, spec, out)
    assert out.stat().st_size == TRANSFORMS["micro_model"].predict_size(spec)


# ---- slices ------------------------------------------------------------------------------------------

def test_slice_takes_leading_slices_keeping_each_blocks_role(tmp_path, base):
    spec = {**SMALL_MTP, "init": "slice", "dtype": "float32"}  # 2 blocks in layers, 1 extra head
    out = tmp_path / "m.safetensors"
    info = build("micro_model", {"base": base}, spec, out)
    micro, full = load_file(str(out)), load_file(str(base))
    assert torch.equal(micro["tok_embeddings.weight"], full["tok_embeddings.weight"][:1000, :64])
    assert torch.equal(micro["layers.0.feed_forward.w2.weight"], full["layers.0.feed_forward.w2.weight"][:64, :192])
    # The micro model's first prediction head (layers[-1]) is the base's first head (base layers[-1] = layers.2).
    assert torch.equal(micro["layers.1.attention.wq.weight"], full["layers.2.attention.wq.weight"][:64, :64])
    assert torch.equal(micro["extra_heads.0.ffn_norm.weight"], full["extra_heads.0.ffn_norm.weight"][:64])
    assert info["renamed"] == {k: k.replace("layers.1.", "layers.2.") for k in micro if k.startswith("layers.1.")}


def test_slice_casts_to_the_requested_dtype(tmp_path, base):
    out = tmp_path / "m.safetensors"
    build("micro_model", {"base": base}, {**SMALL_MTP, "init": "slice"}, out)
    micro, full = load_file(str(out)), load_file(str(base))
    assert micro["output.weight"].dtype == torch.float16
    assert torch.equal(micro["output.weight"], full["output.weight"][:1000, :64].half())


def test_slice_from_hf_base_ignores_legacy_buffers(tmp_path):
    base_spec = {**SMALL_LLAMA, "dim": 128, "n_layers": 3, "vocab_size": 1500, "dtype": "float32"}
    base = tmp_path / "hf.safetensors"
    build("micro_model", {}, base_spec, base)
    tensors = load_file(str(base))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(16)
    save_file(tensors, str(base))
    cfg = tmp_path / "config.json"
    build("micro_hf_config", {}, base_spec, cfg)
    out = tmp_path / "m.safetensors"
    build("micro_model", {"base": base, "config": cfg}, {**SMALL_LLAMA, "init": "slice"}, out)
    micro = load_file(str(out))
    assert torch.equal(micro["lm_head.weight"], tensors["lm_head.weight"][:1000, :64].bfloat16())
    assert not any("inv_freq" in k for k in micro)


def test_slice_refuses_bad_bases(tmp_path, base):
    out = tmp_path / "m.safetensors"
    with pytest.raises(TransformError, match="init: slice needs a base"):
        build("micro_model", {}, {**SMALL_MTP, "init": "slice"}, out)
    with pytest.raises(TransformError, match="extra heads"):
        build("micro_model", {"base": base}, {**SMALL_MTP, "init": "slice", "n_future_tokens": 4, "n_layers": 5}, out)
    with pytest.raises(TransformError, match=r"output.weight has shape \[1200, 128\]; cannot cut \[1300, 64\]"):
        build("micro_model", {"base": base}, {**SMALL_MTP, "init": "slice", "vocab_size": 1300}, out)
    with pytest.raises(TransformError, match="not a llama-named checkpoint"):
        build("micro_model", {"base": base}, {**SMALL_LLAMA, "init": "slice"}, out)
    assert not out.exists() and not list(tmp_path.glob(".reconcile-tmp-*"))


def test_slice_refuses_a_config_that_is_not_the_bases(tmp_path, base):
    cfg = tmp_path / "params.json"
    cfg.write_text(json.dumps({**BASE_META, "dim": 256}))
    with pytest.raises(TransformError, match="config says"):
        build("micro_model", {"base": base, "config": cfg}, {**SMALL_MTP, "init": "slice"}, tmp_path / "m.st")


# ---- determinism -------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["random", "slice"])
def test_two_builds_are_byte_identical(tmp_path, base, init):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    build("micro_model", {"base": base}, {**SMALL_MTP, "init": init}, a)
    build("micro_model", {"base": base}, {**SMALL_MTP, "init": init}, b)
    assert a.read_bytes() == b.read_bytes()


def test_random_init_depends_on_the_seed(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    build("micro_model", {}, SMALL_MTP, a)
    build("micro_model", {}, {**SMALL_MTP, "seed": 2}, b)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()


# ---- derived configs and loading -------------------------------------------------------------------

def test_micro_params_derive_from_the_spec_and_the_base(tmp_path):
    base_params = tmp_path / "base_params.json"
    base_params.write_text(json.dumps({**BASE_META, "rope_theta": 500000.0, "norm_eps": 1e-6}))
    out = tmp_path / "params.json"
    build("micro_params", {"config": base_params}, MICRO_MTP, out)
    p = json.loads(out.read_text())
    assert (p["dim"], p["n_layers"], p["n_heads"], p["n_kv_heads"], p["vocab_size"], p["n_future_tokens"]) == \
        (512, 4, 8, 8, 32000, 4)
    assert (p["rope_theta"], p["norm_eps"], p["multiple_of"]) == (500000.0, 1e-6, 256)


@pytest.mark.upstream
def test_micro_hf_config_keeps_the_bases_other_fields(tmp_path):
    src = UPSTREAM / "Sheared-LLaMA-2.7B" / "config.json"
    if not src.exists():
        pytest.skip("../shared/upstream is absent")
    out = tmp_path / "config.json"
    spec = {**MICRO_MTP, "arch": "llama"}
    spec.pop("n_future_tokens")
    build("micro_hf_config", {"config": src}, spec, out)
    c, upstream = json.loads(out.read_text()), json.loads(src.read_text())
    assert (c["model_type"], c["architectures"], c["torch_dtype"]) == ("llama", ["LlamaForCausalLM"], "float16")
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"]) == \
        (512, 1536, 4, 8)
    assert all(c[k] == upstream[k] for k in ("bos_token_id", "eos_token_id", "max_position_embeddings",
                                             "rms_norm_eps", "pad_token_id", "hidden_act"))
    assert "_name_or_path" not in c and "transformers_version" not in c


def test_config_transforms_refuse_the_wrong_arch(tmp_path):
    with pytest.raises(TransformError, match="needs arch mtp"):
        build("micro_params", {}, SMALL_LLAMA, tmp_path / "p.json")
    with pytest.raises(TransformError, match="n_future_tokens must be 1"):
        build("micro_hf_config", {}, {**SMALL_LLAMA, "n_future_tokens": 2}, tmp_path / "c.json")


@pytest.mark.parametrize("spec, config_transform", [(SMALL_MTP, "micro_params"), (SMALL_LLAMA, "micro_hf_config")])
def test_micro_models_load_strictly_and_run(tmp_path, tokenizer_model, spec, config_transform):
    build("micro_model", {}, spec, tmp_path / "m.safetensors")
    build(config_transform, {}, spec, tmp_path / "config.json")
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    detail = run_check("loads", tmp_path, "m.safetensors",
                       {"arch": spec["arch"], "config": "config.json", "tokenizer": "tokenizer.model"})
    shape = r"\(1, \d+, 1000\)" if spec["arch"] == "llama" else r"\(1, \d+, 2, 1000\)"
    assert re.search(f"logits {shape} finite", detail)
