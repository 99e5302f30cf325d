"""A small stand-in for the LLaMA-2 tokenizer: a real SentencePiece BPE model, trained here.

The real `tokenizer.model` (499,723 B, vocab 32000) is gated upstream and `../shared` is absent
on users' machines and in CI, so tests, the demo and benchmarks use this one: same model type
(BPE), same byte fallback, same special ids (unk 0 / bos 1 / eos 2, no pad), a small vocab.
It is trained by the real `sentencepiece` trainer on a fixed built-in code corpus with one
thread and no input sampling or shuffling, which makes the bytes identical run after run
(see `tests/test_models_zoo.py`).
"""

from __future__ import annotations

import io
from pathlib import Path

DEFAULT_VOCAB = 1000

_NAMES = ["total", "count", "items", "value", "result", "index", "left", "right", "node", "graph",
          "queue", "stack", "matrix", "prices", "words", "target", "cache", "memo", "answer", "limit"]
_OPS = [("+", "add"), ("-", "subtract"), ("*", "multiply"), ("//", "floor_divide"), ("%", "modulo"),
        ("**", "power"), ("&", "bit_and"), ("|", "bit_or"), ("^", "bit_xor"), ("<<", "shift")]
_TEMPLATES = [
    "def {op}_{a}({a}, {b}):\n    return {a} {sym} {b}\n",
    "def max_{a}(xs):\n    {b} = xs[0]\n    for x in xs:\n        if x > {b}:\n            {b} = x\n    return {b}\n",
    "class {A}:\n    def __init__(self, {a}):\n        self.{a} = {a}\n\n    def __repr__(self):\n"
    "        return f\"{A}({{self.{a}!r}})\"\n",
    "import sys\n\nn = int(sys.stdin.readline())\n{a} = list(map(int, input().split()))\nprint(sum({a}) {sym} n)\n",
    "for i in range(len({a})):\n    for j in range(i + 1, len({a})):\n        if {a}[i] {sym} {a}[j] == {b}:\n"
    "            print(i, j)\n",
    "# {op} every {a} with {b}, 0 <= i < 1024\n{b} = [{a} {sym} k for k in range(1024) if k % 3 == 0]\n",
    "assert {op}_{a}(3, 4) == {val}, \"{op}_{a} failed\"\n",
    "while {a}:\n    {b} = {a}.pop()\n    if {b} is None:\n        break\n    yield {b} {sym} 1\n",
    "{a} = {{\"{b}\": [1, 2, 3], \"size\": 42, \"ok\": True}}\nreturn {a}.get(\"{b}\", [])\n",
    "try:\n    {a} = open(\"{b}.txt\").read()\nexcept FileNotFoundError as e:\n    raise ValueError(str(e))\n",
]


def corpus_lines() -> list[str]:
    """The fixed training corpus: templated Python snippets, one snippet per sentence."""
    lines = []
    for t, template in enumerate(_TEMPLATES):
        for i, a in enumerate(_NAMES):
            sym, op = _OPS[(i + t) % len(_OPS)]
            b = _NAMES[(i * 7 + t + 3) % len(_NAMES)]
            lines.append(template.format(a=a, b=b, A=a.capitalize(), sym=sym, op=op, val=i * t + 7))
    return lines


def tokenizer_model_bytes(vocab_size: int = DEFAULT_VOCAB) -> bytes:
    """Train the stand-in SentencePiece BPE model (byte fallback, unk 0 / bos 1 / eos 2) and return its bytes."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=buf,
        model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, allow_whitespace_only_pieces=True,
        # LLaMA-2's normalisation: none, keep whitespace runs (indentation matters in code).
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        # Determinism: one thread, every sentence, no shuffling.
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=4096, hard_vocab_limit=True, minloglevel=2,
    )
    return buf.getvalue()


def write_tokenizer_model(path: str | Path, vocab_size: int = DEFAULT_VOCAB) -> Path:
    """Write the stand-in tokenizer.model to `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tokenizer_model_bytes(vocab_size))
    return path


# ---- the Hugging Face files an upstream repo ships next to tokenizer.model --------------------------

def _added(content: str, typed: bool) -> dict:
    tok = {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **tok} if typed else tok


# princeton-nlp/Sheared-LLaMA-2.7B's tokenizer_config.json and special_tokens_map.json, key for key
# (../shared/upstream holds the real bytes): what transformers 4.x wrote for a LlamaTokenizer.
SHEARED_TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": _added("<s>", True),
    "clean_up_tokenization_spaces": False, "eos_token": _added("</s>", True), "legacy": False,
    "model_max_length": 1000000000000000019884624838656, "pad_token": None, "padding_side": "right",
    "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": _added("<unk>", True),
}
SHEARED_SPECIAL_TOKENS_MAP = {"bos_token": _added("<s>", False), "eos_token": _added("</s>", False),
                              "unk_token": _added("<unk>", False)}


def tokenizer_json_bytes(model_path: str | Path) -> bytes:
    """The fast-tokenizer `tokenizer.json` of a LLaMA SentencePiece model, as transformers 4.x converted it.

    Merges are ranked by the score of the merged piece (ties: ids), which is what makes the
    BPE reproduce SentencePiece; normalizer Prepend("▁") + Replace(" ", "▁"), BOS post-processor,
    byte fallback. Uses the `tokenizers` library (a transformers dependency; dev-only here).
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    merges = []
    for piece, i in vocab.items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        merges += [(-sp.get_score(i), i, vocab[a], vocab[b], a, b) for a, b in local]
    merges.sort()  # transformers 4.x: by merged piece's score, then its id, then the parts' ids
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=sp.id_to_piece(0),
                               fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    bos = sp.id_to_piece(sp.bos_id())
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, sp.bos_id())])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(sp.id_to_piece(i), normalized=False, special=True)
                            for i in (sp.unk_id(), sp.bos_id(), sp.eos_id())])
    return (tok.to_str(pretty=True) + "\n").encode("utf-8")
