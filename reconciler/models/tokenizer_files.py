"""The Hugging Face files of a `tokenizer/` folder, written the way transformers writes them.

The WMTP training code loads `AutoTokenizer.from_pretrained("<model>/tokenizer")` with transformers
4.x or 5.x. transformers reads `tokenizer_config.json` and misreads keys it does not expect there:
a `"model_type"` key (`"BPE"` or `"sentencepiece"`) makes transformers 5 try to read the folder as a
tiktoken file. So these files carry only what `LlamaTokenizer.save_pretrained` writes; the
SentencePiece facts (model type, byte fallback, vocab size, special ids) go to `metadata.json`.

`tokenizer.json` (the fast tokenizer) is not generated here: the upstream Sheared-LLaMA repo ships
one for the very same `tokenizer.model`, and the lock copies that pinned file. Without it,
transformers 5 converts the SentencePiece model itself and splits indentation differently
(`"    return"` -> `▁▁▁▁ return` instead of SentencePiece's `▁▁▁ ▁return`).

The `tokenizer_files` check verifies that each of these files belongs to its `tokenizer.model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckFailed, TransformError
from ..hashing import pretty_json_bytes
from ..registry import check, transform
from .model_configs import sentencepiece_facts

# transformers' VERY_LARGE_INTEGER: what save_pretrained writes when the model sets no length.
VERY_LARGE_INTEGER = int(1e30)
ROLES = ("bos", "eos", "unk")


def added_token(content: str, typed: bool) -> dict[str, Any]:
    """A special token as transformers serialises an AddedToken (`__type` only in tokenizer_config.json)."""
    tok = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **tok} if typed else tok


def llama_tokenizer_config(facts: dict[str, Any], model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json of a LlamaTokenizer, as transformers 4.x writes it (Llama-2-hf, Sheared-LLaMA).

    BOS added, EOS not (LLaMA's convention); `legacy: false` like the upstream files.
    """
    cfg: dict[str, Any] = {
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "legacy": False, "model_max_length": model_max_length, "padding_side": "right",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "pad_token": added_token(facts["pad_token"], True) if facts["pad_token"] else None,
    }
    for role in ROLES:
        cfg[f"{role}_token"] = added_token(facts[f"{role}_token"], True) if facts[f"{role}_token"] else None
    return cfg


def special_tokens(facts: dict[str, Any]) -> dict[str, Any]:
    """special_tokens_map.json: the model's special pieces (no pad when it has none)."""
    return {f"{r}_token": added_token(facts[f"{r}_token"], False)
            for r in (*ROLES, "pad") if facts.get(f"{r}_token")}


_LENGTH = {"type": "object", "additionalProperties": False,
           "properties": {"model_max_length": {"type": "integer", "minimum": 1}}}


# Version 2: transformers' own keys only (v1 also wrote the SentencePiece facts, which transformers 5 misreads).
@transform("tokenizer_config", "2", inputs={"tokenizer": "file"}, params_schema=_LENGTH)
def tokenizer_config(inputs, params, out):
    """tokenizer/tokenizer_config.json for a LlamaTokenizer, special tokens read from the SentencePiece model."""
    facts = sentencepiece_facts(inputs["tokenizer"])
    with out.open() as f:
        f.write(pretty_json_bytes(llama_tokenizer_config(facts, params.get("model_max_length", VERY_LARGE_INTEGER))))
    return {"vocab_size": facts["vocab_size"], "model_type": facts["model_type"]}


@transform("special_tokens_map", "1", inputs={"tokenizer": "file"},
           params_schema={"type": "object", "additionalProperties": False, "properties": {}})
def special_tokens_map(inputs, params, out):
    """tokenizer/special_tokens_map.json: bos/eos/unk (and pad if any) read from the SentencePiece model."""
    facts = sentencepiece_facts(inputs["tokenizer"])
    with out.open() as f:
        f.write(pretty_json_bytes(special_tokens(facts)))


# ---- check ----------------------------------------------------------------------------------------

def _token_content(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def _config_problems(cfg: dict, facts: dict) -> list[str]:
    problems = [f"key {k!r} is there (transformers misreads it)" for k in ("model_type",) if k in cfg]
    if cfg.get("tokenizer_class") not in ("LlamaTokenizer", "LlamaTokenizerFast"):
        problems.append(f"tokenizer_class is {cfg.get('tokenizer_class')!r}, not LlamaTokenizer")
    if cfg.get("add_bos_token") is not True or cfg.get("add_eos_token", False) is not False:
        problems.append("BOS must be added and EOS not (add_bos_token true, add_eos_token false)")
    return problems + _special_problems(cfg, facts)


def _special_problems(d: dict, facts: dict) -> list[str]:
    return [f"{r}_token is {_token_content(d.get(f'{r}_token'))!r}, the model's is {facts[f'{r}_token']!r}"
            for r in ROLES if _token_content(d.get(f"{r}_token")) != facts[f"{r}_token"]]


def _tokenizer_json_problems(tj: dict, facts: dict, pieces: list[str]) -> list[str]:
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or facts["model_type"] != "BPE":
        return [f"model type {model.get('type')!r}; the SentencePiece model is {facts['model_type']}"]
    problems = []
    if bool(model.get("byte_fallback")) != facts["byte_fallback"]:
        problems.append(f"byte_fallback {model.get('byte_fallback')!r}, the model's is {facts['byte_fallback']}")
    vocab = model.get("vocab") or {}
    wrong = [i for i, p in enumerate(pieces) if vocab.get(p) != i]
    if len(vocab) != len(pieces) or wrong:
        problems.append(f"vocab has {len(vocab)} entries for the model's {len(pieces)}"
                        + (f"; piece {pieces[wrong[0]]!r} should be id {wrong[0]}" if wrong else ""))
    added = {t.get("content"): t.get("id") for t in tj.get("added_tokens") or []}
    problems += [f"added token {facts[f'{r}_token']!r} should be id {facts[f'{r}_id']}, is {added.get(facts[f'{r}_token'])}"
                 for r in ROLES if facts[f"{r}_token"] and added.get(facts[f"{r}_token"]) != facts[f"{r}_id"]]
    return problems


@check("tokenizer_files", "1", refs=("model",),
       params_schema={"type": "object", "additionalProperties": False, "required": ["model"],
                      "properties": {"model": {"type": "string"}}})
def tokenizer_files(path, params, ctx):
    """tokenizer.json / tokenizer_config.json / special_tokens_map.json agree with the SentencePiece model."""
    import sentencepiece as spm

    model = ctx.path(params["model"])
    try:
        facts = sentencepiece_facts(model)
    except TransformError as e:
        raise CheckFailed(f"{params['model']}: {e.message}") from None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckFailed(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckFailed("not a JSON object")
    name = Path(path).name
    if name == "tokenizer.json":
        sp = spm.SentencePieceProcessor(model_file=str(model))
        problems = _tokenizer_json_problems(data, facts, [sp.id_to_piece(i) for i in range(sp.vocab_size())])
    elif name == "tokenizer_config.json":
        problems = _config_problems(data, facts)
    else:
        problems = _special_problems(data, facts)
    if problems:
        raise CheckFailed(f"{name} does not belong to {params['model']}: " + "; ".join(problems))
    return f"{name} matches {params['model']} ({facts['vocab_size']} pieces, {facts['model_type']})"
