"""Miniature, deterministic copies of every upstream repo the WMTP storage downloads.

Same repo ids, same file names and layouts as the real hub (FORMATS.md), scaled down so the
demo runs in a minute on a laptop: a Meta-layout MTP checkpoint with `layers` + `extra_heads`,
Sheared-LLaMA-style `.bin` shards with their index, parquet datasets in the hub schemas, and a
stand-in LLaMA-2 tokenizer trained with the real SentencePiece library.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from reconcile_testing.checkpoints import make_hf_shards, make_meta_checkpoint
from reconcile_testing.datasets import (
    codecontests_row,
    make_humaneval_parquet,
    make_mbpp_parquet,
    write_codecontests_rows,
)
from reconcile_testing.hub import add_revision
from reconcile_testing.tokenizer import write_tokenizer_model

DEMO_TOKEN = "hf_demo_licence_accepted"  # the gated Meta repo only answers this token
VOCAB = 1000
META_PARAMS = {"dim": 128, "ffn_dim_multiplier": 1.0, "multiple_of": 32, "n_future_tokens": 4, "n_heads": 4,
               "n_kv_heads": 4, "n_layers": 6, "norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": VOCAB}
SHEARED_CONFIG = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                  "hidden_size": 96, "initializer_range": 0.02, "intermediate_size": 256,
                  "max_position_embeddings": 512, "model_type": "llama", "num_attention_heads": 4,
                  "num_hidden_layers": 3, "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1,
                  "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                  "torch_dtype": "float32", "transformers_version": "4.28.1", "use_cache": True, "vocab_size": VOCAB}


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _codecontests(work: Path) -> dict:
    files, offset = {}, 0
    splits = [(f"train-{k:05d}-of-00003-demo{k}.parquet", 12) for k in range(3)]
    splits += [("valid-00000-of-00001-demo.parquet", 6), ("test-00000-of-00001-demo.parquet", 6)]
    for name, n in splits:
        rng = random.Random(name)
        rows = [codecontests_row(rng, offset + i, solutions_per_problem=6) for i in range(n)]
        offset += n  # problem names stay unique across splits, as upstream
        files[f"data/{name}"] = write_codecontests_rows(work / name, rows)
    return files


def build_store(store: Path) -> dict[str, str]:
    """Create the miniature hub store; returns repo -> commit (content-derived, deterministic)."""
    work = Path(tempfile.mkdtemp(prefix="reconcile-demo-upstream-"))
    tok = write_tokenizer_model(work / "tokenizer.model", VOCAB)
    meta = make_meta_checkpoint(work / "mtp", META_PARAMS, seed=7)
    sheared = make_hf_shards(work / "sheared", SHEARED_CONFIG, fmt="bin", n_shards=2, seed=11)
    commits = {}
    commits["facebook/multi-token-prediction"] = add_revision(
        store, "facebook/multi-token-prediction", "model",
        {"7B_1T_4/consolidated.pth": meta["checkpoint"], "7B_1T_4/params.json": meta["params"],
         "tokenizer.model": tok, "README.md": b"# multi-token-prediction (demo miniature)\n"},
        gated=True, tokens=(DEMO_TOKEN,), licence="other")
    sheared_files = {p.name: p for p in sheared["shards"]}
    sheared_files.update({"pytorch_model.bin.index.json": sheared["index"], "config.json": sheared["config"],
                          "tokenizer.model": tok,
                          "generation_config.json": _json({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}),
                          "special_tokens_map.json": _json({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
                          "tokenizer_config.json": _json({"model_max_length": 4096, "tokenizer_class": "LlamaTokenizer"})})
    commits["princeton-nlp/Sheared-LLaMA-2.7B"] = add_revision(
        store, "princeton-nlp/Sheared-LLaMA-2.7B", "model", sheared_files, licence="apache-2.0")
    commits["deepmind/code_contests"] = add_revision(
        store, "deepmind/code_contests", "dataset", _codecontests(work), licence="cc-by-4.0")
    mbpp = {f"full/{s}-00000-of-00001.parquet": make_mbpp_parquet(work / f"mbpp-{s}.parquet", s, n)
            for s, n in (("train", 40), ("validation", 10), ("test", 50), ("prompt", 10))}
    commits["google-research-datasets/mbpp"] = add_revision(
        store, "google-research-datasets/mbpp", "dataset", mbpp, licence="cc-by-4.0")
    he = make_humaneval_parquet(work / "humaneval.parquet", n=24)
    commits["openai/openai_humaneval"] = add_revision(
        store, "openai/openai_humaneval", "dataset", {"openai_humaneval/test-00000-of-00001.parquet": he},
        licence="mit")
    return commits
