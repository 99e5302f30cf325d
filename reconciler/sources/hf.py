"""Hugging Face source: resolve revisions, list and describe files, download with resume and verification.

Built on huggingface_hub's HTTP machinery: `hf_hub_url` for URLs, the HEAD read the way `get_hf_file_metadata` reads it,
`HfApi.repo_info` for revisions, its shared session (`get_session`), headers (`build_hf_headers`) and typed
errors (`hf_raise_for_status`), on any of its release lines (0.x on requests, 1.x on httpx, 2.x on httpx2:
the differences live in `hub_http.py`). The body loop is ours, not `http_get`, because we need what it cannot give:
a per-call read timeout, a retry policy that also covers 5xx answers, resume from a partial file kept
across runs, and hashing while the bytes are written (one pass over a multi-GB file).

Read at call time, not import time: `HF_ENDPOINT`, `HF_TOKEN` (else the `hf auth login` token),
`HF_HUB_OFFLINE`, and the knobs `RECONCILE_HTTP_TIMEOUT` (read timeout, s, default 30),
`RECONCILE_HTTP_RETRIES` (retries in a row after tries that received no bytes, default 4) and
`RECONCILE_HTTP_BACKOFF` (first backoff, s, default 1; doubles each retry).
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from huggingface_hub import HfApi, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from ..errors import IntegrityError, ReconcileError, ResourceError, SourceError
from ..layout import link_path, partial_key
from ..pathrule import glob_match
from ..publish import HashingWriter, Output
from ..spec import Source
from . import ranged
from .hub_http import CONNECT_ERRORS, HTTP_ERRORS, TRANSIENT_ERRORS, EntryNotFoundError, stream_get
from .hub_http import head as hub_head

T = TypeVar("T")
DEFAULT_ENDPOINT = "https://huggingface.co"
_BATCH = 4 * 1024 * 1024  # bytes per hash+write: large, so per-call overhead vanishes
_TOKEN_FIX = "pass a token of an account that has access: export HF_TOKEN=hf_... or run `hf auth login`"


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub describes it at a commit; sha256 is known for LFS files (their ETag), else None."""

    path: str
    commit: str
    size: int
    sha256: str | None


class _Incomplete(Exception):
    """The body ended before the file did (a dropped connection the transport did not flag)."""


# -- settings read at call time -------------------------------------------------------------------
def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _offline() -> bool:
    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def _require_online(source: Source, what: str, where: str) -> None:
    """Offline mode fails before any network attempt."""
    if _offline():
        raise SourceError(f"offline mode (HF_HUB_OFFLINE is set): cannot {what} from {source.repo}",
                          where=where, fix="unset HF_HUB_OFFLINE to allow downloads, or run where the "
                                           "storage root already holds these files")


# -- errors ----------------------------------------------------------------------------------------
def _transient(err: Exception) -> bool:
    """Worth another try: server errors, throttling, dropped or stalled connections."""
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else 0
        return status >= 500 or status in (408, 429)
    return isinstance(err, (*TRANSIENT_ERRORS, _Incomplete, ranged.ShortRange))


def _as_source_error(err: Exception, source: Source, where: str, path: str | None, token: str | None) -> ReconcileError:
    """Turn a client error into a SourceError that says what is wrong and what to do."""
    repo, rev, endpoint = source.repo, source.revision, _endpoint()
    if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        licence = f" ({source.licence})" if source.licence else ""
        said = "the token sent has not been granted access" if token else "no token was sent"
        return SourceError(f"{repo} is a gated repo: its licence{licence} must be accepted, and {said}",
                           where=where, fix=f"accept the licence at https://huggingface.co/{repo} with your "
                                            f"account, then {_TOKEN_FIX}")
    if isinstance(err, RepositoryNotFoundError):
        return SourceError(f"{source.type} repo {repo} not found on {endpoint}", where=where,
                           fix=f"check `repo` and `type` of source {source.name!r} in the lock; for a private "
                               f"repo, {_TOKEN_FIX}")
    if isinstance(err, RevisionNotFoundError):
        return SourceError(f"revision {rev} not found in {repo}", where=where,
                           fix=f"check the revision of source {source.name!r} (a branch, tag or 40-hex commit "
                               "that exists); run `reconcile lock` to re-pin")
    if isinstance(err, EntryNotFoundError):
        return SourceError(f"file {path} not found in {repo} at {rev}", where=where,
                           fix=f"check the artifact's fetch path against https://huggingface.co/{repo}/tree/{rev}")
    if isinstance(err, OfflineModeIsEnabled):
        return SourceError(f"offline mode is on: cannot reach {endpoint}", where=where,
                           fix="unset HF_HUB_OFFLINE (it must be unset before the process starts)")
    if isinstance(err, CONNECT_ERRORS):
        return SourceError(f"cannot connect to {endpoint}: {err}", where=where,
                           fix="check the network and HF_ENDPOINT, then re-run (downloads resume)")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        return SourceError(f"hub answered HTTP {status} for {repo}: {str(err).splitlines()[0]}", where=where,
                           fix="re-run later (downloads resume); if it persists, check the hub's status")
    return SourceError(f"download from {endpoint} failed: {type(err).__name__}: {err}", where=where,
                       fix="check the network, then re-run (downloads resume from the bytes received)")


def _retrying(attempt: Callable[[], T], progress: Callable[[], int] = lambda: 0) -> T:
    """Run `attempt`, retrying transient errors with exponential backoff.

    A try that moved `progress` forward does not count as a failure: a huge file over a flaky link
    keeps going as long as bytes keep arriving.
    """
    retries = int(_env_float("RECONCILE_HTTP_RETRIES", 4))
    backoff = _env_float("RECONCILE_HTTP_BACKOFF", 1.0)
    failures, seen = 0, progress()
    while True:
        try:
            return attempt()
        except Exception as err:
            if not _transient(err):
                raise
            now = progress()
            failures = 0 if now > seen else failures + 1
            seen = now
            if failures > retries:
                raise
            time.sleep(min(backoff * 2 ** max(failures - 1, 0), 30.0))


def _call(source: Source, where: str, path: str | None, attempt: Callable[[str | None], T],
          progress: Callable[[], int] = lambda: 0) -> T:
    """Run a hub call with the current token, retries, and errors mapped to SourceError."""
    token = get_token()
    try:
        return _retrying(lambda: attempt(token), progress)
    except (HfHubHTTPError, *HTTP_ERRORS, _Incomplete, ranged.ShortRange, ranged.RangeNotHonoured,
            OfflineModeIsEnabled) as err:
        raise _as_source_error(err, source, where, path, token) from None


# -- metadata --------------------------------------------------------------------------------------
def resolve_revision(source: Source) -> str:
    """The 40-hex commit the hub reports for the source's revision (a branch, tag or commit)."""
    _require_online(source, "resolve a revision", source.name)

    def attempt(token: str | None) -> str:
        api = HfApi(endpoint=_endpoint(), token=token or False)
        timeout = _env_float("RECONCILE_HTTP_TIMEOUT", 30.0)
        return api.repo_info(source.repo, repo_type=source.type, revision=source.revision, timeout=timeout).sha

    return _call(source, source.name, None, attempt)


def _normalize_etag(etag: str | None) -> str:
    return (etag or "").removeprefix("W/").strip('"')


def _head(source: Source, path: str, where: str) -> RemoteFile:
    def attempt(token: str | None) -> RemoteFile:
        url = hf_hub_url(source.repo, path, repo_type=source.type, revision=source.revision, endpoint=_endpoint())
        headers = build_hf_headers(token=token or False)
        headers["Accept-Encoding"] = "identity"  # the size must be the file's, not a compressed body's
        r = hub_head(url, headers, _env_float("RECONCILE_HTTP_TIMEOUT", 30.0))
        if r.status_code >= 400:
            hf_raise_for_status(r)
        etag = _normalize_etag(r.headers.get("X-Linked-Etag") or r.headers.get("ETag"))
        size = r.headers.get("X-Linked-Size") or (None if 300 <= r.status_code < 400 else
                                                  r.headers.get("Content-Length"))
        commit = r.headers.get("X-Repo-Commit")
        is_sha256 = len(etag) == 64 and all(c in "0123456789abcdef" for c in etag)
        if commit is None or size is None or not size.isdigit():
            raise SourceError(f"{_endpoint()} did not send a commit and size for {path}: not a Hugging Face hub?",
                              where=where, fix="check HF_ENDPOINT")
        return RemoteFile(path, commit, int(size), etag if is_sha256 else None)

    return _call(source, where, path, attempt)


def remote_file(source: Source, path: str) -> RemoteFile:
    """What the hub serves for `path` at the source's revision (one HEAD request)."""
    where = f"{source.name}:{path}"
    _require_online(source, f"look up {path}", where)
    return _head(source, path, where)


def list_files(source: Source, pattern: str) -> list[RemoteFile]:
    """Files of the repo at the source's revision whose path matches the glob (`*` never crosses `/`), sorted."""
    _require_online(source, "list files", source.name)
    commit = source.revision if source.pinned else resolve_revision(source)
    # Our own GET rather than HfApi.list_repo_tree: that one retries with fixed multi-second backoffs we
    # cannot shorten, so a refused connection would take ~20 s to report.
    url = f"{_endpoint()}/api/{source.type}s/{source.repo}/tree/{quote(commit, safe='')}"

    def attempt(token: str | None) -> list[RemoteFile]:
        headers = build_hf_headers(token=token or False)
        timeout = _env_float("RECONCILE_HTTP_TIMEOUT", 30.0)
        found, next_url, params = [], url, {"recursive": "true"}
        while next_url:
            r = get_session().get(next_url, params=params, headers=headers, timeout=timeout)
            hf_raise_for_status(r)
            for entry in r.json():
                if entry.get("type") == "file" and glob_match(pattern, entry["path"]):
                    f = RepoFile(**entry)
                    found.append(RemoteFile(f.path, commit, f.size, f.lfs.sha256 if f.lfs else None))
            next_url, params = r.links.get("next", {}).get("url"), None  # the next link carries its query
        return sorted(found, key=lambda f: f.path)

    return _call(source, source.name, None, attempt)


# -- download --------------------------------------------------------------------------------------
class _Assembly:
    """The file being assembled: `out`'s hashing writer, with the partial file kept in step for resume.

    The partial file is made a hard link to the staging file, so each byte is written once and hashed
    once, yet survives a failed run (the engine removes the staging name; the link keeps the bytes).
    Where a hard link is impossible (another filesystem) the partial file is a mirror written alongside.

    Throughput: the receiving thread only gathers bytes into large batches; a writer thread hashes and
    writes them (both release the GIL), so network, hashing and disk overlap.
    """

    def __init__(self, writer: HashingWriter, staging: Path, partial: Path, total: int):
        self.writer, self.partial = writer, partial
        self.mirror = None
        if partial.exists():  # bytes from an earlier run: they go through the hash like new ones
            with open(partial, "rb") as f:
                while chunk := f.read(_BATCH):
                    writer.write(chunk)
        try:
            link = link_path(partial)
            os.link(staging, link)
            os.replace(link, partial)
        except OSError:
            self.mirror = open(partial, "ab")
        self.size = writer.size  # bytes received, written or queued
        self._batch = bytearray()
        self._queue: queue.Queue[bytearray | None] = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # A file left to fetch that fits one batch is written on the receiving thread: a thread and
        # its hand-offs cost more than they overlap (1,000 x 1 MiB files: ~2x slower on a busy machine).
        if total - self.size > _BATCH:
            self._thread = threading.Thread(target=self._drain, name="reconcile-hf-writer", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self.writer.write(batch)
                    if self.mirror is not None:
                        self.mirror.write(batch)
            except BaseException as e:  # re-raised in the receiving thread by sync()
                self._error = e
            finally:
                self._queue.task_done()

    def write(self, data: bytes) -> int:
        """Append received bytes; returns how many were handed to the writer thread (0 while batching)."""
        self._batch += data
        self.size += len(data)
        if len(self._batch) < _BATCH:
            return 0
        return self._hand_over()

    def write_block(self, block: bytearray) -> int:
        """Append a large block as it is (no copy into the batch); returns the bytes handed over."""
        handed = self._hand_over() if self._batch else 0
        self._batch = block
        self.size += len(block)
        return handed + self._hand_over()

    def _hand_over(self) -> int:
        if self._error is not None:
            raise self._error
        batch, self._batch = self._batch, bytearray()
        if self._thread is None:
            self.writer.write(batch)
            if self.mirror is not None:
                self.mirror.write(batch)
        else:
            self._queue.put(batch)
        return len(batch)

    def sync(self) -> int:
        """Wait until every received byte is hashed and written (so a retry's Range is right)."""
        n = self._hand_over() if self._batch else 0
        self._queue.join()
        if self._error is not None:
            raise self._error
        return n

    def close(self, keep: bool) -> None:
        """Stop the writer thread; drop the partial file unless a later run should resume from it."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.mirror is not None:
            self.mirror.close()
        if not keep:
            self.partial.unlink(missing_ok=True)


PINNED_NO_HEAD_MAX = 16 << 20  # a pinned file up to this size at a commit is fetched without a HEAD first


def _pinned(source: Source, path: str, sha256: str | None, size: int | None) -> RemoteFile | None:
    """What the hub serves, known without asking: a small file the lock pins (sha256 and size) at a commit.

    Why: a commit is immutable, so its pins already say what a HEAD would, and for small files the
    HEAD's round trip is a large part of the cost (apply of 1,000 x 1 MiB files from the local hub,
    three alternating runs: 7.9-8.4 s with, 6.7-7.4 s without). The bytes are verified against both
    pins while written, and a body longer than the pin is cut after one chunk. What a hub that serves
    other bytes at that commit then gets is a sha256 or size mismatch after the download instead of
    "upstream changed" before it; big files keep the HEAD, so that never costs a big download.
    """
    if sha256 and size is not None and size <= PINNED_NO_HEAD_MAX and source.pinned:
        return RemoteFile(path, source.revision, size, sha256)
    return None


def _check_upstream(head: RemoteFile, sha256: str | None, size: int | None, where: str) -> None:
    """Refuse before downloading when the hub serves other bytes than the lock pins."""
    fix = ("if the new upstream bytes are intended, run `reconcile lock` to re-pin; otherwise pin the "
           "source's revision to the commit the lock was made from")
    if sha256 and head.sha256 and sha256 != head.sha256:
        raise IntegrityError(f"upstream changed: lock pins {sha256}, hub serves {head.sha256}", where=where, fix=fix)
    if size is not None and size != head.size:
        raise IntegrityError(f"upstream changed: lock pins {size} bytes, hub serves {head.size} bytes",
                             where=where, fix=fix)


def _check_space(out_dir: Path, partial_dir: Path, size: int, have: int, path: str, where: str) -> None:
    """Enough free disk for what is left to write, before the first byte is fetched."""
    need = {out_dir: size}  # the staging file receives every byte (resumed ones are copied in locally)
    if os.stat(partial_dir).st_dev != os.stat(out_dir).st_dev:
        need[partial_dir] = size - have  # no hard link across filesystems: the partial is a mirror
    for folder, n in need.items():
        free = shutil.disk_usage(folder).free
        if free < n:
            raise ResourceError(f"not enough free disk space for {path}: needs {n} bytes, {free} free in {folder}",
                                where=where, fix="free disk space there (or point --root elsewhere) and re-run "
                                                 "apply; the download resumes from the bytes already received")


@contextmanager
def _get(url: str, headers: dict[str, str]) -> Iterator[tuple[object, Iterator[bytes]]]:
    """One streamed GET with the hub client's session: (response checked for errors, body chunks)."""
    with stream_get(url, headers, _env_float("RECONCILE_HTTP_TIMEOUT", 30.0)) as (r, body):
        hf_raise_for_status(r)
        yield r, body


def _ranges_into(asm: _Assembly, url: str, token: str | None, size: int, connections: int,
                 progress: Callable[[int], None] | None) -> None:
    """The rest of the file as parallel Range requests on `connections` connections, written in order."""
    headers = build_hf_headers(token=token or False)
    headers["Accept-Encoding"] = "identity"

    def write(block: bytearray) -> None:
        handed = asm.write_block(block)
        if handed and progress is not None:
            progress(handed)

    try:
        ranged.assemble(lambda a, b: ranged.download_range(_get, url, headers, a, b), write, asm.size, size,
                        connections)
    finally:
        handed = asm.sync()
        if handed and progress is not None:
            progress(handed)


def _download(asm: _Assembly, url: str, token: str | None, size: int, connections: int,
              progress: Callable[[int], None] | None) -> None:
    """The rest of the file: in parallel ranges when large and allowed, else (or when the server
    does not honour ranges) one stream."""
    if connections > 1 and size - asm.size >= ranged.MIN_PARALLEL:
        try:
            return _ranges_into(asm, url, token, size, connections, progress)
        except ranged.RangeNotHonoured:
            pass  # e.g. a proxy that answers 200 with the whole body: one stream from where we are
    _stream_into(asm, url, token, size, progress)


def _stream_into(asm: _Assembly, url: str, token: str | None, size: int,
                 progress: Callable[[int], None] | None) -> None:
    """One GET of the rest of the file (a Range from the bytes already assembled)."""
    headers = build_hf_headers(token=token or False)
    headers["Accept-Encoding"] = "identity"  # the bytes on the wire must be the file's bytes
    skip = 0
    if asm.size:
        headers["Range"] = f"bytes={asm.size}-"
    timeout = _env_float("RECONCILE_HTTP_TIMEOUT", 30.0)
    with stream_get(url, headers, timeout) as (r, body):
        hf_raise_for_status(r)
        if asm.size and r.status_code == 200:
            skip = asm.size  # the server ignored Range and starts over: drop what we already hold
        try:
            for chunk in body:
                if skip:
                    n = min(skip, len(chunk))
                    chunk, skip = chunk[n:], skip - n
                handed = asm.write(chunk)
                if handed and progress is not None:
                    progress(handed)
                if asm.size > size:
                    break
        finally:
            handed = asm.sync()
            if handed and progress is not None:
                progress(handed)
    if asm.size < size:
        raise _Incomplete(f"connection closed after {asm.size} of {size} bytes")


def fetch_file(source: Source, path: str, out: Output, *, expected_sha256: str | None, expected_size: int | None,
               partial_dir: Path, progress: Callable[[int], None] | None = None,
               connections: int = 1) -> RemoteFile:
    """Download `path` from the source into `out`, verified; returns what was fetched (sha256 = observed).

    With `connections` > 1, a file of at least `ranged.MIN_PARALLEL` bytes is fetched as parallel
    Range requests on that many connections (still written and hashed in order; see `ranged`).

    Resumes from `partial_dir/<key>` left by an earlier failed run (a Range request for the rest), retries
    transient failures within the call (each retry resuming), and hashes while writing, so the engine's
    publish needs no second pass. `progress(n)` is called with each count of newly available bytes.
    Raises IntegrityError when the hub serves other bytes than pinned (before downloading) or the bytes
    do not hash to the pin (the partial file is then discarded), ResourceError when the disk is too
    small, SourceError for everything the hub or the network refuses.
    """
    where = f"{source.name}:{path}"
    _require_online(source, f"download {path}", where)
    head = _pinned(source, path, expected_sha256, expected_size) or _head(source, path, where)
    _check_upstream(head, expected_sha256, expected_size, where)
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / partial_key(source.repo, source.type, head.commit, path, expected_sha256, expected_size)
    if partial.exists() and partial.stat().st_size > head.size:
        partial.unlink()  # cannot be a prefix of this file
    have = partial.stat().st_size if partial.exists() else 0
    _check_space(out.path.parent, partial_dir, head.size, have, path, where)
    url = hf_hub_url(source.repo, path, repo_type=source.type, revision=head.commit, endpoint=_endpoint())
    with out.open() as writer:
        asm = _Assembly(writer, out.path, partial, head.size)
        if progress is not None and asm.size:
            progress(asm.size)
        try:
            if asm.size < head.size:  # a complete partial (a run killed before verifying) needs no GET
                _call(source, where, path,
                      lambda token: _download(asm, url, token, head.size, connections, progress),
                      progress=lambda: asm.size)
        except BaseException:
            asm.close(keep=True)
            raise
    got, want = writer.hexdigest(), expected_sha256 or head.sha256
    asm.close(keep=False)  # verified or not, these bytes are done: a mismatch must not be resumed
    fix = ("re-run apply: the bad download was discarded and will be fetched afresh; if it persists, "
           "something between you and the hub alters the bytes")
    if writer.size != head.size:
        raise IntegrityError(f"size mismatch: expected {head.size} bytes, got {writer.size}", where=where, fix=fix)
    if want and got != want:
        raise IntegrityError(f"sha256 mismatch: expected {want}, got {got}", where=where, fix=fix)
    return RemoteFile(path, head.commit, writer.size, got)
