"""On-disk repo store of the local stand-in hub, and the helper that adds revisions to it.

Layout (one folder per repo, several revisions side by side)::

    <store>/
      models/<owner>/<name>/            datasets live under datasets/<owner>/<name>/
        refs.json                       {"branches": {"main": "<commit>"}, "gated": false,
                                         "tokens": ["hf_..."], "licence": "cc-by-4.0"}
        commits/<commit>.json           manifest: {"commit", "repo", "type",
                                         "files": {path: {"size", "sha256", "oid", "lfs"}}}
        tree/<commit>/<path...>         the file bytes of that revision

`oid` is what git would call the blob id: sha1 of the git blob for a regular file, sha1 of the
LFS pointer text for an LFS file (as on the real hub). sha256 and sizes are computed once, when
the revision is added, so serving a HEAD never reads file bytes.

A commit id is sha1 over the repo id, its type and the sorted (path, sha256) list: adding the
same content twice gives the same commit, and different content a different one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

FileSource = Union[bytes, str, os.PathLike]

# Files the real hub would keep in LFS: binary formats by extension, and anything over 10 MiB
# (the hub refuses larger non-LFS files).
LFS_SUFFIXES = frozenset({
    ".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".parquet", ".arrow", ".model", ".gguf", ".h5",
    ".msgpack", ".npy", ".npz", ".onnx", ".zip", ".tar", ".gz", ".zst", ".pkl", ".jsonl",
})
LFS_MIN_SIZE = 10 * 1024 * 1024
TYPE_DIRS = {"model": "models", "dataset": "datasets"}
_COPY_CHUNK = 8 * 1024 * 1024


def is_lfs(path: str, size: int) -> bool:
    """Whether the hub stores this file in LFS (sha256 ETag) rather than as a git blob."""
    return Path(path).suffix.lower() in LFS_SUFFIXES or size >= LFS_MIN_SIZE


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer text the repo's git tree holds for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_sha1(data: bytes) -> str:
    """git's blob id for these bytes (what the hub sends as ETag for a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_dir(store: Path, repo: str, type: str) -> Path:
    """The folder of a repo inside the store."""
    if type not in TYPE_DIRS:
        raise ValueError(f"repo type must be one of {sorted(TYPE_DIRS)}, not {type!r}")
    parts = repo.split("/")
    if not 1 <= len(parts) <= 2 or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad repo id {repo!r}")
    return Path(store) / TYPE_DIRS[type] / Path(*parts)


def _store_file(src: FileSource, dest: Path) -> tuple[int, str, bytes | None]:
    """Write one file into the revision folder; returns (size, sha256, bytes if small)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, (bytes, bytearray)):
        dest.write_bytes(src)
        return len(src), hashlib.sha256(src).hexdigest(), bytes(src)
    h, size = hashlib.sha256(), 0
    # One pass over the source: copy and hash together (sources may be GBs).
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(_COPY_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    small = dest.read_bytes() if size < LFS_MIN_SIZE else None
    return size, h.hexdigest(), small


def _entry(path: str, size: int, sha256: str, small: bytes | None) -> dict:
    lfs = small is None or is_lfs(path, size)
    oid = hashlib.sha1(lfs_pointer(sha256, size)).hexdigest() if lfs else git_blob_sha1(small or b"")
    return {"size": size, "sha256": sha256, "oid": oid, "lfs": lfs}


def _check_path(path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad file path {path!r}")


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # readers (the running server) see old or new, never half


def add_revision(store: str | os.PathLike, repo: str, type: str, files: Mapping[str, FileSource], *,
                 branch: str = "main", gated: bool = False, tokens: tuple[str, ...] = (),
                 licence: str | None = None) -> str:
    """Add a revision holding exactly `files` (path -> bytes or source file path); returns its commit.

    Moves `branch` to the new commit; earlier commits stay downloadable by their id. `gated`
    marks the repo gated: resolve requests then need a bearer token listed in `tokens`.
    Safe to call while a hub serves the store.
    """
    rdir = repo_dir(Path(store), repo, type)
    (rdir / "tree").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=rdir))
    try:
        entries = {}
        for path in sorted(files):
            _check_path(path)
            entries[path] = _entry(path, *_store_file(files[path], staging / path))
        key = {"repo": repo, "type": type, "files": [[p, entries[p]["sha256"]] for p in sorted(entries)]}
        commit = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
        final = rdir / "tree" / commit
        if not final.exists():
            os.replace(staging, final)
            _write_json(rdir / "commits" / f"{commit}.json",
                        {"commit": commit, "repo": repo, "type": type, "files": entries})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    refs = read_refs(rdir)
    refs["branches"][branch] = commit
    refs["gated"] = gated
    refs["tokens"] = sorted(set(refs.get("tokens", [])) | set(tokens))
    refs["licence"] = licence if licence is not None else refs.get("licence")
    _write_json(rdir / "refs.json", refs)
    return commit


def read_refs(rdir: Path) -> dict:
    """A repo's refs.json (an empty one for a repo not created yet)."""
    try:
        return json.loads((rdir / "refs.json").read_text())
    except FileNotFoundError:
        return {"branches": {}, "gated": False, "tokens": [], "licence": None}


@dataclass(frozen=True)
class Revision:
    """One served revision: its commit, manifest entries and the folder holding the bytes."""

    repo: str
    type: str
    commit: str
    files: Mapping[str, dict]
    root: Path

    def file_path(self, path: str) -> Path:
        """Where the bytes of `path` live on disk."""
        return self.root / path


class Store:
    """Read side of a store, as the server sees it: repos, refs and cached manifests."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._manifests: dict[Path, dict] = {}  # commits are immutable, so caching is safe

    def refs(self, repo: str, type: str) -> dict | None:
        """refs.json of a repo, or None when the repo does not exist."""
        try:
            rdir = repo_dir(self.root, repo, type)
        except ValueError:
            return None
        return read_refs(rdir) if (rdir / "refs.json").is_file() else None

    def revision(self, repo: str, type: str, rev: str) -> Revision | None:
        """The revision a branch name or commit id designates, or None."""
        refs = self.refs(repo, type)
        if refs is None:
            return None
        commit = refs["branches"].get(rev, rev)
        rdir = repo_dir(self.root, repo, type)
        mpath = rdir / "commits" / f"{commit}.json"
        if len(commit) != 40 or not mpath.is_file():
            return None
        manifest = self._manifests.get(mpath)
        if manifest is None:
            manifest = self._manifests[mpath] = json.loads(mpath.read_text())
        return Revision(repo, type, commit, manifest["files"], rdir / "tree" / commit)


# -- what the hub API answers about a revision ----------------------------------------------------
def _file_json(path: str, entry: dict) -> dict:
    out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
    return out


def tree_json(rev: Revision, sub: str, recursive: bool) -> list[dict] | None:
    """The hub's tree listing of `sub` (a folder, "" for the root), or None when it does not exist."""
    prefix = f"{sub.strip('/')}/" if sub.strip("/") else ""
    files = [p for p in sorted(rev.files) if p.startswith(prefix)]
    if prefix and not files:
        return None
    dirs: set[str] = set()
    out = []
    for p in files:
        rest = p[len(prefix):].split("/")
        for depth in range(1, len(rest) if recursive else min(len(rest), 2)):
            dirs.add(prefix + "/".join(rest[:depth]))
        if recursive or len(rest) == 1:
            out.append(_file_json(p, rev.files[p]))
    for d in dirs:
        out.append({"type": "directory", "path": d, "oid": hashlib.sha1(f"{rev.commit}:{d}".encode()).hexdigest()})
    return sorted(out, key=lambda e: e["path"])


def info_json(rev: Revision, refs: dict) -> dict:
    """The hub's repo-info answer for a revision (what HfApi.model_info / dataset_info parse)."""
    siblings = []
    for p in sorted(rev.files):
        e = _file_json(p, rev.files[p])
        sib = {"rfilename": p, "size": e["size"], "blobId": e["oid"]}
        if "lfs" in e:
            sib["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
        siblings.append(sib)
    info = {"_id": hashlib.sha1(rev.repo.encode()).hexdigest()[:24], "id": rev.repo, "sha": rev.commit,
            "private": False, "disabled": False, "gated": "manual" if refs.get("gated") else False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z"}
    if refs.get("licence"):
        info["cardData"] = {"license": refs["licence"]}
    return info
