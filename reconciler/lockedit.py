"""`reconcile lock`: pin open values and keep the lock canonical, preserving comments.

Trust on first use, like `terraform init` or `dvc commit`: sha256/size that the lock leaves
open are filled from what apply produced and recorded (provenance), branch revisions from
the commit apply fetched; `--resolve` asks the hub instead. The rewrite goes through a
round-trip YAML library (comments and flow style survive) and the atomic publish path.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from .lockfile import lock_from_data, parse_yaml
from .pins import StalePin, stale_pins
from .plan import make_plan
from .publish import write_bytes_atomic
from .spec import Lock
from .state import StatCache, observe


@dataclass(frozen=True)
class OpenPin:
    """A value the lock leaves unpinned, and the reason it declares (if any)."""

    where: str
    reason: str | None


def _yaml() -> YAML:
    y = YAML()  # round-trip mode: keeps comments, key order and flow style
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def load_roundtrip(path: Path) -> CommentedMap:
    """Load the lock for editing (validated first by the strict loader)."""
    text = path.read_text(encoding="utf-8")
    parse_yaml(text, str(path))
    return _yaml().load(text)


def dump(doc: CommentedMap) -> str:
    """Canonical text of a round-trip document."""
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def open_pins(lock: Lock) -> list[OpenPin]:
    """Every unpinned revision, sha256, size and folder member, with its declared reason."""
    out = []
    for s in lock.sources.values():
        if not s.pinned:
            reason = (lock.raw["sources"][s.name] or {}).get("open")
            out.append(OpenPin(f'sources."{s.name}".revision ({s.revision})', reason))
    for a in lock.artifacts.values():
        missing = [k for k in ("sha256", "size") if getattr(a, k) is None and not (k == "size" and a.is_dir)]
        if a.is_dir and not a.files:
            missing.append("files")
        if missing:
            out.append(OpenPin(f'artifacts."{a.path}".{"/".join(missing)}', a.open))
    return out


def _set(m: CommentedMap, key: str, value) -> None:
    if key in m:
        m[key] = value
        return
    keys = list(m.keys())
    anchor = max((keys.index(k) for k in ("fetch", "build", "sha256", "size", "content_digest", "recipe")
                  if k in keys), default=-1)
    m.insert(anchor + 1, key, value)


def _pin_one(m: CommentedMap, a, o, recipe_hash: str | None, repin: bool) -> list[str]:
    """Write every pin of one artifact together: sha256, size (or files), content_digest, recipe.

    `repin`: the artifact's pins are replaced (it was unpinned or stale); otherwise only missing
    fields are added (e.g. `recipe` in a lock written before recipes were recorded).
    """
    prov = o.prov or {}
    want: dict = {"sha256": o.sha256}
    if a.is_dir:
        sizes = prov.get("member_sizes", {})
        want["files"] = CommentedMap((n, CommentedMap([("sha256", s), ("size", sizes.get(n))]))
                                     for n, s in sorted(o.members.items()))
    else:
        want["size"] = o.size
    want["content_digest"] = prov.get("content_digest")
    want["recipe"] = recipe_hash
    out = []
    for key, value in want.items():
        if value is None:
            if repin and key == "content_digest" and key in m:
                del m[key]  # the new bytes are not a safetensors file: no digest may stay behind
                out.append("content_digest removed")
            continue
        if m.get(key) is None or (repin and m.get(key) != value):
            _set(m, key, value)
            out.append(f"files ({len(value)} pinned)" if key == "files" else
                       f"{key} {value[:12] if key == 'recipe' else value}")
    if "open" in m and repin and out:
        del m["open"]  # the pin it explained is made now
        out.append("open note removed")
    return out


@dataclass(frozen=True)
class LockResult:
    """What `reconcile lock` changed, and the stale pins it could not re-pin yet."""

    changes: list[str]
    still_stale: list[StalePin]


def pin_from_state(lock_path: Path, lock: Lock, root: Path) -> LockResult:
    """Pin what apply produced: open values, and stale pins re-pinned with every field together.

    Only bytes that apply produced from the lock's current recipe, still intact, are trusted.
    """
    doc = load_roundtrip(lock_path)
    observed = observe(lock, root, StatCache(root))
    plan = {x.path: x for x in make_plan(lock, observed).actions}
    changes: list[str] = []
    commits: dict[str, str] = {}
    for path, a in lock.artifacts.items():
        o, x = observed[path], plan[path]
        if o.sha256 is None or o.prov_sha256 != o.sha256 or x.action != "ok":
            continue
        repin = a.sha256 is None or x.stale_pin is not None
        changes += [f"{path}: {c}" for c in _pin_one(doc["artifacts"][path], a, o, o.prov_recipe, repin)]
        if a.fetch is not None and (o.prov or {}).get("commit"):
            commits.setdefault(a.fetch.source, o.prov["commit"])
    for name, commit in commits.items():
        src = lock.sources[name]
        if not src.pinned and (doc["sources"][name] or {}).get("revision") == src.revision:
            doc["sources"][name]["revision"] = commit
            changes.append(f"sources.{name}: revision {src.revision} -> {commit}")
            if "open" in doc["sources"][name]:
                del doc["sources"][name]["open"]
                changes.append(f"sources.{name}: open note removed")
    new = _write(lock_path, doc)
    return LockResult(changes, list(stale_pins(new, lambda p: observed[p].prov if p in observed else None).values()))


def resolve_from_hub(lock_path: Path, lock: Lock) -> list[str]:
    """`lock --resolve`: pin branch revisions and LFS sha256/size from the hub's answers."""
    from .sources import hf
    doc = load_roundtrip(lock_path)
    changes = []
    pinned = {}
    for name, src in lock.sources.items():
        commit = src.revision if src.pinned else hf.resolve_revision(src)
        if commit != src.revision:
            doc["sources"][name]["revision"] = commit
            changes.append(f"sources.{name}: revision {src.revision} -> {commit}")
        pinned[name] = src.__class__(src.name, src.repo, src.type, commit, src.gated, src.licence)
    for path, a in lock.artifacts.items():
        if a.fetch is None or a.fetch.path is None or (a.sha256 and a.size is not None):
            continue
        rf = hf.remote_file(pinned[a.fetch.source], a.fetch.path)
        m = doc["artifacts"][path]
        if a.sha256 is None and rf.sha256:
            _set(m, "sha256", rf.sha256)
            changes.append(f"{path}: sha256 {rf.sha256}")
        if a.size is None:
            _set(m, "size", rf.size)
            changes.append(f"{path}: size {rf.size}")
    _write(lock_path, doc)
    return changes


def _write(lock_path: Path, doc: CommentedMap) -> Lock:
    text = dump(doc)
    new = lock_from_data(parse_yaml(text, str(lock_path)), str(lock_path))  # never write an invalid lock
    write_bytes_atomic(lock_path, text.encode("utf-8"), where=str(lock_path))
    return new


def canonical_problems(lock_path: Path) -> list[str]:
    """Differences between the lock text and its canonical form (empty when canonical)."""
    text = lock_path.read_text(encoding="utf-8")
    canon = dump(load_roundtrip(lock_path))
    if text == canon:
        return []
    for i, (a, b) in enumerate(zip(text.splitlines(), canon.splitlines()), 1):
        if a != b:
            return [f"line {i}: {a.strip()!r} would be written {b.strip()!r}"]
    return ["line count differs from the canonical form"]
