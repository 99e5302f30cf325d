"""The demo storage read the way the WMTP training code reads it: transformers and its own layout.

transformers (4.x or 5.x, with protobuf) is a dev dependency, so these run in `make test`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reconciler.hashing import sha256_file
from reconciler.lockfile import load_lock
from reconciler.plan import build_recipe
from reconciler.provenance import read_provenance

transformers = pytest.importorskip("transformers")

MODELS = ("meta-llama-mtp", "ref-sheared-llama-2.7b", "micro-mtp", "micro-ref")
SOURCES = {"meta-llama-mtp": "meta-mtp", "micro-mtp": "meta-mtp", "ref-sheared-llama-2.7b": "sheared",
           "micro-ref": "sheared"}
RAW = {"meta-mtp": "models_v2/meta-llama-mtp/raw/7B_1T_4/consolidated.pth",
       "sheared": "models_v2/ref-sheared-llama-2.7b/raw/config.json"}
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def _texts(verbatim: bool = False) -> list[str]:
    """Code the way the training data looks: indentation, blank lines, tabs, non-ASCII, digits.

    `verbatim`: the tokenizer runs tokenizer.json as written (no text is left out in any version).
    """
    source = Path(__file__).read_text(encoding="utf-8")
    lines = [ln for ln in source.splitlines(keepends=True) if ln.strip()]
    extra = ["def f(x):\n    return x + 1\n", "a    b\n\n\tc  ", "ünïcödé 日本語 🤖 ≤ 10", "12345 + 678", "x  ",
             "  x = 1\n", "\tif x:\n", "\n\ndef g():\n", " "]
    texts = [source, *lines[:80], *extra]
    if TRANSFORMERS_5 and not verbatim:
        # transformers 5's LlamaTokenizer.__init__ (models/llama/tokenization_llama.py) drops tokenizer.json's
        # normalizer (Prepend "▁" + Replace) and builds Metaspace(prepend_scheme="first", split=False), which
        # prepends "▁" only when the text does not already start with one; SentencePiece always adds it. So a
        # text that starts with a space (or "▁") gets one "▁" fewer. A leading tab or newline, and every other
        # position, match. No tokenizer_config.json key changes this (legacy, add_prefix_space, from_slow).
        texts = [t for t in texts if t[0] not in " ▁"]
    return texts


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("use_fast", [True, False], ids=["fast", "slow"])
def test_tokenizer_folder_loads_in_transformers_and_encodes_like_sentencepiece(demo_built, model, use_fast):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    _, root, _ = demo_built
    folder = root / "models_v2" / model / "tokenizer"
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= \
        {p.name for p in folder.iterdir()}
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(folder), use_fast=use_fast)
    wrong = [t for t in _texts() if tok(t)["input_ids"] != [sp.bos_id(), *sp.encode(t)]]
    assert not wrong, f"{len(wrong)} texts encode differently, e.g. {wrong[0]!r}"
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"], skip_special_tokens=True) == \
        "def f(x):\n    return x"



@pytest.mark.parametrize("model", MODELS)
def test_pretrained_tokenizer_fast_encodes_like_sentencepiece_even_on_leading_whitespace(demo_built, model):
    """The documented work-around for transformers 5: load tokenizer.json as written, in 4.x and 5.x alike."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    _, root, _ = demo_built
    folder = root / "models_v2" / model / "tokenizer"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    texts = _texts(verbatim=True)
    assert sum(t[0].isspace() for t in texts) >= 40  # indented lines, tabs, newlines, a lone space
    wrong = [t for t in texts if tok(t)["input_ids"] != [sp.bos_id(), *sp.encode(t)]]
    assert not wrong, f"{len(wrong)} texts encode differently, e.g. {wrong[0]!r}"
    assert tok.decode(tok("  x = 1\n")["input_ids"], skip_special_tokens=True) == "  x = 1\n"

@pytest.mark.parametrize("model", ["micro-ref", "ref-sheared-llama-2.7b"])
def test_llama_config_loads_and_weights_load_strictly_into_transformers(demo_built, model):
    import torch
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from reconciler.models.nets import load_strict

    _, root, _ = demo_built
    base = root / "models_v2" / model
    config = LlamaConfig.from_pretrained(str(base / "configs"))
    hf = LlamaForCausalLM(config).float().eval()
    state = load_file(str(base / "safetensors" / "model.safetensors"))
    result = hf.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ids = torch.tensor([[1, 5, 17, 42, 99, 7]])
    with torch.inference_mode():
        theirs = hf(ids).logits
        ours = load_strict("llama", json.loads((base / "configs" / "config.json").read_text()),
                           base / "safetensors" / "model.safetensors", "cpu").float()(ids)
    assert theirs.shape == (1, 6, config.vocab_size) and torch.isfinite(theirs).all()
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-3)  # the `loads` check's model is transformers'


def test_micro_mtp_has_the_three_configs_the_wmtp_loader_reads_and_they_agree(demo_built):
    _, root, _ = demo_built
    configs = root / "models_v2" / "micro-mtp" / "configs"
    cfg = json.loads((configs / "config.json").read_text())
    params = json.loads((configs / "params.json").read_text())
    adapter = yaml.safe_load((configs / "meta_adapter.yaml").read_text())
    assert {"model_name", "n_future_tokens", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "rope_theta", "max_position_embeddings", "rms_norm_eps",
            "vocab_size", "dtype", "target_device"} == set(cfg)
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["n_future_tokens"]) == \
        (params["dim"], params["n_layers"], params["vocab_size"], params["n_future_tokens"])
    assert {k: adapter[k] for k in adapter} == {k: cfg[k] for k in adapter}


@pytest.mark.parametrize("model", MODELS)
def test_metadata_carries_the_fetched_commit_the_release_date_and_sha256s(demo_built, model):
    lock_path, root, _ = demo_built
    lock = load_lock(lock_path)
    m = json.loads((root / "models_v2" / model / "metadata.json").read_text())
    fetched = read_provenance(root, RAW[SOURCES[model]])
    assert m["source"] == {"repo": lock.sources[SOURCES[model]].repo, "revision": fetched["commit"]}
    assert len(m["source"]["revision"]) == 40  # the commit, although the demo lock says `main`
    assert m["created_at"] == lock.raw["releases"][0]["date"] and m["version"] == lock.storage_version
    assert m["sha256"]["weights"] == {"model.safetensors": sha256_file(root / "models_v2" / model / "safetensors" /
                                                                         "model.safetensors")}
    assert m["sha256"]["tokenizer"]["tokenizer.model"] == sha256_file(root / "models_v2" / model / "tokenizer" /
                                                                        "tokenizer.model")
    assert m["sha256"]["checkpoint"] and all(len(s) == 64 for s in m["sha256"]["checkpoint"].values())
    assert (m["tokenizer"]["type"], m["tokenizer"]["model_type"]) == ("sentencepiece", "BPE")


def test_a_revision_change_cascades_into_metadata(demo_built):
    lock_path, _, _ = demo_built
    lock = load_lock(lock_path)
    a = lock.artifacts["models_v2/micro-mtp/metadata.json"]
    shas = {p: "0" * 64 for p in a.input_paths()}
    one, two = (build_recipe(a, shas, lock, {"meta-mtp": c * 40}) for c in "ab")
    assert one["lock"]["source"]["commit"] == "a" * 40 and one != two
    assert build_recipe(a, shas, lock, {}) is None  # unknown until the source is fetched or pinned


@pytest.mark.upstream
def test_the_real_llama2_tokenizer_folder_encodes_like_sentencepiece(tmp_path):
    """The real 32,000-piece tokenizer.model with the files the lock writes next to it (tokenizer.json
    converted the way transformers 4.x converted Sheared-LLaMA's)."""
    import sentencepiece as spm
    from reconcile_testing.tokenizer import tokenizer_json_bytes
    from transformers import AutoTokenizer

    from reconciler.models.model_configs import sentencepiece_facts
    from reconciler.models.tokenizer_files import llama_tokenizer_config, special_tokens
    from tests.conftest import UPSTREAM

    real = UPSTREAM / "multi-token-prediction" / "tokenizer.model"
    if not real.exists():
        pytest.skip("../shared/upstream is absent")
    (tmp_path / "tokenizer.model").write_bytes(real.read_bytes())
    facts = sentencepiece_facts(real)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(llama_tokenizer_config(facts, int(1e30))))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special_tokens(facts)))
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_json_bytes(real))
    sp = spm.SentencePieceProcessor(model_file=str(real))
    for use_fast in (True, False):
        tok = AutoTokenizer.from_pretrained(str(tmp_path), use_fast=use_fast)
        wrong = [t for t in _texts() if tok(t)["input_ids"] != [1, *sp.encode(t)]]
        assert not wrong, f"{len(wrong)} texts encode differently, e.g. {wrong[0]!r}"
