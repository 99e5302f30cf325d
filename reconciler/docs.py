"""`reconcile docs`: the storage README, rendered from the lock.

Design. The committed `<root>/README.md` is a pure function of the lock: no provenance, no
clock, no host name, stable ordering. A fresh clone has no provenance and no storage, yet
`reconcile docs --check` must pass there offline, so nothing machine-local may reach that
file. What transforms reported while building (rows written, rows dropped by reason...) is
machine-local knowledge from provenance records; it is rendered only with
`--with-provenance`, appended to the same README text but written by default to
`<root>/.reconcile/README.provenance.md`, inside the state folder that git and `gc` ignore.
Only `info` counts are used from provenance (deterministic for deterministic transforms);
`built_at`, `duration_s` and `tools` never appear.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from .layout import PROVENANCE_README
from .provenance import read_provenance
from .publish import write_output_file
from .spec import Artifact, Lock, Source
from .units import human_bytes

README_NAME = "README.md"


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def repo_url(src: Source) -> str:
    """The hub page of a source (where a gated licence is accepted)."""
    prefix = "datasets/" if src.type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{src.repo}"


def short_rev(revision: str) -> str:
    """A 40-hex commit shortened to 12 characters; branch names kept whole."""
    return revision[:12] if len(revision) == 40 else revision


def origin(lock: Lock, a: Artifact) -> str:
    """`repo@rev: file` for a fetch, `built by copy(src=a.bin)` for a build."""
    if a.fetch is not None:
        src = lock.sources[a.fetch.source]
        return f"{src.repo}@{short_rev(src.revision)}: {a.fetch.path or a.fetch.glob}"
    ins = ", ".join(f"{k}={'+'.join(v) if isinstance(v, list) else v}" for k, v in sorted(a.build.inputs.items()))
    return f"built by {a.build.transform}({ins})"


def artifact_size(a: Artifact) -> int | None:
    """Pinned size: the file's, or a folder's member sizes summed when all are pinned."""
    if a.is_dir:
        sizes = [m.size for m in (a.files or {}).values()]
        return sum(sizes) if sizes and None not in sizes else None
    return a.size


def _pin(a: Artifact) -> str:
    if a.sha256:
        return f"`{a.sha256}`" + (f" ({len(a.files)} files)" if a.files else "")
    return f"open: {a.open}" if a.open else "unpinned"


def _inventory(lock: Lock) -> list[str]:
    lines = ["## Inventory", "", "| path | source | size | dtype | sha256 |", "|---|---|---|---|---|"]
    for p, a in sorted(lock.artifacts.items()):  # by path: a reader scans an inventory, not a DAG
        lines.append(f"| `{cell(p)}` | {cell(origin(lock, a))} | {human_bytes(artifact_size(a))} | "
                     f"{cell(a.dtype or '')} | {cell(_pin(a))} |")
    return lines + [""]


def checksum_lines(lock: Lock) -> list[str]:
    """`<sha256>  <path>` for every pinned file and pinned folder member (paths from the root)."""
    out = []
    for p, a in sorted(lock.artifacts.items()):
        if a.is_dir:
            out.extend(f"{m.sha256}  {p}/{n}" for n, m in sorted((a.files or {}).items()) if m.sha256)
        elif a.sha256:
            out.append(f"{a.sha256}  {p}")
    return out


def _verify(lock: Lock) -> list[str]:
    lines = ["## How to verify", "",
             "From the folder holding the lock file:", "",
             "```sh", "reconcile check          # fast: sizes, stat-cached sha256, declared checks",
             "reconcile check --deep   # rehash every byte and rerun every check", "```", ""]
    sums = checksum_lines(lock)
    if sums:
        lines += ["Without reconcile, from this folder (the storage root):", "",
                  "```sh", "sha256sum -c <<'EOF'", *sums, "EOF", "```", ""]
    open_ = [p for p, a in lock.artifacts.items() if not a.sha256]
    if open_:
        lines += [f"{len(open_)} artifact(s) have no sha256 pin yet; `reconcile lock` pins them after `reconcile "
                  "apply`.", ""]
    return lines


def _download(lock: Lock) -> list[str]:
    lines = ["## How to download", "",
             "Sources are fetched from the Hugging Face Hub at the revisions below. Set a token "
             "(`export HF_TOKEN=...` or `hf auth login`), then run `reconcile apply`.", ""]
    if lock.sources:
        lines += ["| source | repo | type | revision | licence |", "|---|---|---|---|---|"]
        for name, s in sorted(lock.sources.items()):
            lines.append(f"| {cell(name)} | [{cell(s.repo)}]({repo_url(s)}) | {s.type} | `{cell(s.revision)}` | "
                         f"{cell(s.licence or '')} |")
        lines.append("")
    gated = [s for _, s in sorted(lock.sources.items()) if s.gated]
    if gated:
        lines += ["Gated sources: accept the licence on each page with the account of your token first:", ""]
        lines += [f"- {s.repo}: {repo_url(s)}" for s in gated] + [""]
    return lines


def _history(lock: Lock) -> list[str]:
    releases = (lock.raw or {}).get("releases") or []
    if not releases:
        return []
    lines = ["## Version history", "", "From the lock's `releases` (newest first). The newest date is the storage's "
             "date: `metadata.json`'s `created_at` and the stats file names.", "",
             "| version | date | changes |", "|---|---|---|"]
    lines += [f"| {cell(r['version'])} | {cell(r.get('date', ''))} | {cell(r['changes'])} |" for r in releases]
    return lines + [""]


# What each transform deliberately does differently from the WMTP v1 scripts, and why. Rendered
# for the transforms the lock uses, so the README states it next to the artifacts it concerns.
V1_DIFFERENCES: dict[str, list[tuple[str, str]]] = {
    "to_alpaca": [
        ("CodeContests rows carry two more metadata keys: `language` (python2 / python3) and `contest_site` (the "
         "upstream `source` enum: codeforces, atcoder, ...); v1's `source: code_contests`, `difficulty` (-1 when "
         "absent) and `has_tests` are unchanged.", "filter by language or site without re-reading the parquet"),
        ("A CodeContests problem without a `name` is refused instead of being named `task_{idx}`.",
         "upstream has no such row, and an index depends on how the split is sharded"),
        ("Rows whose solution or problem description is empty (or only whitespace) are dropped.",
         "an empty output or instruction teaches nothing; `task_id` numbering is unaffected (it indexes the full "
         "list, as in v1)"),
    ],
    "alpaca_schema": [("`schema.json` is a full JSON Schema (draft 2020-12) and keeps v1's `dataset`, `format` and "
                       "`required_fields` keys; v1's `field_types` is its `properties`.",
                       "`reconcile check` validates every row against it")],
    "alpaca_stats": [("The stats file is named after the release date in the lock (`<date>_summary.json`), not "
                      "the day it was computed.", "the same lock must give the same bytes (no wall clock)")],
    "model_metadata": [
        ("`created_at` is the release date from the lock; `source.revision` is the pinned commit (not a branch); "
         "`sha256` lists the weights, tokenizer and original checkpoint; `tokenizer` records the SentencePiece "
         "facts (type, vocab size, special ids).", "derived from pins, so a revision change rebuilds it and two "
         "builds are byte-identical"),
        ("No `files` map.", "the paths are fixed by the layout; `sha256` names each file")],
    "tokenizer_config": [("`tokenizer_config.json` holds only the keys transformers writes for a LlamaTokenizer; "
                          "every `tokenizer/` folder also has `special_tokens_map.json` and `tokenizer.json`.",
                          "a `model_type` key there breaks transformers 5, and without `tokenizer.json` "
                          "transformers 5 splits indentation differently from SentencePiece")],
    "mtp_config": [("micro-mtp `configs/config.json` says `intermediate_size` 1536 where v1 wrote 1365.",
                    "1536 is what the weights hold (LLaMA FFN rule for dim 512, multiple_of 256)")],
}


def _differences(lock: Lock) -> list[str]:
    used = {a.build.transform for a in lock.artifacts.values() if a.build is not None}
    rows = [(t, what, why) for t, items in V1_DIFFERENCES.items() if t in used for what, why in items]
    if not rows:
        return []
    lines = ["## Differences from the v1 scripts", "",
             "What this storage deliberately does differently from the WMTP v1 download/convert scripts:", "",
             "| transform | difference | reason |", "|---|---|---|"]
    return lines + [f"| `{t}` | {cell(what)} | {cell(why)} |" for t, what, why in rows] + [""]


FAQ = [
    ("How do I verify the storage?", "`reconcile check` (fast: stat-cached hashes and every declared check) or "
     "`reconcile check --deep` (rehash every byte); without reconcile, the `sha256sum -c` block above."),
    ("How do I rebuild an artifact?", "Delete it (or change its recipe in the lock) and run `reconcile apply`: "
     "only it and what depends on it are rebuilt, and the bytes must match the pin. After an intended change, "
     "clear its `sha256`, apply, then `reconcile lock` pins the new bytes."),
    ("How do I add a model?", "In a pull request: declare its repo under `sources:`, add `fetch` artifacts for "
     "its files and `build` artifacts for the conversions (copy an existing model's entries), run "
     "`reconcile plan`, `reconcile apply`, `reconcile lock`, `reconcile docs`; CI posts `reconcile diff`."),
    ("Why is a pin still open?", "`reconcile lock --check` lists each open pin with its reason; the first "
     "download pins it (`reconcile lock`), or `reconcile lock --resolve` asks the hub."),
]


# Asked only when the lock builds the transform.
FAQ_FOR = {
    "tokenizer_config": [
        ("Does `tokenizer/` encode exactly like SentencePiece?", "`AutoTokenizer.from_pretrained(\"<model>/tokenizer\")` "
         "gives `[BOS, *sentencepiece ids]` for every text in transformers 4.x (fast and slow). In transformers 5.x "
         "it does too, except that a text that *starts* with a space (or `▁`) gets one `▁` "
         "fewer (`\" x\"` gives `▁x` where SentencePiece gives `▁▁`, `x`); a leading tab or newline, and indentation "
         "inside a text, match. The cause is in transformers 5, not in these files: `LlamaTokenizer.__init__` (`models/llama/tokenization_llama.py`) "
         "ignores `tokenizer.json`'s normalizer (Prepend `▁` + Replace) and builds `Metaspace(prepend_scheme=\"first\", "
         "split=False)`, which prepends `▁` only when the text does not already start with one. No "
         "`tokenizer_config.json` key changes this (`legacy`, `add_prefix_space`, `from_slow`). Where it matters, "
         "load `PreTrainedTokenizerFast.from_pretrained(\"<model>/tokenizer\")`: it runs `tokenizer.json` as written "
         "and matches SentencePiece on every text in 4.x and 5.x (BOS added)."),
    ],
}


def _faq(lock: Lock) -> list[str]:
    used = {a.build.transform for a in lock.artifacts.values() if a.build is not None}
    lines = ["## FAQ", ""]
    for q, a in FAQ + [qa for t, items in FAQ_FOR.items() if t in used for qa in items]:
        lines += [f"**{q}** {a}", ""]
    return lines


def render_readme(lock: Lock, lock_name: str) -> str:
    """The README text: inventory, verify, download, version history, v1 differences, FAQ. Lock-only, deterministic."""
    head = ["# Storage", "",
            f"Generated by `reconcile docs` from `{lock_name}`; do not edit (re-run `reconcile docs`).", "",
            f"- storage version: `{lock.storage_version}`",
            f"- lock digest: `{lock.digest}`",
            f"- artifacts: {len(lock.artifacts)}", ""]
    body = _inventory(lock) + _verify(lock) + _download(lock) + _history(lock) + _differences(lock) + _faq(lock)
    return "\n".join(head + body).rstrip("\n") + "\n"


def _info_lines(info: dict, indent: str = "") -> list[str]:
    out = []
    for k in sorted(info):
        v = info[k]
        if isinstance(v, dict) and v:
            out.append(f"{indent}- {k}:")
            out.extend(_info_lines(v, indent + "  "))
        else:
            out.append(f"{indent}- {k}: {json.dumps(v, sort_keys=True, ensure_ascii=False)}")
    return out


def render_provenance(lock: Lock, root: Path) -> str:
    """'What the transforms reported': each built artifact's provenance `info`, when recorded.

    Only `info` is used (counts are deterministic); a record made for other bytes than the lock
    pins is flagged rather than hidden, so a stale number is never taken for a current one.
    """
    lines = ["", "## What the transforms reported", "",
             "From the provenance records of this machine (not part of the committed README).", ""]
    found = 0
    for p, a in lock.artifacts.items():
        rec = read_provenance(root, p) if a.build is not None else None
        if not rec or not rec.get("info"):
            continue
        found += 1
        stale = a.sha256 and rec.get("sha256") != a.sha256
        lines.append(f"### `{p}` ({a.build.transform})" + (" - record is for other bytes than the pin" if stale
                                                            else ""))
        lines += [""] + _info_lines(rec["info"]) + [""]
    if not found:
        lines += ["No build has recorded any information yet (run `reconcile apply`).", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def default_out(root: Path, with_provenance: bool) -> Path:
    """README.md under the root; the provenance variant lives in the state folder git never sees."""
    return root / (PROVENANCE_README if with_provenance else README_NAME)


def stale_diff(path: Path, text: str, head: int = 30) -> list[str] | None:
    """None when `path` holds exactly `text`; else the first lines of a unified diff (disk -> expected)."""
    try:  # only a regular file: reading a FIFO or a device would block or never end
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
    except (OSError, UnicodeDecodeError):
        current = ""
    if current == text:
        return None
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), f"{path} (on disk)",
                                     f"{path} (from the lock)", lineterm="", n=1))
    return diff[:head] + ([f"... ({len(diff) - head} more diff lines)"] if len(diff) > head else [])


def write_docs(path: Path, text: str, *, make_parent: bool = False) -> bool:
    """Write the rendered text atomically; False (and no write) when it is already current.

    Only to a regular file (or a new one) in an existing folder, `make_parent` for the default path.
    """
    if stale_diff(path, text) is None and path.is_file():
        return False
    write_output_file(path, text.encode("utf-8"), make_parent=make_parent)
    return True
