"""Cast a weight file's tensors into a safetensors stream in one pass: read, cast, hash and write overlap.

Why a pipeline: converting the real 27 GB checkpoint is bounded by the disk, but the CPU work per
output byte (copy out of the page cache, cast, the file's sha256, each tensor's sha256 for the
manifest, the write) is ~1.7 ns per output byte on this machine, and one thread doing it in turn
stalls the disk. Here the calling thread reads a chunk with `pread` and casts it (`chunkcast`:
onnxruntime or torch, either releases the GIL), and two helper threads take each cast chunk: one
writes it through the output's hashing writer (which hashes the file's sha256 on its own thread
while the kernel writes), one updates the tensor's sha256. Every byte is read once from the source and hashed once per digest,
never re-read from the output; memory is a few chunks (RING x CHUNK), whatever the file size.

The tensor manifest (name -> dtype, shape, sha256) is the one `safetensors_io.tensor_manifest`
computes by re-reading the file; apply stores it in the provenance instead of re-reading.
"""

from __future__ import annotations

import hashlib
import mmap
import queue
import threading
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import ReconcileError, ResourceError, TransformError
from .chunkcast import Caster
from .safetensors_io import METADATA, encode_header, expected_nbytes, layout_order
from .tensorfile import ST_DTYPES, Entry, TensorFile
from .torchzip import ITEMSIZE

CHUNK_OUT = 8 << 20  # output bytes per chunk: large enough that per-chunk overhead is noise
RING = 4  # chunks in flight: the reader/caster runs up to RING-1 chunks ahead of the slowest consumer
AHEAD = 128 << 20  # source bytes asked of the disk (posix_fadvise WILLNEED) beyond the chunk being read
PIECE = 8 << 20  # ... asked in pieces this big


class _Slot:
    """One reusable output chunk and the two consumers it waits for."""

    def __init__(self, nbytes: int):
        # page-aligned (an anonymous mapping), so the staging file can write a whole chunk without copying it
        self.buf = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
        self.written = threading.Event()
        self.hashed = threading.Event()
        self.written.set()
        self.hashed.set()


class _Consumer(threading.Thread):
    """A thread that applies `fn` to queued items in order; the first error stops it and is kept."""

    def __init__(self, name: str, fn: Callable[[object], None]):
        super().__init__(name=name, daemon=True)
        self.fn, self.q, self.error = fn, queue.SimpleQueue(), None
        self.start()

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as e:  # noqa: BLE001 - handed to the producer, which raises it
                    self.error = e
            if isinstance(item, tuple) and isinstance(item[0], _Slot):
                item[1].set()  # the slot is free for this consumer even after an error

    def stop(self) -> None:
        self.q.put(None)
        self.join()


class _ReadAhead(threading.Thread):
    """Keeps the disk reading AHEAD bytes in front of the caster, along the order the tensors are read.

    Why: the output is written in safetensors order (by name), which jumps around the source file
    tensor by tensor, so the kernel's sequential read-ahead starts over at every tensor, and a
    read-ahead that stopped at the end of the current tensor left the caster waiting on the disk
    at the start of each next one. At real size (27 GB, page cache cold) the conversion got
    ~0.5 GB/s of input where `dd` reads 1.4 GB/s. A thread of its own, so asking never delays a cast.
    """

    def __init__(self, segments: list[tuple[TensorFile, int, int]]):
        super().__init__(name="reconcile-read-ahead", daemon=True)
        self.segments = segments  # (file, offset, bytes) in the order the caster reads them
        self.cond = threading.Condition()
        self.consumed = self.asked = 0
        self.stopped = False
        self.start()

    def run(self) -> None:
        for tf, offset, nbytes in self.segments:
            for at in range(offset, offset + nbytes, PIECE):
                with self.cond:
                    self.cond.wait_for(self._room)
                    if self.stopped:
                        return
                piece = min(PIECE, offset + nbytes - at)
                try:
                    tf.prefetch(at, piece)
                except OSError:  # only a hint: the reads themselves report any real problem
                    return
                self.asked += piece

    def _room(self) -> bool:
        return self.stopped or self.asked - self.consumed < AHEAD

    def advance(self, nbytes: int) -> None:
        """The caster has read `nbytes` more of the segments."""
        with self.cond:
            self.consumed += nbytes
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()
        self.join()


class CastWriter:
    """Writes `specs` (name -> (safetensors dtype, shape)) into `f` from sources, casting on the way.

    `source(name)` returns (TensorFile, Entry) of the tensor to cast; `caster` casts the chunks (the
    caller closes it when done with it). After `run()`: `spans` (the [start, end) stream offsets of each
    tensor's bytes, from what `f.write` accepted), `manifest` (name -> {dtype, shape, sha256}), `size`,
    and `cast_by` (the engines that cast chunks of this file).
    """

    def __init__(self, f, specs: Mapping[str, tuple[str, tuple[int, ...]]],
                 source: Callable[[str], tuple[TensorFile, Entry]], where: str, caster: Caster):
        self.f, self.specs, self.source, self.where, self.caster = f, dict(specs), source, where, caster
        self.cast_by: list[str] = []
        self.order = layout_order(self.specs)
        self.spans: dict[str, tuple[int, int]] = {}
        self.manifest: dict[str, dict] = {}
        self.size = 0
        self._tensor_hash = hashlib.sha256()
        self._turn = 0  # chunks handed out so far: picks the next slot of the ring
        self._ahead: _ReadAhead | None = None
        self._raw = None  # the source-side read buffer, allocated once (per-tensor buffers fragment the heap)

    def run(self) -> int:
        """Write the header and every tensor; returns the bytes written."""
        self.size = self._put(encode_header(self.specs, METADATA))
        slots = [_Slot(CHUNK_OUT) for _ in range(RING)]
        writer = _Consumer("reconcile-write", self._write_item)
        hasher = _Consumer("reconcile-tensor-hash", self._hash_item)
        try:
            self._ahead = _ReadAhead([(tf, e.start, e.nbytes) for tf, e in map(self._open, self.order)])
            for name in self.order:
                start = self.size
                hasher.q.put(("begin", name))
                for slot, view in self._cast_chunks(name, slots):
                    writer.q.put((slot, slot.written, view))
                    hasher.q.put((slot, slot.hashed, view))
                    self.size += view.nbytes
                    self._raise_from(writer, hasher)
                hasher.q.put(("end", name))
                self.spans[name] = (start, self.size)
        finally:
            self.cast_by = sorted(self.caster.used)
            if self._ahead is not None:
                self._ahead.stop()
            writer.stop()
            hasher.stop()
        self._raise_from(writer, hasher)
        self.manifest = dict(sorted(self.manifest.items()))
        return self.size

    def _cast_chunks(self, name: str, slots: list[_Slot]):
        """Yield (slot, uint8 view) of `name` cast to its target dtype, chunk by chunk, in order."""
        dtype, shape = self.specs[name]
        target = ST_DTYPES[dtype]
        tf, entry = self._open(name)
        if tuple(entry.shape) != tuple(shape):
            raise TransformError(f"tensor {name}: shape {list(entry.shape)} differs from the plan's {list(shape)}",
                                 where=self.where)
        width, src_width = ITEMSIZE[target], ITEMSIZE[entry.dtype]
        whole = self._read(tf, entry) if entry.stride is not None else None  # a strided view: read, then chunk
        n, step = entry.numel, CHUNK_OUT // width
        raw = None if entry.dtype == target else self._raw_buffer(step * src_width)
        for first, count in _chunks(n, step, width, self.size):
            slot = slots[self._turn % len(slots)]
            self._turn += 1
            slot.written.wait()
            slot.hashed.wait()
            slot.written.clear()
            slot.hashed.clear()
            out = slot.buf[:count * width]
            if whole is not None:
                src = whole[first * src_width:(first + count) * src_width]
            elif raw is None:  # same dtype: read straight into the output chunk, nothing to cast
                self._pread(tf, out, entry.start + first * src_width, name)
                yield slot, memoryview(out)
                continue
            else:
                src = raw[:count * src_width]
                self._pread(tf, src, entry.start + first * src_width, name)
            if overflow := self.caster.cast(src, entry.dtype, out, target):
                raise TransformError(f"tensor {name}: {overflow} finite values overflow {dtype} (they would become "
                                     "inf)", where=self.where, fix="convert to bfloat16 or float32 instead")
            yield slot, memoryview(out)
        if n * width != expected_nbytes(dtype, shape):
            raise TransformError(f"tensor {name}: wrote {n * width} bytes, its header says "
                                 f"{expected_nbytes(dtype, shape)}", where=self.where)

    def _raw_buffer(self, nbytes: int) -> np.ndarray:
        if self._raw is None or self._raw.size < nbytes:
            self._raw = None
            self._raw = np.empty(nbytes, dtype=np.uint8)
        return self._raw

    def _open(self, name: str) -> tuple[TensorFile, Entry]:
        try:
            return self.source(name)
        except ResourceError:
            raise
        except ReconcileError as e:
            raise TransformError(e.message, where=self.where, fix=e.fix) from None

    def _read(self, tf: TensorFile, entry: Entry) -> np.ndarray:
        """A strided tensor's elements, contiguous, as raw bytes (rare: `TensorFile.read` imports torch)."""
        import torch

        self._ahead.advance(entry.nbytes)  # the read-ahead's position: what the caster has read
        try:
            return tf.read(entry.name).reshape(-1).view(torch.uint8).numpy()
        except ResourceError:
            raise
        except ReconcileError as e:
            raise TransformError(e.message, where=self.where, fix=e.fix) from None

    def _pread(self, tf: TensorFile, into: np.ndarray, offset: int, name: str) -> None:
        self._ahead.advance(into.nbytes)
        try:
            tf.pread_into(memoryview(into), offset, name)
        except ResourceError:
            raise
        except ReconcileError as e:
            raise TransformError(e.message, where=self.where, fix=e.fix) from None

    def _put(self, data) -> int:
        n = self.f.write(data)
        if n is None:
            n = len(data)
        if n != memoryview(data).nbytes:
            raise OSError(f"short write: {n} of {memoryview(data).nbytes} bytes")
        return n

    def _write_item(self, item) -> None:
        self._put(item[2])

    def _hash_item(self, item) -> None:
        if item[0] == "begin":
            self._tensor_hash = hashlib.sha256()
        elif item[0] == "end":
            dtype, shape = self.specs[item[1]]
            self.manifest[item[1]] = {"dtype": dtype, "shape": list(shape), "sha256": self._tensor_hash.hexdigest()}
        else:
            self._tensor_hash.update(item[2])

    @staticmethod
    def _raise_from(*consumers: _Consumer) -> None:
        for c in consumers:
            if c.error is not None:
                raise c.error


def _chunks(n: int, step: int, itemsize: int, at: int):
    """(first, count) element ranges of a tensor of n elements whose bytes start at stream offset `at`.

    The first range ends where the stream reaches a multiple of the chunk size, so every full chunk
    after it starts on a page boundary of the file: the staging file writes those straight from the
    slot (directio). A tensor whose bytes cannot meet that boundary is cut from its start.
    """
    head, first = (-at) % (step * itemsize), 0
    if head and head % itemsize == 0 and head // itemsize < n:
        first = head // itemsize
        yield 0, first
    while first < n:
        count = min(step, n - first)
        yield first, count
        first += count

