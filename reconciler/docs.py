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
from .publish import write_bytes_atomic
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


def render_readme(lock: Lock, lock_name: str) -> str:
    """The README text for the lock: inventory, how to verify, how to download. Lock-only, deterministic."""
    head = ["# Storage", "",
            f"Generated by `reconcile docs` from `{lock_name}`; do not edit (re-run `reconcile docs`).", "",
            f"- storage version: `{lock.storage_version}`",
            f"- lock digest: `{lock.digest}`",
            f"- artifacts: {len(lock.artifacts)}", ""]
    return "\n".join(head + _inventory(lock) + _verify(lock) + _download(lock)).rstrip("\n") + "\n"


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
    try:
        current = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        current = ""
    if current == text:
        return None
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), f"{path} (on disk)",
                                     f"{path} (from the lock)", lineterm="", n=1))
    return diff[:head] + ([f"... ({len(diff) - head} more diff lines)"] if len(diff) > head else [])


def write_docs(path: Path, text: str) -> bool:
    """Write the rendered text atomically; False (and no write) when it is already current."""
    if stale_diff(path, text) is None:
        return False
    write_bytes_atomic(path, text.encode("utf-8"), where=str(path))
    return True
