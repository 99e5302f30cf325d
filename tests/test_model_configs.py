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
META = {"model_name": "micro-mtp", "source": "meta-mtp", "tokenizer_shared_with": "meta-llama-mtp"}


def with_lock(params: dict, inputs: dict) -> dict:
    """model_metadata's params as apply passes them: the lock's facts next to the lock's params."""
    shas = {k: [sha256_file(p) for p in v] if isinstance(v, list) else sha256_file(v) for k, v in inputs.items()}
    return {**params, "lock": {"storage_version": "2.0.0", "release_date": "2026-11-30", "input_sha256": shas,
                               "source": {"name": "meta-mtp", "repo": "facebook/multi-token-prediction",
                                          "type": "model", "commit": "0" * 40}}}


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
    inputs = {"weights": tmp_path / "model.safetensors", "tokenizer": tokenizer_model}
    build("model_metadata", inputs, with_lock(META, inputs), tmp_path / "metadata.json")
    build("mtp_config", {"params": tmp_path / "params.json", "weights": tmp_path / "model.safetensors"},
          {"model_name": "micro-mtp", "max_position_embeddings": 4096, "target_device": "mps"},
          tmp_path / "configs" / "config.json")
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


# ---- mtp_config (micro-mtp configs/config.json) -------------------------------------------------------

WMTP_CONFIG_FIELDS = {"model_name", "n_future_tokens", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "intermediate_size", "rope_theta", "max_position_embeddings",
                      "rms_norm_eps", "vocab_size", "dtype", "target_device"}


def test_mtp_config_has_the_fields_the_wmtp_scripts_read(micro):
    c = json.loads((micro / "configs" / "config.json").read_text())
    assert set(c) == WMTP_CONFIG_FIELDS
    p = json.loads((micro / "params.json").read_text())
    assert (c["hidden_size"], c["num_hidden_layers"], c["n_future_tokens"], c["vocab_size"]) == \
        (p["dim"], p["n_layers"], p["n_future_tokens"], p["vocab_size"])
    assert (c["dtype"], c["model_name"], c["target_device"]) == ("float16", "micro-mtp", "mps")


def test_mtp_config_of_the_micro_spec_writes_what_the_weights_hold(tmp_path):
    build("micro_params", {}, MICRO_MTP, tmp_path / "params.json")
    w = tmp_path / "w.safetensors"
    save_file({"tok_embeddings.weight": torch.zeros(32000, 512, dtype=torch.float16)}, str(w))
    build("mtp_config", {"params": tmp_path / "params.json", "weights": w},
          {"model_name": "micro-mtp", "max_position_embeddings": 4096}, tmp_path / "config.json")
    c = json.loads((tmp_path / "config.json").read_text())
    assert c["intermediate_size"] == 1536  # v1 wrote 1365; the Meta-layout FFN of dim 512 is 1536


# ---- tokenizer files -------------------------------------------------------------------------------

@pytest.mark.upstream
def test_tokenizer_files_of_the_real_llama2_tokenizer_are_sheared_upstreams(tmp_path):
    tok = _need(MTP_UP / "tokenizer.model")
    build("tokenizer_config", {"tokenizer": tok}, {}, tmp_path / "tokenizer_config.json")
    build("special_tokens_map", {"tokenizer": tok}, {}, tmp_path / "special_tokens_map.json")
    # What transformers itself wrote for this tokenizer in the Sheared-LLaMA repo, key for key.
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads(_need(SHEARED / name).read_text()), name


def test_tokenizer_config_is_transformers_keys_only(tmp_path, tokenizer_model):
    build("tokenizer_config", {"tokenizer": tokenizer_model}, {"model_max_length": 4096}, tmp_path / "t.json")
    raw = (tmp_path / "t.json").read_bytes()
    c = json.loads(raw)
    assert raw == pretty_json_bytes(c) and "model_type" not in c and "vocab_size" not in c
    assert (c["tokenizer_class"], c["add_bos_token"], c["add_eos_token"], c["model_max_length"]) == \
        ("LlamaTokenizer", True, False, 4096)
    assert (c["bos_token"]["content"], c["eos_token"]["content"], c["unk_token"]["content"]) == ("<s>", "</s>", "<unk>")


def test_tokenizer_config_refuses_a_non_tokenizer(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TransformError, match="not a SentencePiece model"):
        build("tokenizer_config", {"tokenizer": tmp_path / "bad.model"}, {}, tmp_path / "t.json")


@pytest.fixture
def tok_folder(tmp_path, tokenizer_model):
    """A tokenizer/ folder as the lock builds it (tokenizer.json as the upstream repos ship it)."""
    from reconcile_testing.tokenizer import tokenizer_json_bytes
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_json_bytes(tokenizer_model))
    for name in ("tokenizer_config", "special_tokens_map"):
        build(name, {"tokenizer": tokenizer_model}, {}, tmp_path / f"{name}.json")
    return tmp_path


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_tokenizer_files_check_passes_for_the_folder(tok_folder, name):
    assert run_check("tokenizer_files", tok_folder, name, {"model": "tokenizer.model"}).startswith(f"{name} matches")


@pytest.mark.parametrize("name, edit, message", [
    ("tokenizer_config.json", lambda d: d.update(model_type="BPE"), "key 'model_type' is there"),
    ("tokenizer_config.json", lambda d: d.update(add_bos_token=False), "BOS must be added"),
    ("special_tokens_map.json", lambda d: d["eos_token"].update(content="<eos>"), "eos_token is '<eos>'"),
    ("tokenizer.json", lambda d: d["model"]["vocab"].update({"▁x": 5}), "vocab has"),
    ("tokenizer.json", lambda d: d["model"].update(byte_fallback=False), "byte_fallback False"),
])
def test_tokenizer_files_check_names_what_does_not_belong(tok_folder, name, edit, message):
    d = json.loads((tok_folder / name).read_text())
    edit(d)
    (tok_folder / name).write_text(json.dumps(d))
    with pytest.raises(CheckFailed, match=message):
        run_check("tokenizer_files", tok_folder, name, {"model": "tokenizer.model"})


# ---- model_metadata and hf_config ------------------------------------------------------------------

def test_model_metadata_is_derived_from_the_header_and_the_lock(micro, tokenizer_model):
    ckpt = micro / "consolidated.pth"
    ckpt.write_bytes(b"raw checkpoint bytes")
    params = {**META, "target_device": "mps", "extra": {"note": "micro"}}
    inputs = {"weights": micro / "model.safetensors", "tokenizer": tokenizer_model, "checkpoint": [ckpt]}
    build("model_metadata", inputs, with_lock(params, inputs), micro / "m1.json")
    build("model_metadata", inputs, with_lock(params, inputs), micro / "m2.json")
    m = json.loads((micro / "m1.json").read_text())
    assert (micro / "m1.json").read_bytes() == (micro / "m2.json").read_bytes()
    assert (m["n_params"], m["dtype"], m["target_device"], m["note"]) == (288_192, "float16", "mps", "micro")
    assert m["sha256"] == {"checkpoint": {"consolidated.pth": sha256_file(ckpt)},
                           "tokenizer": {"tokenizer.model": sha256_file(tokenizer_model)},
                           "weights": {"model.safetensors": sha256_file(micro / "model.safetensors")}}
    assert m["source"] == {"repo": "facebook/multi-token-prediction", "revision": "0" * 40}
    assert (m["created_at"], m["version"], m["format"], m["tokenizer_shared_with"]) == \
        ("2026-11-30", "2.0.0", "safetensors", "meta-llama-mtp")
    assert m["tokenizer"] == {"type": "sentencepiece", "model_type": "BPE", "vocab_size": 1000, "byte_fallback": True,
                              "bos_id": 1, "eos_id": 2, "unk_id": 0, "pad_id": None}


def test_model_metadata_refuses_extra_keys_that_clash(micro, tokenizer_model):
    inputs = {"weights": micro / "model.safetensors", "tokenizer": tokenizer_model}
    with pytest.raises(TransformError, match=r"extra keys \['n_params'\]"):
        build("model_metadata", inputs, with_lock({**META, "extra": {"n_params": 1}}, inputs), micro / "m.json")


def test_model_metadata_outside_apply_asks_for_the_lock(micro, tokenizer_model):
    with pytest.raises(TransformError, match="needs the lock's facts"):
        build("model_metadata", {"weights": micro / "model.safetensors", "tokenizer": tokenizer_model}, META,
              micro / "m.json")


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

ALL_REFS = {"params": "params.json", "adapter": "configs/meta_adapter.yaml", "metadata": "metadata.json",
            "config": "configs/config.json"}


def test_config_consistent_passes_for_derived_configs(micro):
    detail = run_check("config_consistent", micro, "model.safetensors", ALL_REFS)
    assert "5 sources agree" in detail and "n_params" in detail and "kv_dim" in detail


def test_config_consistent_catches_an_mtp_config_json_that_disagrees(micro):
    c = json.loads((micro / "configs" / "config.json").read_text())
    (micro / "configs" / "config.json").write_text(json.dumps({**c, "intermediate_size": 1365,
                                                                  "n_future_tokens": c["n_future_tokens"] + 1}))
    with pytest.raises(CheckFailed) as e:
        run_check("config_consistent", micro, "model.safetensors", ALL_REFS)
    assert "configs/config.json says 1365" in str(e.value) and "n_future_tokens: weights" in str(e.value)


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
