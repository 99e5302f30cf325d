"""Reuse bytes the user already has: files in the Hugging Face cache (`hf download`, `from_pretrained`).

The cache layout is huggingface_hub's public one: `<cache>/{models|datasets}--{org}--{name}/blobs/<etag>`
holds each file once (for an LFS file the etag *is* its sha256, the value our lock pins; for a small
file it is the git blob sha1) and `snapshots/<commit>/<path>` is a symlink to its blob. We only read it.

Nothing in the cache is trusted: every candidate is published through the one publish path
(`publish.staged` + `publish.commit`), which hashes the bytes and refuses them unless they match the pin,
or, for an unpinned file, the digest its blob is named after. A candidate that does not verify is
skipped (the caller reports it) and the file is downloaded as usual. The staged file is a hard link to
the blob when both are on one filesystem (no bytes copied, one read to verify), else a copy.

Where the cache is: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
`~/.cache/huggingface/hub`, read at call time. `RECONCILE_NO_HF_CACHE=1` (or `apply --no-hf-cache`) turns
the reuse off.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError
from ..publish import commit, staged
from ..spec import Source

_HEX = frozenset("0123456789abcdef")
_SMALL = 64 << 20  # a non-LFS blob above this is not a small file: not worth a second hash pass
_COPY_CHUNK = 4 << 20


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def default_cache_dir() -> Path:
    """The hub cache folder huggingface_hub itself would use, from the environment."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Reused:
    """A file published from the cache: which blob, its verified size and sha256, linked or copied."""

    blob: Path
    size: int
    sha256: str
    linked: bool


class HfCache:
    """Looks up files in one Hugging Face cache folder and publishes them verified; counts reused bytes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.reused_bytes = 0
        self._count = threading.Lock()

    @classmethod
    def from_env(cls) -> HfCache | None:
        """The user's cache, or None when it is turned off (RECONCILE_NO_HF_CACHE) or does not exist."""
        if _truthy(os.environ.get("RECONCILE_NO_HF_CACHE")):
            return None
        root = default_cache_dir()
        return cls(root) if root.is_dir() else None

    def repo_dir(self, source: Source) -> Path:
        """`models--org--name` / `datasets--org--name`, as huggingface_hub names it."""
        return self.root / f"{source.type}s--{source.repo.replace('/', '--')}"

    def candidates(self, source: Source, commit: str, path: str, sha256: str | None) -> list[Path]:
        """Cache files that may hold these bytes, best first (existing paths only, nothing read yet).

        Pinned sha256: the blob of that name in this repo's folder, then in any other repo's folder (a
        mirror or fork shares LFS files). Always: the snapshot of the pinned commit, resolved to its blob.
        """
        found: list[Path] = []
        if sha256:
            own = (self.repo_dir(source) / "blobs" / sha256).resolve()
            found += [own] if own.is_file() else []
            found += sorted(p.resolve() for p in self.root.glob(f"*--*/blobs/{sha256}")
                            if p.resolve() != own and p.is_file())
        if _is_hex(commit, 40):
            blob = self._snapshot_blob(source, commit, path)
            if blob is not None and blob not in found:
                found.append(blob)
        return found

    def _snapshot_blob(self, source: Source, commit: str, path: str) -> Path | None:
        """`snapshots/<commit>/<path>` resolved to a blob of the same repo folder, else None."""
        repo = self.repo_dir(source)
        link = repo / "snapshots" / commit / path
        try:
            blob = link.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if blob.parent != (repo / "blobs").resolve() or not blob.is_file():
            return None  # a snapshot entry pointing anywhere else is not the cache's doing
        return blob

    def publish(self, source: Source, commit: str, path: str, final: Path, *, where: str,
                expected_sha256: str | None, expected_size: int | None,
                warn: Callable[[str], None]) -> Reused | None:
        """Publish `path` of `source` at `commit` from the cache at `final`, verified; None when no candidate
        verifies (each one that fails is reported through `warn`, and the caller downloads as usual)."""
        for blob in self.candidates(source, commit, path, expected_sha256):
            name = blob.name
            want = expected_sha256 or (name if _is_hex(name, 64) else None)
            git_sha1 = name if want is None and _is_hex(name, 40) else None
            if want is None and (git_sha1 is None or blob.stat().st_size > _SMALL):
                continue  # nothing to verify it against: not pinned, and not named by a digest we check
            try:
                got = self._publish_blob(blob, final, where, want, expected_size, git_sha1)
            except IntegrityError as e:
                warn(f"Hugging Face cache file {blob} does not match ({e.message}); not used")
                continue
            except OSError as e:
                warn(f"Hugging Face cache file {blob} could not be read ({e.strerror or e}); not used")
                continue
            with self._count:
                self.reused_bytes += got.size
            return got
        return None

    def _publish_blob(self, blob: Path, final: Path, where: str, want: str | None, size: int | None,
                      git_sha1: str | None) -> Reused:
        with staged(final, where=where) as out:
            linked = _link_or_copy(blob, out)
            if git_sha1 is not None and _git_blob_sha1(out.path) != git_sha1:
                raise IntegrityError(f"git blob sha1 is not {git_sha1}", where=where, fix="none needed")
            n, sha = commit(out, final, where=where, expected_sha256=want, expected_size=size)
        return Reused(blob, n, sha, linked)


def _link_or_copy(blob: Path, out) -> bool:
    """Make the staged file a hard link to the blob (True), or a copy where a link is refused (False).

    The copy goes through the output's hashing writer, so commit does not read it again; the link is
    hashed once by commit (its bytes were never written by us)."""
    try:
        os.link(blob, out.path)
        return True
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    buf = bytearray(_COPY_CHUNK)  # one buffer, reused: a fresh 4 MiB object per read costs page faults
    view = memoryview(buf)
    with open(blob, "rb", buffering=0) as src, out.open() as dst:
        while n := src.readinto(buf):
            dst.write(view[:n])  # hashes (on a helper thread) while it writes; returns when both are done
    return False
