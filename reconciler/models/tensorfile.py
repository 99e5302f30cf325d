"""One reader for big weight files, `.safetensors` and torch zip (`.pth`/`.bin`) alike: a tensor at a time.

    with open_tensor_file(path) as tf:      # the format is told by the file's first bytes
        for e in tf.entries:                # file order: e.name, e.dtype ("float32"), e.shape, e.nbytes
            t = tf.read(e.name)             # one torch.Tensor with its own memory (e.nbytes resident)
        tf.read_leading(name, (64, 32))     # a leading slice, reading only the rows it needs
        for piece in tf.chunks(name):       # a contiguous tensor's bytes, 16 MiB at a time (buffer reused)
            ...
        tf.bytes_read                       # what this reader read, in bytes

Why not `torch.load(mmap=True)` / `safetensors.safe_open`: both map the whole file. A private
mapping bigger than RAM + swap is refused by the default overcommit heuristic (the 27 GB Meta
checkpoint on a 24 GB machine), any mapping bigger than `ulimit -v` is refused on clusters, and
pages of a mapping count as resident until unmapped. Ordinary `pread`s need only the tensor in
hand, work on read-only files of any owner, and read each byte once. The torch index is parsed
by `torchzip` under weights-only rules; the safetensors header by `safetensors_io.read_header`.
Errors are ReconcileErrors: a corrupt file is an IntegrityError, running out of memory (RAM or an
address-space limit) a ResourceError that names the limit, never a hint to re-download.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import IntegrityError, ReconcileError, is_out_of_memory, out_of_memory
from .safetensors_io import read_header
from .torchzip import ITEMSIZE, CheckpointFormatError, read_index, sniff

CHUNK = 16 << 20  # bytes per piece when streaming a tensor: big enough for few syscalls, small for RSS
# safetensors dtype codes -> torch dtype names (the names used for every format here)
ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
             "U64": "uint64", "BOOL": "bool", "C64": "complex64", "F8_E4M3": "float8_e4m3fn",
             "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz"}


@dataclass(frozen=True)
class Entry:
    """One tensor of a weight file: its torch dtype name, shape, and where its bytes lie.

    `start` is the absolute file offset of element 0; `stride` is None for a contiguous tensor
    (then its `nbytes` bytes lie back to back from `start`), else the torch strides of a view
    that touches `span` bytes from `start`.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int
    stride: tuple[int, ...] | None = None
    span: int = 0

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return ITEMSIZE[self.dtype]


class TensorFile:
    """An open weight file: its entries in file order, and tensors read one at a time with `pread`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.bytes_read = 0
        self.format = _format(self.path)
        self.entries = _torch_entries(self.path) if self.format == "torch" else _st_entries(self.path)
        self._by_name = {e.name: e for e in self.entries}
        self._fd = _open(self.path)
        if hasattr(os, "posix_fadvise"):  # one sequential pass: let the kernel read ahead further
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (entries stay readable as data)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Entry:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        """Tensor names in file order."""
        return [e.name for e in self.entries]

    def read(self, name: str):
        """Tensor `name` as a torch.Tensor that owns its memory (only this tensor is resident)."""
        import torch

        e = self._by_name[name]
        if e.stride is None:
            raw = self._alloc(e.nbytes, name)
            self.pread_into(memoryview(raw.numpy()), e.start, name)
            return raw.view(_torch_dtype(e.dtype)).reshape(e.shape)
        raw = self._alloc(e.span, name)  # a strided view: read what it spans, keep a contiguous copy
        self.pread_into(memoryview(raw.numpy()), e.start, name)
        span = raw.view(_torch_dtype(e.dtype))
        return torch.as_strided(span, e.shape, e.stride).contiguous()

    def read_leading(self, name: str, shape: tuple[int, ...]):
        """The leading `shape` slice of a tensor (`t[:a, :b, ...]`), reading only its first `shape[0]` rows."""
        e = self._by_name[name]
        if len(shape) != len(e.shape) or any(s > d for s, d in zip(shape, e.shape)):
            raise ValueError(f"cannot cut {list(shape)} from tensor {name} of shape {list(e.shape)}")
        if e.stride is not None or not shape:
            t = self.read(name)
        else:
            rows = Entry(name, e.dtype, (shape[0], *e.shape[1:]), e.start, shape[0] * (e.nbytes // max(e.shape[0], 1)))
            t = self._read_entry(rows)
        return t[tuple(slice(0, s) for s in shape)].contiguous()

    def _read_entry(self, e: Entry):
        raw = self._alloc(e.nbytes, e.name)
        self.pread_into(memoryview(raw.numpy()), e.start, e.name)
        return raw.view(_torch_dtype(e.dtype)).reshape(e.shape)

    def chunks(self, name: str, chunk: int = CHUNK) -> Iterator[memoryview]:
        """A contiguous tensor's bytes in `chunk`-sized pieces (a multiple of its itemsize); one buffer reused."""
        e = self._by_name[name]
        if e.stride is not None:
            raise ValueError(f"tensor {name} is a strided view; read() it instead")
        chunk -= chunk % e.itemsize
        buf = memoryview(bytearray(min(chunk, max(e.nbytes, 1))))
        done = 0
        while done < e.nbytes:
            n = min(len(buf), e.nbytes - done)
            self.pread_into(buf[:n], e.start + done, name)
            done += n
            yield buf[:n]

    def pread_into(self, view: memoryview, offset: int, name: str = "") -> None:
        """Fill `view` from the file at `offset`; the file ending first is an IntegrityError."""
        got = 0
        while got < len(view):
            try:
                n = os.preadv(self._fd, [view[got:]], offset + got)
            except OSError as e:
                raise _os_error(e, self.path, name) from None
            if n == 0:
                raise IntegrityError(f"the file ends at byte {offset + got}, inside tensor {name} (truncated?)",
                                     where=str(self.path), fix="re-download the file: it is shorter than its index says")
            got += n
        self.bytes_read += got

    def prefetch(self, offset: int, nbytes: int) -> None:
        """Ask the kernel to start reading a range now (returns at once), so the disk works while we compute."""
        if nbytes > 0 and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._fd, offset, nbytes, os.POSIX_FADV_WILLNEED)

    def _alloc(self, nbytes: int, name: str):
        import torch

        try:
            return torch.empty(nbytes, dtype=torch.uint8)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise out_of_memory(f"tensor {name} of {self.path.name}", nbytes) from None


def open_tensor_file(path: str | os.PathLike) -> TensorFile:
    """Open a `.safetensors` or torch zip weight file for tensor-by-tensor reading (see the module doc)."""
    return TensorFile(path)


def _os_error(e: OSError, path: Path, name: str) -> ReconcileError:
    if e.errno == errno.ENOMEM:
        return out_of_memory(f"reading tensor {name} of {path.name}")
    return IntegrityError(f"cannot read tensor {name}: {e.strerror or e}", where=str(path),
                          fix="check the disk and the file's permissions")


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise IntegrityError(f"cannot open {path.name}: {e.strerror or e}", where=str(path),
                             fix="check that the file exists and is readable") from None


def _format(path: Path) -> str:
    try:
        kind = sniff(path)
    except OSError as e:
        raise IntegrityError(f"cannot open {path.name}: {e.strerror or e}", where=str(path),
                             fix="check that the file exists and is readable") from None
    if kind == "legacy":
        raise IntegrityError(f"{path.name} uses torch's legacy (pre-1.6) serialization, which cannot be read "
                             "tensor by tensor", where=str(path),
                             fix="re-save it once with torch.save (the zip format), from a trusted source")
    return "torch" if kind == "zip" else "safetensors"


def _torch_entries(path: Path) -> list[Entry]:
    try:
        index = read_index(path)
    except CheckpointFormatError as e:
        fix = ("only load checkpoints from a trusted source; a plain state dict of tensors never needs this"
               if e.refused else "re-download the file (truncated or corrupt?)")
        raise IntegrityError(f"{path.name} is not a plain tensor checkpoint: {e}", where=str(path), fix=fix) from None
    except OSError as e:
        raise IntegrityError(f"cannot read {path.name}: {e.strerror or e}", where=str(path),
                             fix="check the file's permissions") from None
    return [Entry(t.name, t.dtype, t.shape, t.start, t.nbytes, None if t.contiguous else t.stride,
                  t.nbytes if t.contiguous else t.span) for t in index]


def _st_entries(path: Path) -> list[Entry]:
    infos, _ = read_header(path)  # strict: IntegrityError on a corrupt header
    out = []
    for name, i in infos.items():
        if i.dtype not in ST_DTYPES:
            raise IntegrityError(f"tensor {name} has dtype {i.dtype}, which torch cannot hold", where=str(path))
        out.append(Entry(name, ST_DTYPES[i.dtype], i.shape, i.start, i.nbytes, None, i.nbytes))
    return sorted(out, key=lambda e: (e.start, e.name))


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)
