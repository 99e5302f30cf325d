"""The index of a torch zip checkpoint (`torch.save`: .pth / .bin / .pt): where each tensor's bytes lie.

Why not `torch.load(mmap=True)`: it maps the whole file privately. Under the kernel's default
overcommit heuristic a private mapping larger than RAM + swap is refused (the real 27 GB Meta
checkpoint on a 24 GB machine fails before its first tensor), and under an address-space
limit (`ulimit -v`, common for SLURM jobs) any mapping of a big file is. Without mmap,
`torch.load` reads every tensor into memory at once. So this module reads only the zip's
central directory and the small `data.pkl` record, and returns, for every tensor, the absolute
file offset and layout of its bytes; `tensorfile.TensorFile` then reads tensors one at a time
with ordinary reads. Nothing here imports torch.

The pickle is unpickled with the same restriction as `torch.load(weights_only=True)`: a
`find_class` that knows only torch's tensor-rebuild functions, storage types, dtypes and
`OrderedDict`, and hands back inert stand-ins for them, so a pickle naming anything else
(`os.system`, `builtins.eval`, ...) is refused before anything in it runs, and nothing in the
pickle is ever called except those stand-ins.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

# Storage classes in `data.pkl` -> element dtype (torch's `_dtype_to_storage_type_map`, reversed).
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "LongStorage": "int64",
    "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "BFloat16Storage": "bfloat16", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "UntypedStorage": "uint8",
}
# dtype name -> bytes per element, for dtypes a plain weight tensor can have.
ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex128": 16, "complex64": 8,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}
MAX_PICKLE = 256 << 20  # data.pkl of a 27 GB checkpoint is ~40 KB; anything near this is not a state dict
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then file name length, extra field length


class CheckpointFormatError(ValueError):
    """The file is not a readable torch zip checkpoint; `refused` marks a pickle that names a forbidden global."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True, slots=True)
class _Dtype:
    name: str


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True, slots=True)
class _Ref:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointFormatError(f"a tensor's {what} {value!r} is not a tuple of non-negative integers")
    return tuple(value)


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise CheckpointFormatError("a tensor record does not point at a storage")
    return _Ref(storage, offset, _ints(size, "shape"), _ints(stride, "stride"), storage.dtype)


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
    if not isinstance(dtype, _Dtype) or dtype.name not in ITEMSIZE:
        raise CheckpointFormatError(f"a tensor record has an unsupported dtype {dtype!r}")
    ref = _rebuild_v2(storage, offset, size, stride)
    # v3 stores the bytes as an untyped (uint8) storage and names the dtype separately.
    return _Ref(ref.storage, ref.offset, ref.shape, ref.stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data  # an nn.Parameter is its tensor for our purposes


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Knows only the globals in `_ALLOWED`, torch's storage classes and dtypes (as inert markers)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch" and name in ITEMSIZE:
            return _Dtype(name)
        raise CheckpointFormatError(f"its pickle names {module}.{name}, which a weights-only load refuses", refused=True)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointFormatError(f"unknown persistent id {str(pid)[:80]!r} in its pickle")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise CheckpointFormatError(f"malformed storage reference {str(pid)[:80]!r} in its pickle")
        return _Storage(key, kind.dtype, numel)


@dataclass(frozen=True)
class TorchEntry:
    """One tensor of a torch zip checkpoint: dtype, shape, strides and the absolute offset of its bytes.

    `start` is where element 0 of the tensor (its storage offset applied) lies in the file;
    `span` is how many bytes from there the strided view touches (== nbytes when contiguous).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    start: int
    span: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's values (numel x itemsize)."""
        return self.numel * ITEMSIZE[self.dtype]

    @property
    def contiguous(self) -> bool:
        """True when the values lie back to back in row-major order (one read gets them)."""
        want, expected = 1, []
        for d in reversed(self.shape):
            expected.append(want)
            want *= d
        return all(d <= 1 or s == e for d, s, e in zip(self.shape, self.stride, reversed(expected)))


def sniff(path: str | Path) -> str:
    """"zip" (torch.save's format since torch 1.6), "legacy" (the older pickle stream) or "other"."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return "zip"
    return "legacy" if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") else "other"


def read_index(path: str | Path) -> list[TorchEntry]:
    """Every tensor of a torch zip state dict, in file order; CheckpointFormatError on anything else.

    Reads the zip's central directory, one local header per record and `data.pkl`; no tensor data.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
            records = {i.filename: i for i in zf.infolist()}
            pkl = [n for n in records if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise CheckpointFormatError("it has no data.pkl record (not a torch.save checkpoint)")
            prefix = pkl[0][: -len("data.pkl")]
            if records[pkl[0]].file_size > MAX_PICKLE:
                raise CheckpointFormatError(f"its data.pkl is {records[pkl[0]].file_size:,} bytes, over the "
                                  f"{MAX_PICKLE:,}-byte limit for a state dict index")
            order = records.get(prefix + "byteorder")
            if order is not None and zf.read(order).strip() not in (b"little", b""):
                raise CheckpointFormatError("it was saved big-endian; only little-endian checkpoints are supported")
            state = _Unpickler(io.BytesIO(zf.read(pkl[0]))).load()
            return _entries(f, state, records, prefix)
    except zipfile.BadZipFile as e:
        raise CheckpointFormatError(f"it is not a complete zip archive ({e})") from None
    except CheckpointFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, KeyError,
            IndexError, struct.error) as e:
        raise CheckpointFormatError(f"its data.pkl cannot be read as a state dict ({type(e).__name__}: {e})") from None


def _entries(f, state, records: dict, prefix: str) -> list[TorchEntry]:
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"it holds a {type(state).__name__}, not a state dict")
    starts: dict[str, tuple[int, int]] = {}  # storage key -> (data offset, record size)
    out = []
    for name, ref in state.items():
        if not isinstance(name, str) or not isinstance(ref, _Ref):
            raise CheckpointFormatError(f"entry {str(name)[:80]!r} is not a named tensor")
        if len(ref.shape) != len(ref.stride):
            raise CheckpointFormatError(f"tensor {name}: shape {ref.shape} and stride {ref.stride} differ in length")
        st = ref.storage
        if st.key not in starts:
            starts[st.key] = _record_data(f, records, f"{prefix}data/{st.key}")
        data_at, size = starts[st.key]
        item = ITEMSIZE[ref.dtype]
        if size != st.numel * ITEMSIZE[st.dtype]:
            raise CheckpointFormatError(f"tensor {name}: its storage record holds {size:,} bytes, the pickle says "
                              f"{st.numel:,} x {st.dtype}")
        numel = 1
        for d in ref.shape:
            numel *= d
        reach = 0 if numel == 0 else 1 + sum((d - 1) * s for d, s in zip(ref.shape, ref.stride))
        if (ref.offset + reach) * item > size:
            raise CheckpointFormatError(f"tensor {name}: its view runs past the end of its storage record (corrupt file?)")
        out.append(TorchEntry(name, ref.dtype, ref.shape, ref.stride, data_at + ref.offset * item, reach * item))
    return sorted(out, key=lambda e: (e.start, e.name))


def _record_data(f, records: dict, name: str) -> tuple[int, int]:
    """(absolute offset of a stored record's data, its size), from its local header."""
    info = records.get(name)
    if info is None:
        raise CheckpointFormatError(f"its pickle refers to storage record {name}, which the archive lacks")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise CheckpointFormatError(f"record {name} is compressed; torch.save stores records uncompressed")
    f.seek(info.header_offset)
    sig, n_name, n_extra = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if sig != b"PK\x03\x04":
        raise CheckpointFormatError(f"record {name}: no local zip header at offset {info.header_offset} (corrupt file?)")
    return info.header_offset + _LOCAL_HEADER.size + n_name + n_extra, info.file_size
