"""`reconcile diff OLD NEW`: what a lock change does to storage, following the DAG.

Each artifact of the new lock is added, changed (with every field that differs), rebuilt as a
consequence, or untouched; artifacts only in the old lock are removed. A change is a *content*
change when it alters the bytes the artifact will have (fetch identity through its source,
transform, inputs, params, a pin replaced by another pin); only content changes cascade to
consumers. Pinning a value that was open, checks, dtype, bounds and `open:` reasons change
nothing downstream. Pure: two validated locks in, plain data out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .docs import artifact_size, cell, origin
from .hashing import sha256_json
from .pins import lock_recipe, stale_pins
from .registry import TRANSFORMS
from .spec import Artifact, Lock
from .units import human_bytes

FORMAT_VERSION = 1
DEFAULT_MAX_CHARS = 60_000


@dataclass(frozen=True)
class Change:
    """One field that differs; `content` when it alters the artifact's bytes."""

    field: str
    old: Any
    new: Any
    content: bool


def _fetch_identity(lock: Lock, a: Artifact) -> dict:
    src = lock.sources[a.fetch.source]
    return {"repo": src.repo, "type": src.type, "revision": src.revision, "path": a.fetch.path,
            "glob": a.fetch.glob}


def _repin(old: Any, new: Any) -> bool:
    """A pin replaced by another pin (not opened, not newly pinned): the bytes differ."""
    return old is not None and new is not None and old != new


def _fetch_changes(ol: Lock, o: Artifact, nl: Lock, n: Artifact) -> list[Change]:
    out = []
    if o.fetch.source != n.fetch.source:
        out.append(Change("fetch.source", o.fetch.source, n.fetch.source, False))
    oi, ni = _fetch_identity(ol, o), _fetch_identity(nl, n)
    # Like the planner: a pinned file whose pin is unchanged keeps its bytes whatever the revision.
    same_bytes = bool(n.sha256) and o.sha256 == n.sha256
    for k in ("repo", "type", "revision"):
        if oi[k] != ni[k]:
            out.append(Change(f"source.{k}", oi[k], ni[k], not same_bytes))
    for k in ("path", "glob"):
        if oi[k] != ni[k]:
            out.append(Change(f"fetch.{k}", oi[k], ni[k], True))
    of, nf = o.files or {}, n.files or {}
    if of and nf:
        for name in sorted(set(of) | set(nf)):
            om, nm = of.get(name), nf.get(name)
            if om is None or nm is None:
                out.append(Change(f"files.{name}", om and asdict(om), nm and asdict(nm), True))
            else:
                for k in ("sha256", "size"):
                    o_v, n_v = getattr(om, k), getattr(nm, k)
                    out.append(Change(f"files.{name}.{k}", o_v, n_v, _repin(o_v, n_v)))
    elif of != nf:
        out.append(Change("files", f"{len(of)} pinned", f"{len(nf)} pinned", False))
    return out


def _build_changes(o: Artifact, n: Artifact) -> list[Change]:
    out = []
    if o.build.transform != n.build.transform:
        out.append(Change("build.transform", o.build.transform, n.build.transform, True))
    if dict(o.build.inputs) != dict(n.build.inputs):
        out.append(Change("build.inputs", dict(o.build.inputs), dict(n.build.inputs), True))
    op, np_ = o.build.params, n.build.params
    for k in sorted(set(op) | set(np_)):
        if op.get(k) != np_.get(k):
            out.append(Change(f"build.params.{k}", op.get(k), np_.get(k), True))
    return out


def _checks(a: Artifact) -> list:
    return [{c.name: dict(c.params)} if c.params else c.name for c in a.checks]


def artifact_changes(old_lock: Lock, new_lock: Lock, path: str) -> list[Change]:
    """Every field of `path` that differs between the two locks (the artifact is in both)."""
    o, n = old_lock.artifacts[path], new_lock.artifacts[path]
    if (o.fetch is None) != (n.fetch is None):
        return [Change("kind", origin(old_lock, o), origin(new_lock, n), True)]
    out = _fetch_changes(old_lock, o, new_lock, n) if n.fetch else _build_changes(o, n)
    out.append(Change("sha256", o.sha256, n.sha256, _repin(o.sha256, n.sha256)))
    out.append(Change("size", o.size, n.size, _repin(o.size, n.size)))
    for k in ("dtype", "max_size", "open"):
        out.append(Change(k, getattr(o, k), getattr(n, k), False))
    out.append(Change("checks", _checks(o), _checks(n), False))
    return [c for c in out if c.old != c.new]


def _download(a: Artifact) -> int | None:
    return artifact_size(a) if a.fetch is not None else 0


def _source_changes(old: Lock, new: Lock) -> list[dict]:
    out = []
    for name in sorted(set(old.sources) | set(new.sources)):
        o, n = old.sources.get(name), new.sources.get(name)
        if o == n:
            continue
        fields = {k: [getattr(o, k), getattr(n, k)] for k in ("repo", "type", "revision", "gated", "licence")
                  if o and n and getattr(o, k) != getattr(n, k)}
        users = sum(1 for a in new.artifacts.values() if a.fetch and a.fetch.source == name)
        out.append({"name": name, "change": "added" if o is None else "removed" if n is None else "changed",
                    "fields": fields, "artifacts": users})
    return out


def _cascade(new: Lock, content: set[str], added: set[str]) -> list[dict]:
    """Consumers of content-changed artifacts, transitively, each with the chain from its root cause.

    Added artifacts are built anyway, and their consumers had to change their inputs to use them.
    """
    chain: dict[str, list[str]] = {p: [p] for p in content}
    out = []
    for p, a in new.artifacts.items():  # topological order: inputs are decided first
        if p in chain or p in added:
            continue
        cause = next((i for i in a.input_paths() if i in chain), None)
        if cause is not None:
            chain[p] = chain[cause] + [p]
            out.append({"path": p, "because": chain[p][0], "via": cause, "chain": chain[p]})
    return out


def _old_record(old: Lock, path: str) -> dict | None:
    """What the old lock says a pin was made under, shaped like a provenance record (to name what changed)."""
    a = old.artifacts.get(path)
    if a is None or a.sha256 is None:
        return None
    recipe = lock_recipe(old, a, {i: old.artifacts[i].sha256 for i in a.input_paths()})
    return {"sha256": a.sha256, "recipe": recipe, "recipe_hash": sha256_json(recipe) if recipe else None}


def _predicted(a: Artifact) -> int | None:
    """The exact output size the transform knows before building (micro models), else None."""
    t = TRANSFORMS.get(a.build.transform) if a.build is not None else None
    if t is None or t.predict_size is None:
        return None
    try:
        return t.predict_size(dict(a.build.params))
    except (KeyError, TypeError, ValueError):
        return None


def _size_change(o: Artifact, n: Artifact) -> dict | None:
    """`{"old", "new", "predicted"}` when the new size is known before building and differs."""
    new = _predicted(n)
    if new is None:
        return None
    old = o.size if o.size is not None else _predicted(o)
    return None if old == new else {"old": old, "new": new, "predicted": True}


def diff_locks(old: Lock, new: Lock) -> dict:
    """The structured diff of two validated locks (the `--json` form)."""
    added, changed, content = [], [], set()
    for p, a in new.artifacts.items():
        if p not in old.artifacts:
            added.append({"path": p, "origin": origin(new, a), "download_bytes": _download(a)})
            continue
        changes = artifact_changes(old, new, p)
        if changes:
            bytes_change = any(c.content for c in changes)
            if bytes_change:
                content.add(p)
            changed.append({"path": p, "content": bytes_change, "changes": [asdict(c) for c in changes],
                            "download_bytes": _download(a) if bytes_change else 0})
    removed = [{"path": p, "origin": origin(old, a)} for p, a in old.artifacts.items() if p not in new.artifacts]
    rebuilt = _cascade(new, content, {e["path"] for e in added})
    stale = stale_pins(new, lambda p: _old_record(old, p))
    for e in changed + rebuilt:  # pins made under the old recipe: `reconcile lock` re-pins them after apply
        e["stale_pin"] = stale[e["path"]].reason if e["path"] in stale else None
    for e in changed:
        e["size"] = _size_change(old.artifacts[e["path"]], new.artifacts[e["path"]])
    moving = content | {r["path"] for r in rebuilt}
    for e in changed:  # a changed artifact may also sit downstream of another change
        e["upstream"] = [i for i in new.artifacts[e["path"]].input_paths() if i in moving]
    dl = [e["download_bytes"] for e in added + changed]
    summary = {"added": len(added), "removed": len(removed), "changed": len(changed), "rebuilt": len(rebuilt),
               "download_bytes": sum(b for b in dl if b), "download_unknown": sum(b is None for b in dl)}
    lock_fields = [{"field": k, "old": getattr(old, k), "new": getattr(new, k)}
                   for k in ("version", "storage_version", "root") if getattr(old, k) != getattr(new, k)]
    return {"format_version": FORMAT_VERSION, "old_digest": old.digest, "new_digest": new.digest,
            "identical": old.digest == new.digest, "summary": summary, "lock": lock_fields,
            "sources": _source_changes(old, new),
            "added": added, "removed": removed, "changed": changed, "rebuilt": rebuilt}


def _value(v: Any) -> str:
    if isinstance(v, str) and len(v) in (40, 64) and all(c in "0123456789abcdef" for c in v):
        return f"`{v[:12]}`"  # commits and sha256s: enough to tell them apart in a PR comment
    text = json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else v
    return f"`{text[:80]}{'...' if len(text) > 80 else ''}`"


def _change_text(c: dict) -> str:
    return f"{c['field']}: {_value(c['old'])} -> {_value(c['new'])}"


def summary_line(d: dict) -> str:
    """`**Lock diff:** 1 added, 0 removed, 2 changed, 5 rebuilt downstream; 1.2 GB to download`."""
    s = d["summary"]
    if d["identical"]:
        return "**Lock diff:** no changes (the two locks are equivalent)."
    unknown = f" (+{s['download_unknown']} of unknown size)" if s["download_unknown"] else ""
    return (f"**Lock diff:** {s['added']} added, {s['removed']} removed, {s['changed']} changed, "
            f"{s['rebuilt']} rebuilt downstream; {human_bytes(s['download_bytes'])} to download{unknown}.")


def _size_text(size: dict | None) -> str:
    if not size:
        return ""
    old = human_bytes(size["old"]) if size["old"] is not None else "?"
    return f" ({old} -> {human_bytes(size['new'])}, predicted)"


def _stale_text(e: dict) -> str:
    return "; pins stale: re-pinned by the next `reconcile lock`" if e.get("stale_pin") else ""


def _sections(d: dict) -> list[tuple[str, str, list[str]]]:
    """(title, table header, rows) for each non-empty part of the diff."""
    def dl(b):
        return human_bytes(b) if b != 0 else ""
    src = [f"| {cell(s['name'])} | {s['change']} | "
           f"{cell('; '.join(f'{k}: {_value(o)} -> {_value(n)}' for k, (o, n) in s['fields'].items()))} | "
           f"{s['artifacts']} |" for s in d["sources"]]
    chg = [f"| `{cell(e['path'])}` | {cell('; '.join(_change_text(c) for c in e['changes']))} | "
           f"{'yes' if e['content'] else 'no'}{cell(_size_text(e.get('size')))}{_stale_text(e)} | "
           f"{dl(e['download_bytes'])} |" for e in d["changed"]]
    reb = [f"| `{cell(e['path'])}` | because `{cell(e['because'])}` changed{_stale_text(e)} | "
           f"{cell(' -> '.join(e['chain']))} |" for e in d["rebuilt"]]
    add = [f"| `{cell(e['path'])}` | {cell(e['origin'])} | {dl(e['download_bytes'])} |" for e in d["added"]]
    rem = [f"| `{cell(e['path'])}` | {cell(e['origin'])} |" for e in d["removed"]]
    top = [f"| {e['field']} | {_value(e['old'])} -> {_value(e['new'])} |" for e in d["lock"]]
    return [("Lock", "| field | change |\n|---|---|", top),
            ("Sources", "| source | change | fields | artifacts |\n|---|---|---|---|", src),
            ("Changed", "| artifact | what changed | new bytes | download |\n|---|---|---|---|", chg),
            ("Rebuilt as a consequence", "| artifact | why | chain |\n|---|---|---|", reb),
            ("Added", "| artifact | origin | download |\n|---|---|---|", add),
            ("Removed", "| artifact | origin |\n|---|---|", rem)]


def render_markdown(d: dict, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The diff as Markdown for a PR comment, cut at ~`max_chars` with a note counting what was left out."""
    budget = max(0, max_chars - 300)  # room for the truncation note itself
    parts = [summary_line(d) + "\n"]
    used, left_out = len(parts[0]), 0
    for title, header, rows in _sections(d):
        if not rows:
            continue
        head = f"\n### {title} ({len(rows)})\n\n{header}\n"
        if left_out or used + len(head) + len(rows[0]) + 1 > budget:
            left_out += len(rows)
            continue
        parts.append(head)
        used += len(head)
        for row in rows:
            if left_out or used + len(row) + 1 > budget:
                left_out += 1
                continue
            parts.append(row + "\n")
            used += len(row) + 1
    if left_out:
        parts.append(f"\n> **Truncated:** {left_out} entries left out to stay under {max_chars:,} characters; "
                     "run `reconcile diff --json OLD NEW` for the full diff.\n")
    return "".join(parts)
