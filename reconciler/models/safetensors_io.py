"""Streaming safetensors I/O: an incremental writer, a strict header reader, content digests.

Why not `safetensors.torch.save_file`: it needs every tensor in memory at once, and the
real Meta checkpoint (27 GB float32) does not fit in RAM. The format allows streaming: the
header only needs dtypes and shapes, which are known before any byte is cast. The writer
lays tensors out exactly as `save_file` does (dtype alignment descending, then name), so for
the same tensors and at most one metadata key its bytes are identical to `save_file`'s.

File layout: 8-byte little-endian header length N, N bytes of JSON (padded with spaces so
that 8 + N is a multiple of 8), then the tensors' bytes back to back, no gaps.
`torch` is imported lazily: checks that only read headers stay fast to import.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import IntegrityError

# safetensors dtype name -> bits per element, in the Rust enum's order: `save_file` sorts
# tensors by this rank descending (widest alignment first), then by name.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
}
_RANK = {name: i for i, name in enumerate(DTYPE_BITS)}
MAX_HEADER = 100_000_000  # the reference implementation's limit: a larger N is corruption or an attack
CHUNK_ELEMS = 4 * 1024 * 1024  # cast in slices: a 16 MB float32 slice, not a whole 500 MB matrix
READ_CHUNK = 8 * 1024 * 1024
METADATA = {"format": "pt"}  # what transformers expects; deterministic, no timestamps or paths


def torch_dtype(name: str):
    """The torch dtype for a safetensors dtype name (e.g. "F16" -> torch.float16)."""
    import torch

    table = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
             "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "I16": torch.int16, "U16": torch.uint16,
             "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32,
             "F32": torch.float32, "C64": torch.complex64, "F64": torch.float64, "I64": torch.int64,
             "U64": torch.uint64}
    return table[name]


def dtype_name(dtype) -> str:
    """The safetensors dtype name for a torch dtype or a plain name ("float16", "bf16", "F16")."""
    aliases = {"float16": "F16", "half": "F16", "fp16": "F16", "bfloat16": "BF16", "bf16": "BF16",
               "float32": "F32", "float": "F32", "fp32": "F32", "float64": "F64", "double": "F64",
               "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
    text = str(dtype).removeprefix("torch.")
    if text in DTYPE_BITS:
        return text
    if text in aliases:
        return aliases[text]
    raise KeyError(f"no safetensors dtype for {dtype!r}")


@dataclass(frozen=True)
class TensorInfo:
    """One header entry. `start`/`end` are ABSOLUTE byte offsets in the file (not the JSON's
    data-relative `data_offsets`), so a reader can seek straight to the bytes."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Byte length of the tensor's data."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """Number of elements (1 for a scalar, 0 for an empty tensor)."""
        return math.prod(self.shape)


def expected_nbytes(dtype: str, shape) -> int:
    """Bytes that a tensor of this dtype and shape occupies."""
    n = DTYPE_BITS[dtype]
    for d in shape:
        n *= d
    return (n + 7) // 8


def layout_order(specs: Mapping[str, tuple[str, tuple[int, ...]]]) -> list[str]:
    """Names in the order `save_file` stores them: dtype rank descending, then name."""
    return sorted(specs, key=lambda name: (-_RANK[specs[name][0]], name))


def encode_header(specs: Mapping[str, tuple[str, tuple[int, ...]]],
                  metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length prefix plus the padded JSON header for tensors `name -> (dtype, shape)`."""
    entries: dict = {}
    if metadata:
        entries["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    offset = 0
    for name in layout_order(specs):
        dtype, shape = specs[name]
        size = expected_nbytes(dtype, shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


class SafetensorsWriter:
    """Write a safetensors file to a binary stream one tensor at a time.

    The header goes out on construction; `write(name, tensor)` must then be called for every
    tensor in `self.order` (layout order), and `close()` checks that none is missing. Each
    write casts the tensor slice by slice into one reused buffer, so memory stays at one slice.
    `spans[name]` is the [start, end) stream offset range that tensor's bytes were written at,
    counted from what the stream's `write` reported, so a caller can check the stored layout
    against the header without re-reading the data. `digests=False` skips the per-tensor sha256
    (`write` then returns "" for it): a stream that hashes every byte itself makes it redundant.
    """

    def __init__(self, f: BinaryIO, specs: Mapping[str, tuple[str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = METADATA, *, digests: bool = True):
        for name, (dtype, shape) in specs.items():
            if dtype not in DTYPE_BITS:
                raise KeyError(f"tensor {name}: unknown dtype {dtype!r}")
            if any(int(d) < 0 for d in shape):
                raise ValueError(f"tensor {name}: negative dimension in {tuple(shape)}")
        self._f = f
        self._specs = {n: (d, tuple(int(x) for x in s)) for n, (d, s) in specs.items()}
        self.order = layout_order(self._specs)
        self._next = 0
        self._digests = digests
        self._buffers: dict = {}  # torch dtype -> reused cast buffer
        self.spans: dict[str, tuple[int, int]] = {}
        self.pos = self._put(encode_header(self._specs, metadata))

    def _put(self, data) -> int:
        n = self._f.write(data)
        if n is None:  # a raw stream may write less: insist on every byte
            n = len(data)
        if n != memoryview(data).nbytes:
            raise OSError(f"short write: {n} of {memoryview(data).nbytes} bytes")
        return n

    def write(self, name: str, tensor) -> tuple[str, int]:
        """Cast and write the next tensor; returns (sha256 of its bytes, values that became non-finite).

        The second number counts finite source values that the cast turned into inf/nan
        (float16 overflow): the caller decides whether that is fatal.
        """
        if self._next >= len(self.order) or self.order[self._next] != name:
            want = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise ValueError(f"tensor {name} written out of order: expected {want}")
        dtype, shape = self._specs[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"tensor {name}: shape {tuple(tensor.shape)} differs from the header's {shape}")
        target = torch_dtype(dtype)
        buf = self._buffers.get(target)
        if buf is None or buf.numel() != CHUNK_ELEMS:
            buf = self._buffers[target] = _empty(CHUNK_ELEMS, target)
        digest, overflow, start = hashlib.sha256() if self._digests else None, 0, self.pos
        for piece, n_new in _cast_slices(tensor, target, buf):
            mv = memoryview(piece.view(_uint8()).numpy())
            if digest is not None:
                digest.update(mv)
            self.pos += self._put(mv)
            overflow += n_new
        if self.pos - start != expected_nbytes(dtype, shape):
            raise ValueError(f"tensor {name}: wrote {self.pos - start} bytes, its header says "
                             f"{expected_nbytes(dtype, shape)}")
        self.spans[name] = (start, self.pos)
        self._next += 1
        return (digest.hexdigest() if digest is not None else ""), overflow

    def close(self) -> None:
        """Check that every declared tensor was written (does not close the stream)."""
        if self._next != len(self.order):
            raise ValueError(f"tensor {self.order[self._next]} was declared but never written")


def _uint8():
    import torch

    return torch.uint8


def _empty(n: int, dtype):
    import torch

    return torch.empty(n, dtype=dtype)


def _cast_slices(tensor, target, buf) -> Iterator[tuple[object, int]]:
    """Yield (1-D slice cast to `target` in `buf`, finite values that became non-finite).

    Each yielded slice is a view of `buf`, overwritten by the next: use it before asking for
    the next one. Overflow is checked cheaply: a narrowing float cast can only turn finite
    values into +-inf, so a slice whose min and max are finite (NaN fails the comparison) has
    none; only a slice that holds a non-finite value pays for the exact count.
    """
    import torch

    from .chunkcast import new_non_finite

    flat = tensor.reshape(-1)  # a view for contiguous tensors (mmap'd checkpoints are)
    lossy = target.is_floating_point and flat.dtype.is_floating_point and \
        torch.finfo(target).max < torch.finfo(flat.dtype).max
    for i in range(0, flat.numel(), buf.numel()):
        src = flat[i:i + buf.numel()]
        piece = buf[:src.numel()]
        piece.copy_(src)
        yield piece, new_non_finite(torch, src, piece) if lossy else 0


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and strictly validate a safetensors header: (name -> TensorInfo, metadata).

    Raises IntegrityError naming the tensor for: a header length that is huge or runs past
    the end of the file, invalid JSON, unknown dtypes, a dtype/shape that disagrees with the
    byte count, and data offsets that overlap, leave gaps, or run past the end of the file.
    """
    where = str(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise IntegrityError(f"not a safetensors file: only {size} bytes", where=where)
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER:
            raise IntegrityError(f"header length {n} exceeds the {MAX_HEADER}-byte limit (corrupt file?)",
                                 where=where)
        if 8 + n > size:
            raise IntegrityError(f"header length {n} runs past the end of the {size}-byte file", where=where)
        raw = f.read(n)
    try:
        entries = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"header is not valid JSON: {e}", where=where) from None
    except RecursionError:  # `[[[[...]]]]` thousands deep: a hostile header, one artifact's error
        raise IntegrityError("header JSON is nested too deeply", where=where) from None
    if not isinstance(entries, dict):
        raise IntegrityError("header is not a JSON object", where=where)
    metadata = entries.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise IntegrityError("__metadata__ must map strings to strings", where=where)
    infos = {name: _parse_entry(name, e, 8 + n, where) for name, e in entries.items()}
    _check_contiguous(infos, 8 + n, size, where)
    return infos, metadata


def _parse_entry(name: str, e, base: int, where: str) -> TensorInfo:
    """One header entry -> TensorInfo, or IntegrityError naming the tensor."""
    if not isinstance(e, dict):
        raise IntegrityError(f"tensor {name}: header entry is not an object", where=where)
    dtype, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise IntegrityError(f"tensor {name}: unknown dtype {dtype!r}", where=where)
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise IntegrityError(f"tensor {name}: shape {shape!r} is not a list of non-negative integers", where=where)
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0 for o in offs)
            and offs[0] <= offs[1]):
        raise IntegrityError(f"tensor {name}: data_offsets {offs!r} are not [begin, end] with begin <= end",
                             where=where)
    want = expected_nbytes(dtype, shape)
    if offs[1] - offs[0] != want:
        raise IntegrityError(f"tensor {name}: dtype {dtype} and shape {shape} need {want} bytes but its "
                             f"data_offsets span {offs[1] - offs[0]}", where=where)
    return TensorInfo(dtype, tuple(shape), base + offs[0], base + offs[1])


def _check_contiguous(infos: Mapping[str, TensorInfo], base: int, size: int, where: str) -> None:
    """Tensors must tile the data section exactly: no overlap, no gap, nothing past EOF."""
    pos, prev = base, None
    for name in sorted(infos, key=lambda k: (infos[k].start, infos[k].end, k)):
        info = infos[name]
        if info.end > size:
            raise IntegrityError(f"tensor {name}: data ends at byte {info.end}, past the end of the "
                                 f"{size}-byte file (truncated?)", where=where)
        if info.start < pos:
            raise IntegrityError(f"tensor {name}: data overlaps tensor {prev}", where=where)
        if info.start > pos:
            after = f"after tensor {prev}" if prev else "before the first tensor"
            raise IntegrityError(f"tensor {name}: {info.start - pos} unused bytes {after}", where=where)
        pos, prev = info.end, name
    if pos != size:
        raise IntegrityError(f"{size - pos} trailing bytes after the last tensor", where=where)


def iter_bytes(path: str | os.PathLike, info: TensorInfo, chunk: int = READ_CHUNK) -> Iterator[memoryview]:
    """Stream a tensor's bytes in full `chunk`-sized pieces (the last may be shorter).

    One buffer is reused: a piece is only valid until the next one is requested.
    """
    buf = bytearray(min(chunk, max(info.nbytes, 1)))
    with open(path, "rb", buffering=0) as f:
        f.seek(info.start)
        left = info.nbytes
        while left:
            want = min(left, len(buf))
            _read_exactly(f, memoryview(buf)[:want], info.end - left, path)
            left -= want
            yield memoryview(buf)[:want]


def _read_exactly(f, view: memoryview, at: int, path) -> None:
    """Fill `view` from `f` (short reads retried); EOF inside a tensor is an IntegrityError."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise IntegrityError(f"file ended inside a tensor at byte {at + got}", where=str(path))
        got += n


def read_tensor(path: str | os.PathLike, info: TensorInfo):
    """Load one tensor into memory with plain reads (no mmap, so RSS is just this tensor)."""
    import torch

    data = torch.empty(info.nbytes, dtype=torch.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(info.start)
        _read_exactly(f, memoryview(data.numpy()), info.start, path)
    return data.view(torch_dtype(info.dtype)).reshape(info.shape)


def tensor_digests(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of each tensor's bytes, streamed, after strict header validation."""
    infos, _ = read_header(path)
    out = {}
    for name in sorted(infos):
        h = hashlib.sha256()
        for piece in iter_bytes(path, infos[name]):
            h.update(piece)
        out[name] = h.hexdigest()
    return out


def content_digest(path: str | os.PathLike) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order.

    Independent of serialisation (header whitespace, key order, metadata, layout order):
    two files holding the same tensors have the same content digest.
    """
    infos, _ = read_header(path)
    h = hashlib.sha256()
    for name, sha in tensor_digests(path).items():
        info = infos[name]
        h.update(json.dumps([name, info.dtype, list(info.shape), sha], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def describe_change(path_a: str | os.PathLike, path_b: str | os.PathLike) -> list[str]:
    """Tensor-by-tensor differences from file A to file B, one line each (empty: same content).

    Names tensors only in one file, dtype and shape changes, and tensors whose values differ
    (with how many elements differ).
    """
    a, _ = read_header(path_a)
    b, _ = read_header(path_b)
    lines = [f"tensor {n}: only in {path_a}" for n in sorted(a.keys() - b.keys())]
    lines += [f"tensor {n}: only in {path_b}" for n in sorted(b.keys() - a.keys())]
    for name in sorted(a.keys() & b.keys()):
        ia, ib = a[name], b[name]
        if ia.dtype != ib.dtype:
            lines.append(f"tensor {name}: dtype {ia.dtype} -> {ib.dtype}")
        elif ia.shape != ib.shape:
            lines.append(f"tensor {name}: shape {list(ia.shape)} -> {list(ib.shape)}")
        else:
            n = _count_differing(path_a, ia, path_b, ib)
            if n:
                lines.append(f"tensor {name}: values differ in {n} of {ia.numel} elements")
    return lines


def _count_differing(path_a, ia: TensorInfo, path_b, ib: TensorInfo) -> int:
    """Elements whose bytes differ between two same-dtype, same-shape tensors (streamed)."""
    import numpy as np

    width = max(DTYPE_BITS[ia.dtype] // 8, 1)
    chunk = READ_CHUNK - READ_CHUNK % width  # chunk boundaries fall on element boundaries
    count = 0
    for pa, pb in zip(iter_bytes(path_a, ia, chunk), iter_bytes(path_b, ib, chunk)):
        xa = np.frombuffer(pa, dtype=np.uint8).reshape(-1, width)
        xb = np.frombuffer(pb, dtype=np.uint8).reshape(-1, width)
        count += int((xa != xb).any(axis=1).sum())
    return count


def tensor_manifest(path: str | os.PathLike) -> dict[str, dict]:
    """name -> {dtype, shape, sha256} for every tensor, in one streamed pass."""
    infos, _ = read_header(path)
    digests = tensor_digests(path)
    return {n: {"dtype": infos[n].dtype, "shape": list(infos[n].shape), "sha256": digests[n]} for n in sorted(infos)}


def manifest_digest(manifest: dict[str, dict]) -> str:
    """The content digest of a tensor manifest (equal to `content_digest` of its file)."""
    h = hashlib.sha256()
    for name in sorted(manifest):
        m = manifest[name]
        h.update(json.dumps([name, m["dtype"], m["shape"], m["sha256"]], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def manifest_changes(old: dict[str, dict], new: dict[str, dict]) -> list[str]:
    """What changed between two tensor manifests: tensors added/removed, dtype, shape, values."""
    lines = [f"tensor {n}: missing" for n in sorted(old.keys() - new.keys())]
    lines += [f"tensor {n}: unexpected" for n in sorted(new.keys() - old.keys())]
    for n in sorted(old.keys() & new.keys()):
        o, w = old[n], new[n]
        if o["dtype"] != w["dtype"]:
            lines.append(f"tensor {n}: dtype {o['dtype']} -> {w['dtype']}")
        elif o["shape"] != w["shape"]:
            lines.append(f"tensor {n}: shape {o['shape']} -> {w['shape']}")
        elif o["sha256"] != w["sha256"]:
            lines.append(f"tensor {n}: values changed")
    return lines
