"""Moving one blob: download into the publish path (resumable, hashed while written), upload with a hash guard.

Downloads write into the `Output` the publish path hands out (`publish.staged`), so the bytes are hashed
while written, compared with the blob's key (its sha256), fsynced and renamed by `publish.commit`, like
every other write. The staging file is hard-linked as `.reconcile/partial/remote-<sha256>`: a killed pull
leaves its bytes there and the next one asks only for the rest (a Range GET from that offset).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import IntegrityError, RemoteError
from ..publish import Output
from .layout import blob_key
from .store import PART_SIZE, READ_CHUNK, Remote

_QUEUED = 3  # chunks (of READ_CHUNK) received ahead of the writer: bounds memory at ~32 MiB
_STREAM_RETRIES = 3  # restarts of a body cut mid-way (each resumes from the bytes already written)


def _resume_into(writer, staging: Path, partial: Path, size: int) -> None:
    """Feed bytes kept by an earlier run into the writer, then link the staging file as the new partial."""
    if partial.exists():
        if partial.stat().st_size <= size:
            with open(partial, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    writer.write(chunk)
        partial.unlink(missing_ok=True)
    try:
        os.link(staging, partial)
    except OSError:
        pass  # no hard links here: no resume across runs, the download itself still works


def download(remote: Remote, sha256: str, size: int | None, out: Output, *, partial_dir: Path, where: str,
             progress: Callable[[int], None] | None = None) -> None:
    """Stream the blob `sha256` into `out`; raise IntegrityError (naming the remote key) when the bytes do not
    hash to the key or the size differs. FileNotFoundError when the remote has no such blob."""
    key = blob_key(sha256)
    partial_dir.mkdir(parents=True, exist_ok=True)
    partial = partial_dir / f"remote-{sha256}"
    full_key = f"{remote.url}/{key}"
    fix = "delete that object from the remote (it is not what its key says) and push the artifact again"
    with out.open() as w:
        _resume_into(w, out.path, partial, size if size is not None else 1 << 62)
        resumed = w.size
        if progress is not None and w.size:
            progress(w.size)
        for attempt in range(_STREAM_RETRIES + 1):
            total, chunks = remote.stream(key, w.size) if (size is None or w.size < size) else (size, iter(()))
            if size is not None and total != size:
                partial.unlink(missing_ok=True)
                raise IntegrityError(f"remote blob {full_key} has {total} bytes, the pin says {size}; "
                                     "nothing was published", where=where, fix=fix)
            try:
                _drain(chunks, w, progress)
                break
            except (OSError, RemoteError):
                raise
            except Exception as e:  # the body was cut: resume from what is written
                if attempt == _STREAM_RETRIES:
                    raise remote._fail(e, key) from None
        w.flush()
        got = w.hexdigest()
    partial.unlink(missing_ok=True)  # verified or not, these bytes are done: never resume from them again
    if got != sha256:
        if resumed:  # the kept bytes may be the bad ones: the next try fetches the whole blob, then we know
            raise IntegrityError(f"remote blob {full_key} (resumed after {resumed} kept bytes) does not hash to its "
                                 f"key (got sha256 {got}); nothing was published", where=where,
                                 fix="re-run: the kept bytes were discarded and the whole blob is fetched; if it "
                                     "fails again, " + fix)
        raise IntegrityError(f"remote blob {full_key} does not hash to its key (got sha256 {got}); "
                             "nothing was published", where=where, fix=fix)


def _drain(chunks, writer, progress) -> None:
    """Receive on this thread while a writer thread hashes and writes (a bounded queue: memory stays flat).

    Why: writing + hashing a chunk takes about as long as receiving it; done in turn, the socket idles
    half the time. The writer has finished every queued byte when this returns or raises, so a retry's
    Range starts at `writer.size`.
    """
    q: queue.Queue = queue.Queue(maxsize=_QUEUED)
    failed: list[BaseException] = []

    def write() -> None:
        while (chunk := q.get()) is not None:
            if not failed:
                try:
                    writer.write(chunk)
                except BaseException as e:  # re-raised on the receiving thread
                    failed.append(e)

    t = threading.Thread(target=write, name="reconcile-remote-writer", daemon=True)
    t.start()
    try:
        for chunk in chunks:
            if failed:
                break
            q.put(chunk)
            if progress is not None:
                progress(len(chunk))
    finally:
        q.put(None)
        t.join()
    if failed:
        raise failed[0]


class _Guarded:
    """The file's bytes in upload-sized chunks, hashed as they are read; the last chunk is held back until
    the hash is known, so bytes that do not match their key abort the upload before it can complete."""

    def __init__(self, path: Path, sha256: str):
        self.path, self.sha256 = path, sha256
        self.error: IntegrityError | None = None

    def __iter__(self) -> Iterator[bytes]:
        h = hashlib.sha256()
        held = None
        with open(self.path, "rb", buffering=0) as f:
            while chunk := f.read(PART_SIZE):
                h.update(chunk)
                if held is not None:
                    yield held
                held = chunk
        if h.hexdigest() != self.sha256:
            self.error = IntegrityError(f"local bytes changed while pushing: sha256 {h.hexdigest()}, "
                                        f"expected {self.sha256}; nothing was uploaded", where=str(self.path),
                                        fix="run `reconcile check`, repair with `reconcile apply`, then push")
            raise self.error
        if held is not None:
            yield held


def upload(remote: Remote, path: Path, sha256: str) -> None:
    """Upload a local file to the blob key of `sha256`; the object appears only if the bytes hash to it."""
    key = blob_key(sha256)
    if path.stat().st_size == 0:
        if sha256 != hashlib.sha256(b"").hexdigest():
            raise IntegrityError("local file is empty but its pin is not", where=str(path),
                                 fix="run `reconcile apply` to repair it, then push")
        remote.put_record(key, b"")
        return
    guard = _Guarded(path, sha256)
    try:
        remote.upload(key, iter(guard))
    except Exception:
        if guard.error is not None:
            raise guard.error from None
        raise
    if guard.error is not None:
        raise guard.error
