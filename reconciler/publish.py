"""The one way bytes reach a final path: stage, hash while writing, verify, fsync, rename.

Modelled on pooch (fetch, verify, then publish) and huggingface_hub's `file_download`
(unique temp file in the destination folder, atomic `os.replace`). A reader of a final
path therefore sees either the old complete file, the new complete file, or nothing.
Temp names come from `layout.temp_path_for`, so `gc` can recognise stale ones.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .directio import StagingFile
from .errors import IntegrityError, ResourceError
from .hashing import sha256_file
from .layout import temp_path_for

_fdatasync = getattr(os, "fdatasync", os.fsync)


class _EarlySync:
    """A helper thread that makes a growing file durable while more of it is still being written.

    Why: on a disk with a volatile write cache (every VM disk, most SSDs) the final fsync's cost
    grows with the bytes written since the last flush (~1.4 s per GB here), and nothing but a
    flush overlaps it with the writing. `request()` asks for an `fdatasync` of everything written
    so far; requests that arrive while one runs fold into the next, so at most one flush is in
    flight and the writer never waits. The final fsync in `HashingWriter.close` still decides
    durability; it is left with only the last window. The thread owns a dup of the descriptor, so
    closing the file never leaves it syncing a recycled fd number. An error it meets (EIO,
    ENOSPC at write-back) is kept and raised by `finish()`: the kernel reports a write-back
    error to only one fsync of an open file, and it may be this thread's.
    """

    def __init__(self, fd: int):
        self._fd = os.dup(fd)
        self._wanted = threading.Event()
        self._stopping = False
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="reconcile-early-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._stopping:
                    return
                _fdatasync(self._fd)
        except OSError as e:
            self.error = e
        finally:
            os.close(self._fd)

    def request(self) -> None:
        """Ask for a flush of what was written so far (returns at once)."""
        self._wanted.set()

    def finish(self) -> None:
        """Stop the thread (after the flush in progress, if any); raise what it met."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


class HashingWriter:
    """A binary file writer that hashes and counts every byte as it is written."""

    # Chunks at least this big are hashed on a helper thread while this one writes them: both
    # release the GIL, so a large write costs max(hash, write) instead of hash + write.
    PARALLEL_MIN = 1 << 20
    # Every this many bytes written through the page cache, a helper thread flushes what was written
    # so far (see _EarlySync), so the disk works while more bytes are produced and the fsync in
    # close() only has the tail. Not needed where the bytes go past the cache (directio): there
    # every block is on the device when its write returns.
    EARLY_SYNC_EVERY = 64 << 20

    def __init__(self, path: Path, progress: Callable[[int], None] | None = None):
        self._progress = progress  # told the bytes of each write (a progress bar on a TTY)
        self._f = StagingFile(path)
        self._h = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self._sync: _EarlySync | None = None
        self._synced_at = 0  # self.size at the last early-sync request
        self.size = 0

    def write(self, data) -> int:
        """Write bytes (any buffer), updating the running sha256; returns when both are done."""
        mv = memoryview(data).cast("B")
        if mv.nbytes >= self.PARALLEL_MIN:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="hash")
            hashing = self._pool.submit(self._h.update, mv)
            try:
                n = self._f.write(mv)
            finally:
                hashing.result()  # the caller may reuse its buffer once we return
        else:
            self._h.update(mv)
            n = self._f.write(mv)
        self.size += n
        if self._progress is not None:
            self._progress(n)
        if self.size - self._synced_at >= self.EARLY_SYNC_EVERY and not self._f.direct:
            self._early_sync()
        return n

    def _early_sync(self) -> None:
        if self._sync is None:
            self._sync = _EarlySync(self._f.fileno())
        self._sync.request()
        self._synced_at = self.size

    def flush(self) -> None:
        """Hand buffered bytes to the kernel (so another descriptor can read them back)."""
        self._f.flush()

    def hexdigest(self) -> str:
        """sha256 of everything written so far."""
        return self._h.hexdigest()

    def close(self) -> None:
        """Flush, fsync and close (an error of an early flush is raised here too)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        if not self._f.closed:
            try:
                self._stop_sync()
                self._f.flush()
                os.fsync(self._f.fileno())
            finally:
                self._f.close()

    def abort(self) -> None:
        """Close without flushing or fsyncing (the file is about to be discarded)."""
        try:
            self._stop_sync()
        except OSError:
            pass
        finally:
            self._f.abort()

    def _stop_sync(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.finish()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Output:
    """The staging output a transform (or a source) is handed: a path, or a hashing writer.

    Writers that need a path (a library that saves to a file) use `.path`; sequential
    writers use `with out.open() as f`, which spares the publish step a re-read.
    """

    def __init__(self, path: Path, progress: Callable[[int], None] | None = None):
        self.path = path
        self.progress = progress
        self._writer: HashingWriter | None = None
        self._opens = 0
        # A safetensors writer's tensor manifest (name -> dtype, shape, sha256), computed while writing:
        # apply records it instead of re-reading and re-hashing the published file.
        self.tensors: dict[str, dict] | None = None

    def open(self) -> HashingWriter:
        """Open the staging file for sequential writing, hashing as it goes."""
        self._opens += 1
        self._writer = HashingWriter(self.path, self.progress)
        return self._writer

    def digest(self) -> tuple[int, str]:
        """(size, sha256) of the staged bytes: from the writer when it saw them all."""
        w = self._writer
        if w is not None:
            w.close()  # flush + fsync first: a transform that forgot `with` still publishes all its bytes
        if w is not None and self._opens == 1 and self.path.exists() and self.path.stat().st_size == w.size:
            return w.size, w.hexdigest()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())
        return self.path.stat().st_size, sha256_file(self.path)


# Folders whose entries changed inside `batched_dir_syncs()`: each is fsynced once when the batch
# ends instead of after every rename. Process-wide (apply's download threads share one batch).
_batch: set[Path] | None = None
_batch_lock = threading.Lock()


@contextmanager
def batched_dir_syncs() -> Iterator[None]:
    """Within: `commit` notes the folder it renamed into; on exit each noted folder is fsynced once.

    Why: the rename is durable only once its folder is fsynced, and apply of 1,000 small files did
    2,000 folder fsyncs (each artifact's folder and its provenance folder), a journal commit each,
    where one per folder at the end gives the same guarantee when apply returns. A crash before
    then can lose a rename, never a file's content: the next apply finds it missing and fetches it again.
    """
    global _batch
    with _batch_lock:
        outer = _batch is not None
        if not outer:
            _batch = set()
    try:
        yield
    finally:
        if not outer:
            with _batch_lock:
                folders, _batch = _batch, None
            for folder in sorted(folders):
                _fsync_dir(folder)


def _sync_dir_of(final: Path) -> None:
    with _batch_lock:
        if _batch is not None:
            _batch.add(final.parent)
            return
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def staged(final: Path, *, where: str, progress: Callable[[int], None] | None = None) -> Iterator[Output]:
    """Yield an Output in the final folder; remove the temp file on any failure.

    Disk-full errors become a ResourceError naming `where`. `progress`, if given, is told the
    bytes of every sequential write.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Output(temp_path_for(final), progress)
    try:
        yield out
    except OSError as e:
        _discard(out)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(
                f"no space left on device while writing {final.name}",
                where=where,
                fix="free disk space under the storage root (or point --root elsewhere) and re-run apply",
            ) from None
        raise
    except BaseException:
        _discard(out)
        raise


def _discard(out: Output) -> None:
    if out._writer is not None:
        try:
            out._writer.abort()
        except OSError:
            pass
    try:
        out.path.unlink()
    except FileNotFoundError:
        pass


def commit(out: Output, final: Path, *, where: str, expected_sha256: str | None,
           expected_size: int | None = None, mismatch_fix: str | None = None) -> tuple[int, str]:
    """Verify the staged bytes against the pins and atomically publish them at `final`.

    Returns (size, sha256). On a mismatch the temp file is removed, the old file (or
    nothing) stays at `final`, and an IntegrityError says expected vs got.
    """
    try:
        size, sha = out.digest()
    except OSError:
        _discard(out)
        raise
    bad = None
    if expected_sha256 is not None and sha != expected_sha256:
        bad = f"sha256 mismatch: expected {expected_sha256}, got {sha}"
    elif expected_size is not None and size != expected_size:
        bad = f"size mismatch: expected {expected_size} bytes, got {size}"
    if bad:
        _discard(out)
        raise IntegrityError(bad + "; nothing was published", where=where,
                             fix=mismatch_fix or "re-run apply; if the change is intended, set sha256: null "
                                                 "for this artifact and run `reconcile lock` after apply")
    if final.is_dir() and not final.is_symlink():
        _discard(out)
        raise IntegrityError("a directory sits where a file is expected", where=where,
                             fix=f"move or remove the directory {final} and re-run apply")
    problem = format_problem(out.path, final.name)
    if problem:
        _discard(out)
        raise IntegrityError(f"{problem}; nothing was published", where=where,
                             fix="the source or the transform produced bytes that are not a valid file of this "
                                 "type: check the upstream file (or the inputs), then re-run apply")
    os.replace(out.path, final)
    _sync_dir_of(final)
    return size, sha


# JSON files above this are not parsed before publishing (no artifact of the WMTP storage comes near).
JSON_VALIDATE_MAX = 64 << 20


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def format_problem(staged: Path, name: str) -> str | None:
    """Why staged bytes are not a valid file of the type their final name says, or None.

    Run by `commit` before the rename, so a file that fails these checks never sits at a final
    path: `.safetensors` must have a strictly valid header (safetensors_io.read_header), `.json`
    must parse. Other types are checked by their transforms and by `reconcile check`.
    """
    if name.endswith(".safetensors"):
        from .models.safetensors_io import read_header
        try:
            read_header(staged)
        except IntegrityError as e:
            return f"not a valid safetensors file: {e.message}"
    elif name.endswith(".json") and staged.stat().st_size <= JSON_VALIDATE_MAX:
        import json
        try:
            json.loads(staged.read_bytes(), parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            return f"not valid JSON: {type(e).__name__}: {str(e)[:200]}"
    return None


def write_bytes_atomic(final: Path, data: bytes, *, where: str) -> str:
    """Publish small bytes (state, lock files) through the same staged path; returns sha256."""
    with staged(final, where=where) as out:
        with out.open() as f:
            f.write(data)
        return commit(out, final, where=where, expected_sha256=None)[1]


def write_output_file(path: str | Path, data: bytes, *, make_parent: bool = False) -> Path:
    """Publish a user-named output file (`--attest`, `plan --out`, `docs --out`) atomically; its path.

    Refused (LockError, exit 2) when something that is not a regular file exists there (a device,
    a FIFO, a folder, `/proc/self/fd/1`): replacing it would destroy it, writing into it is not
    atomic. A missing parent folder is refused too (a typo must not create folders), unless
    `make_parent` (the default docs path under the root).
    """
    from .errors import LockError
    given = Path(path)
    try:
        st = os.stat(given)  # follows symlinks: what the user's path really names
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise LockError(f"cannot use this output path: {e.strerror}", where=str(path),
                        fix="name a regular file in an existing folder") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise LockError(f"the output path is {kind}; it is never replaced", where=str(path),
                        fix="name a regular file (write to a file, then copy it where it should go)")
    final = given.resolve()  # a symlink to a regular file: replace the file it names, not the link
    if not final.parent.is_dir() and not make_parent:
        raise LockError(f"the folder {final.parent} does not exist", where=str(path),
                        fix="create the folder first, or name a file in an existing folder")
    write_bytes_atomic(final, data, where=str(path))
    return final
