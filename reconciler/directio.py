"""How a staged file's bytes reach the disk: past the page cache (O_DIRECT) once the file is big.

Why (measured on the 2-core VM, ext4 on virtio, `dd` of 1.6 GB, three alternating pairs): writing
through the page cache and then `sync` took 2.0-4.7 s wall and 1.3-3.9 s of system CPU (every
output byte copied into newly allocated cache pages, then written back); `oflag=direct` from reused
buffers took 1.5-2.0 s and 0.5-0.8 s. For the 27 GB conversion on a 24 GB machine it also means the
13.5 GB output does not push the input being read out of the cache, and nothing is left to write
back when the final fsync comes.

How: a file starts in the page cache (small writes gathered in a 1 MiB buffer), so the many small
files of an apply (1,000 x 1 MiB downloads, JSON, JSONL) cost what they always did. At DIRECT_FROM
bytes, a page boundary, O_DIRECT is switched on: from there bytes are copied into aligned blocks
(anonymous mmaps are page aligned; BLOCK is a multiple of every logical block size), and each full
block is written at its offset by one I/O thread while the caller fills the next (RING blocks, so
memory is RING x BLOCK whatever the file size); a page-aligned caller buffer is written in place.
A file's tail, and everything after `flush()` (someone wants to read the bytes back now), goes
through the page cache again. Where O_DIRECT is refused (EINVAL when it is switched on, or at a
write: some FUSE and network filesystems) the same bytes go through the page cache; the file's
contents never depend on which path was taken.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading

BLOCK = 8 << 20
RING = 3
ALIGN = 4096  # offsets, lengths and addresses of direct writes: the largest common logical block size
DIRECT_FROM = 16 << 20  # bytes of a file written through the page cache before O_DIRECT (a multiple of ALIGN)
SMALL = 1 << 20  # the page-cache phase gathers writes smaller than this
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class StagingFile:
    """A write-only file that writes its bytes past DIRECT_FROM with O_DIRECT, on a helper thread, where it can.

    `write` copies and returns (backpressure: it waits when RING blocks are in flight); an error
    of the helper thread is raised by the next `write`, `flush` or `close`.
    """

    def __init__(self, path: os.PathLike | str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self.pos = 0  # bytes accepted so far (the file's size once flushed)
        self._small = bytearray()  # page-cache phase: accepted bytes not yet written, ending at pos
        self._switch_at: int | None = DIRECT_FROM if _O_DIRECT else None  # where O_DIRECT begins
        self._blocks = False  # the direct phase: bytes go through the aligned blocks
        self._o_direct = False  # O_DIRECT is set on the descriptor (only this object changes its flags)
        self._cur: mmap.mmap | None = None  # the block being filled; its file offset is pos - fill
        self._fill = 0
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._made = 0
        self._todo: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.closed = False

    def fileno(self) -> int:
        """The descriptor (for fsync)."""
        return self._fd

    def write(self, data) -> int:
        """Accept all of `data` (any buffer); returns its length."""
        mv = memoryview(data).cast("B")
        self._raise()
        done = 0
        while done < mv.nbytes and not self._blocks:  # the page-cache phase, until O_DIRECT begins (if ever)
            done += self._write_cached(mv[done:])
        if done < mv.nbytes:
            done += self._write_in_place(mv[done:])
        while done < mv.nbytes:
            if self._cur is None:
                self._cur = self._block()
            take = min(BLOCK - self._fill, mv.nbytes - done)
            self._cur[self._fill:self._fill + take] = mv[done:done + take]
            self._fill += take
            done += take
            self.pos += take
            if self._fill == BLOCK:
                self._submit()
        return done

    def flush(self) -> None:
        """Put every accepted byte in the file (readable by another descriptor).

        The partial block goes through the page cache (O_DIRECT is cleared: its offset and length
        are not aligned), and so does everything written after it.
        """
        self._drain()
        self._switch_at = None
        if self._blocks:
            self._end_direct()
            if self._fill:
                _pwrite_all(self._fd, memoryview(self._cur)[:self._fill], self.pos - self._fill)
            self._fill, self._blocks = 0, False
        self._write_small()

    def close(self) -> None:
        """Flush and close the descriptor (the caller fsyncs before, if it wants durability)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the helper thread and close, writing nothing more (the file is about to be discarded)."""
        if self.closed:
            return
        self.closed = True
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join()
        os.close(self._fd)
        # Drop the blocks (unmapped when the last view of them goes; an exception's traceback may
        # still hold one, so they are not closed by hand).
        self._free, self._cur = queue.SimpleQueue(), None

    @property
    def direct(self) -> bool:
        """Whether whole blocks go past the page cache now."""
        return self._blocks and self._is_direct()

    # -- the page-cache phase ----------------------------------------------------------------------

    def _write_cached(self, mv: memoryview) -> int:
        """Take bytes through the page cache, up to where O_DIRECT begins; the bytes taken."""
        take = mv.nbytes if self._switch_at is None else min(mv.nbytes, self._switch_at - self.pos)
        if len(self._small) + take < SMALL:
            self._small += mv[:take]
        else:  # a big write goes as it is, after what was gathered
            self._write_small()
            _pwrite_all(self._fd, mv[:take], self.pos)
        self.pos += take
        if self.pos == self._switch_at:
            self._write_small()
            self._start_direct()
        return take

    def _write_small(self) -> None:
        if self._small:
            _pwrite_all(self._fd, memoryview(self._small), self.pos - len(self._small))
            self._small = bytearray()

    def _start_direct(self) -> None:
        self._switch_at = None
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) | _O_DIRECT)
        except OSError as e:  # this filesystem has no direct I/O: stay in the page cache
            if e.errno != errno.EINVAL:
                raise
            return
        self._blocks = self._o_direct = True

    # -- the direct phase ------------------------------------------------------------------------

    def _write_in_place(self, mv: memoryview) -> int:
        """Write the whole pages of an aligned caller buffer straight from it, with no copy; the bytes written.

        Why: a writer that lays its buffers out on page boundaries of the file (castwrite does)
        saves the copy into a block: the 3.2 GB conversion (1.1 of its 1.6 GB written in place) took
        3.83-4.14 s of CPU (user + sys, median 3.95) against 4.09-4.24 s (median 4.20) with this path
        off, five alternating runs; wall time did not differ measurably (2.74-3.28 vs 2.88-3.05 s).
        The write is synchronous: the caller may reuse its buffer when `write` returns.
        """
        if mv.nbytes < ALIGN or self.pos % ALIGN or self._fill % ALIGN or mv.readonly or not self.direct:
            return 0
        import ctypes  # here: only big direct writes need it, and its import is start-up time for every command

        if ctypes.addressof(ctypes.c_char.from_buffer(mv)) % ALIGN:
            return 0
        if self._fill:  # whole pages too (block starts stay page-aligned while the file is direct): send them first
            self._submit()
        n = mv.nbytes - mv.nbytes % ALIGN
        self._write_block(mv[:n], self.pos)
        self.pos += n
        return n

    def _block(self) -> mmap.mmap:
        if self._made < RING:  # blocks are made on demand: a small file never holds more than one
            self._made += 1
            return mmap.mmap(-1, BLOCK)
        block = self._free.get()
        if self._error is not None:
            self._free.put(block)  # every block stays accounted for: flush and abort wait for them all
            raise self._error
        return block

    def _submit(self) -> None:
        if self._thread is None:
            self._todo = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="reconcile-direct-write", daemon=True)
            self._thread.start()
        self._todo.put((self._cur, self.pos - self._fill, self._fill))
        self._cur, self._fill = None, 0

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            block, offset, length = item
            if self._error is None:
                try:
                    self._write_block(memoryview(block)[:length], offset)
                except BaseException as e:  # noqa: BLE001 - raised on the caller's thread
                    self._error = e
            self._free.put(block)

    def _write_block(self, data: memoryview, offset: int) -> None:
        """Write whole pages at a page-aligned offset (the I/O thread's blocks, in-place writes)."""
        try:
            _pwrite_all(self._fd, data, offset)
        except OSError as e:  # a filesystem that accepted O_DIRECT when switched on but not for this write
            if e.errno != errno.EINVAL or not self._is_direct():
                raise
            self._end_direct()
            _pwrite_all(self._fd, data, offset)

    def _drain(self) -> None:
        """Wait until every submitted block is written."""
        if self._thread is not None:
            # every block not being filled comes back to the free queue once its write is done
            back = [self._free.get() for _ in range(self._made - (self._cur is not None))]
            for block in back:
                self._free.put(block)
            self._raise()

    def _is_direct(self) -> bool:
        return self._o_direct

    def _end_direct(self) -> None:
        if self._o_direct:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self._o_direct = False

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _pwrite_all(fd: int, mv: memoryview, offset: int) -> None:
    while mv.nbytes:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.EIO, "write accepted no bytes")
        mv, offset = mv[n:], offset + n
