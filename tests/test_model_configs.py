"""Derived configs (meta_adapter, tokenizer_config, model_metadata, hf_config) and `config_consistent`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from reconciler.errors import CheckFailed, TransformError
from reconciler.hashing import pretty_json_bytes, sha256_file
from tests.conftest import UPSTREAM
from tests.test_micro import MICRO_MTP, SMALL_LLAMA, SMALL_MTP, build, run_check

MTP_UP = UPSTREAM / "multi-token-prediction"
SHEARED = UPSTREAM / "Sheared-LLaMA-2.7B"
META = {"model_name": "micro-mtp", "storage_version": "2024.1", "source_repo": "facebook/multi-token-prediction",
        "source_revision": "0" * 40, "tokenizer_shared_with": ["micro-ref", "mtp-7b"]}


def _need(path):
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/upstream is not on this machine)")
    return path


@pytest.fixture
def micro(tmp_path, tokenizer_model):
    """A micro MTP model with every derived config next to it, as the storage lays them out."""
    build("micro_model", {}, SMALL_MTP, tmp_path / "model.safetensors")
    build("micro_params", {}, SMALL_MTP, tmp_path / "params.json")
    build("meta_adapter", {"params": tmp_path / "params.json", "weights": tmp_path / "model.safetensors"}, {},
          tmp_path / "configs" / "meta_adapter.yaml")
    build("model_metadata", {"weights": tmp_path / "model.safetensors", "tokenizer": tokenizer_model}, META,
          tmp_path / "metadata.json")
    return tmp_path


# ---- meta_adapter ------------------------------------------------------------------------------------

@pytest.mark.upstream
def test_meta_adapter_from_the_real_7b_params(tmp_path):
    params = _need(MTP_UP / "7B_1T_4" / "params.json")
    weights = tmp_path / "w.safetensors"  # only the header matters: dtype (no embedding, so no shape cross-check)
    save_file({"norm.weight": torch.ones(4096, dtype=torch.bfloat16)}, str(weights))
    build("meta_adapter", {"params": params, "weights": weights}, {}, tmp_path / "a.yaml")
    a = yaml.safe_load((tmp_path / "a.yaml").read_text())
    assert a == {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                 "intermediate_size": 11008, "rope_theta": 10000.0, "rms_norm_eps": 1e-05, "vocab_size": 32000,
                 "n_future_tokens": 4, "dtype": "bfloat16"}


def test_meta_adapter_of_the_micro_spec_says_1536_and_is_sorted_yaml(tmp_path):
    build("micro_params", {}, MICRO_MTP, tmp_path / "params.json")
    w = tmp_path / "w.safetensors"
    save_file({"tok_embeddings.weight": torch.zeros(32000, 512, dtype=torch.float16)}, str(w))
    build("meta_adapter", {"params": tmp_path / "params.json", "weights": w}, {}, tmp_path / "a.yaml")
    text = (tmp_path / "a.yaml").read_text()
    a = yaml.safe_load(text)
    assert (a["intermediate_size"], a["hidden_size"], a["dtype"], a["n_future_tokens"]) == (1536, 512, "float16", 4)
    assert text == yaml.safe_dump(a, sort_keys=True, default_flow_style=False)


def test_meta_adapter_refuses_params_that_are_not_the_weights(micro):
    p = json.loads((micro / "params.json").read_text())
    (micro / "params.json").write_text(json.dumps({**p, "dim": 128}))
    with pytest.raises(TransformError, match=r"\(vocab_size, dim\) = \(1000, 128\) but tok_embeddings.weight is"):
        build("meta_adapter", {"params": micro / "params.json", "weights": micro / "model.safetensors"}, {},
              micro / "b.yaml")


# ---- tokenizer_config ---------------------------------------------------------------------------------

@pytest.mark.upstream
def test_tokenizer_config_of_the_real_llama2_tokenizer(tmp_path):
    tok = _need(MTP_UP / "tokenizer.model")
    build("tokenizer_config", {"tokenizer": tok}, {}, tmp_path / "tokenizer_config.json")
    c = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (c["vocab_size"], c["unk_id"], c["bos_id"], c["eos_id"], c["pad_id"]) == (32000, 0, 1, 2, None)
    assert (c["unk_token"], c["bos_token"], c["eos_token"]) == ("<unk>", "<s>", "</s>")
    assert (c["model_type"], c["byte_fallback"], c["tokenizer_class"]) == ("BPE", True, "LlamaTokenizer")


def test_tokenizer_config_is_canonical_json(tmp_path, tokenizer_model):
    build("tokenizer_config", {"tokenizer": tokenizer_model}, {"tokenizer_class": "X"}, tmp_path / "t.json")
    raw = (tmp_path / "t.json").read_bytes()
    c = json.loads(raw)
    assert raw == pretty_json_bytes(c) and c["vocab_size"] == 1000 and c["tokenizer_class"] == "X"


def test_tokenizer_config_refuses_a_non_tokenizer(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TransformError, match="not a SentencePiece model"):
        build("tokenizer_config", {"tokenizer": tmp_path / "bad.model"}, {}, tmp_path / "t.json")


# ---- model_metadata and hf_config ------------------------------------------------------------------

def test_model_metadata_counts_from_the_header_and_hashes_inputs(micro, tokenizer_model):
    ckpt = micro / "consolidated.pth"
    ckpt.write_bytes(b"raw checkpoint bytes")
    params = {**META, "target_device": "mps", "extra": {"note": "micro"}}
    inputs = {"weights": micro / "model.safetensors", "tokenizer": tokenizer_model, "checkpoint": ckpt}
    build("model_metadata", inputs, params, micro / "m1.json")
    build("model_metadata", inputs, params, micro / "m2.json")
    m = json.loads((micro / "m1.json").read_text())
    assert (micro / "m1.json").read_bytes() == (micro / "m2.json").read_bytes()
    assert (m["n_params"], m["dtype"], m["target_device"], m["note"]) == (288_192, "float16", "mps", "micro")
    assert m["checkpoint_sha256"] == sha256_file(ckpt) and m["tokenizer_sha256"] == sha256_file(tokenizer_model)
    assert m["tokenizer_shared_with"] == ["micro-ref", "mtp-7b"] and m["source_revision"] == "0" * 40


def test_model_metadata_refuses_extra_keys_that_clash(micro, tokenizer_model):
    with pytest.raises(TransformError, match=r"extra keys \['n_params'\]"):
        build("model_metadata", {"weights": micro / "model.safetensors", "tokenizer": tokenizer_model},
              {**META, "extra": {"n_params": 1}}, micro / "m.json")


@pytest.mark.upstream
def test_hf_config_updates_torch_dtype_of_the_real_sheared_config(tmp_path):
    src = _need(SHEARED / "config.json")
    build("hf_config", {"config": src}, {"torch_dtype": "float16", "drop_keys": ["_name_or_path"]},
          tmp_path / "config.json")
    c, up = json.loads((tmp_path / "config.json").read_text()), json.loads(src.read_text())
    assert c["torch_dtype"] == "float16" and "_name_or_path" not in c
    assert {k: v for k, v in c.items() if k != "torch_dtype"} == \
        {k: v for k, v in up.items() if k not in ("torch_dtype", "_name_or_path")}


def test_hf_config_refuses_an_absent_drop_key(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"torch_dtype": "float32"}))
    with pytest.raises(TransformError, match="'nope'"):
        build("hf_config", {"config": tmp_path / "c.json"}, {"torch_dtype": "float16", "drop_keys": ["nope"]},
              tmp_path / "out.json")


# ---- config_consistent -------------------------------------------------------------------------------

ALL_REFS = {"params": "params.json", "adapter": "configs/meta_adapter.yaml", "metadata": "metadata.json"}


def test_config_consistent_passes_for_derived_configs(micro):
    detail = run_check("config_consistent", micro, "model.safetensors", ALL_REFS)
    assert "4 sources agree" in detail and "n_params" in detail and "kv_dim" in detail


def test_config_consistent_names_the_field_when_metadata_disagrees(micro):
    m = json.loads((micro / "metadata.json").read_text())
    (micro / "metadata.json").write_text(json.dumps({**m, "n_params": 288_000, "dtype": "bfloat16"}))
    with pytest.raises(CheckFailed) as e:
        run_check("config_consistent", micro, "model.safetensors", ALL_REFS)
    msg = str(e.value)
    assert "dtype: weights model.safetensors says 'float16', metadata.json says 'bfloat16'" in msg
    assert "n_params: weights model.safetensors says 288192, metadata.json says 288000" in msg


def test_config_consistent_catches_heads_through_kv_rows(micro):
    a = yaml.safe_load((micro / "configs" / "meta_adapter.yaml").read_text())
    (micro / "configs" / "meta_adapter.yaml").write_text(yaml.safe_dump({**a, "num_key_value_heads": 2}))
    with pytest.raises(CheckFailed, match="num_key_value_heads: params.json says 4, configs/meta_adapter.yaml says 2"):
        run_check("config_consistent", micro, "model.safetensors", ALL_REFS)


def test_config_consistent_with_an_hf_config(tmp_path):
    build("micro_model", {}, SMALL_LLAMA, tmp_path / "m.safetensors")
    build("micro_hf_config", {}, SMALL_LLAMA, tmp_path / "config.json")
    assert "kv_dim" in run_check("config_consistent", tmp_path, "m.safetensors", {"config": "config.json"})
    c = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**c, "num_hidden_layers": 3}))
    with pytest.raises(CheckFailed, match="num_hidden_layers: weights m.safetensors says 2, config.json says 3"):
        run_check("config_consistent", tmp_path, "m.safetensors", {"config": "config.json"})
