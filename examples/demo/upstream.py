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
from reconcile_testing.tokenizer import (
    SHEARED_SPECIAL_TOKENS_MAP,
    SHEARED_TOKENIZER_CONFIG,
    tokenizer_json_bytes,
    write_tokenizer_model,
)

DEMO_TOKEN = "hf_demo_licence_accepted"  # the gated Meta repo only answers this token
VOCAB = 1000
META_PARAMS = {"dim": 128, "ffn_dim_multiplier": 1.0, "multiple_of": 32, "n_future_tokens": 4, "n_heads": 4,
               "n_kv_heads": 4, "n_layers": 6, "norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": VOCAB}
SHEARED_CONFIG = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                  "hidden_size": 96, "initializer_range": 0.02, "intermediate_size": 256,
                  "max_position_embeddings": 512, "model_type": "llama", "num_attention_heads": 4,
                  "num_hidden_layers": 4, "num_key_value_heads": 4, "pad_token_id": 0, "pretraining_tp": 1,
                  "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
                  "torch_dtype": "float32", "transformers_version": "4.28.1", "use_cache": True, "vocab_size": VOCAB}


# What make_lock.py shrinks in the real lock: the micro models' sizes (sliced from the miniature
# bases above, so no larger than them) and the row counts of the miniature datasets.
DEMO_MICRO = {"dim": 64, "vocab_size": VOCAB}
MBPP_ROWS = {"train": 40, "validation": 10, "test": 50, "prompt": 10}
HUMANEVAL_ROWS = 24
DEMO_ROWS = {**{f"datasets_v2/mbpp/processed/{s}.jsonl": n for s, n in MBPP_ROWS.items() if s != "prompt"},
             "datasets_v2/humaneval/processed/test.jsonl": HUMANEVAL_ROWS}
CC_TRAIN_SHARDS = 39  # the real count and names (data/train-000NN-of-00039-<hash>.parquet), one problem each


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _codecontests(work: Path) -> dict:
    files, offset = {}, 0
    splits = [(f"train-{k:05d}-of-{CC_TRAIN_SHARDS:05d}-demo{k}.parquet", 1) for k in range(CC_TRAIN_SHARDS)]
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
                          "special_tokens_map.json": _json(SHEARED_SPECIAL_TOKENS_MAP),
                          "tokenizer_config.json": _json(SHEARED_TOKENIZER_CONFIG),
                          "tokenizer.json": tokenizer_json_bytes(tok)})
    commits["princeton-nlp/Sheared-LLaMA-2.7B"] = add_revision(
        store, "princeton-nlp/Sheared-LLaMA-2.7B", "model", sheared_files, licence="apache-2.0")
    commits["deepmind/code_contests"] = add_revision(
        store, "deepmind/code_contests", "dataset", _codecontests(work), licence="cc-by-4.0")
    mbpp = {f"full/{s}-00000-of-00001.parquet": make_mbpp_parquet(work / f"mbpp-{s}.parquet", s, n)
            for s, n in MBPP_ROWS.items()}
    commits["google-research-datasets/mbpp"] = add_revision(
        store, "google-research-datasets/mbpp", "dataset", mbpp, licence="cc-by-4.0")
    he = make_humaneval_parquet(work / "humaneval.parquet", n=HUMANEVAL_ROWS)
    commits["openai/openai_humaneval"] = add_revision(
        store, "openai/openai_humaneval", "dataset", {"openai_humaneval/test-00000-of-00001.parquet": he},
        licence="mit")
    return commits
