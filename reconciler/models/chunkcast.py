"""Casting chunks of tensor bytes to another float dtype: onnxruntime when installed, torch otherwise.

Why not always torch: `import torch` costs 0.8-1.0 s of one core (measured on the 2-core VM), and a
conversion cannot cast its first chunk before it ends. That is 30% of converting a 3.2 GB checkpoint
and more than half of merging 2.1 GB of shards, and no thread can overlap it: casting with numpy
meanwhile (its float16 cast is not vectorised here: 10.5 ms per 8 MiB of output vs torch's 0.5 ms)
starved the import, which took 1.74 s instead of 0.87 s, and the conversion got slower (3.0-3.3 s
vs 2.9-3.0 s). onnxruntime's Cast kernel is vectorised like torch's (0.6 ms per 8 MiB) and imports
in 0.09 s. It is the optional `fast` extra; without it, torch casts as before.

Same bytes either way: both engines round to nearest even, so every finite value gets the same bits
(tests/test_chunkcast.py compares them with torch, ties, subnormals and overflow included). Where
they may differ is NaN and infinity (NaN payloads, overflow counting), so a chunk whose output holds
a non-finite value is cast again by torch, which also counts overflows as before. Sources other
than float32/float16/bfloat16 (float64: the two may round twice differently) always go to torch.
"""

from __future__ import annotations

import numpy as np

# dtype name -> (ONNX TensorProto element type, unsigned view of the same width, exponent-all-ones mask)
_FLOATS = {
    "float32": (1, np.uint32, 0x7F800000),
    "float16": (10, np.uint16, 0x7C00),
    "bfloat16": (16, np.uint16, 0x7F80),
}


class Caster:
    """Casts raw bytes of one float dtype into raw bytes of another, chunk by chunk (see the module doc)."""

    def __init__(self, use_onnxruntime: bool = True):
        self._ort = _onnxruntime() if use_onnxruntime else None
        self._sessions: dict[tuple[str, str], object] = {}
        self._torch = None
        self._threads = 0
        self._scratch = np.empty(0, dtype=np.uint32)
        self.used: set[str] = set()  # the engines that cast at least one chunk (recorded in provenance info)

    @property
    def engine(self) -> str:
        """What casts float chunks when it can, "onnxruntime" or "torch" (`used`: what did)."""
        return "onnxruntime" if self._ort is not None else "torch"

    def cast(self, src: np.ndarray, src_dtype: str, out: np.ndarray, dtype: str) -> int:
        """Cast `src` (uint8 bytes of `src_dtype`) into `out` (uint8 bytes of `dtype`, same element count).

        Returns how many finite source values became +-inf (a narrowing cast overflowed): 0 in the common case.
        The same dtype on both sides is a copy.
        """
        if src_dtype == dtype:
            out[:] = src
            return 0
        if src.nbytes == 0:
            return 0
        session = self._session(src_dtype, dtype)
        if session is not None and self._ran(session, src, src_dtype, out, dtype) and not self._non_finite(out, dtype):
            self.used.add("onnxruntime")
            return 0
        self.used.add("torch")
        return self._torch_cast(src, src_dtype, out, dtype)

    def _session(self, src_dtype: str, dtype: str):
        """onnxruntime's Cast for this pair of dtypes, made and probed once; None: torch casts this pair."""
        key = (src_dtype, dtype)
        if key not in self._sessions:
            usable = self._ort is not None and src_dtype in _FLOATS and dtype in _FLOATS
            self._sessions[key] = self._probed_session(src_dtype, dtype) if usable else None
        return self._sessions[key]

    def _probed_session(self, src_dtype: str, dtype: str):
        """A Cast session, if it casts the probe values exactly as round-to-nearest-even does (else None).

        Why probe: the output must not depend on which onnxruntime release is installed, and nothing
        promises that every release rounds as torch does (the tests check the releases named in README);
        an engine that truncated instead would fail here. Cheap: 1-8 ms, once per pair of dtypes.
        """
        probe = _probe(src_dtype)
        out = np.empty(probe.size * np.dtype(_FLOATS[dtype][1]).itemsize, dtype=np.uint8)
        try:
            options = self._ort.SessionOptions()
            options.intra_op_num_threads = 1  # the pipeline's threads already fill the cores
            options.inter_op_num_threads = 1
            session = self._ort.InferenceSession(cast_model(_FLOATS[src_dtype][0], _FLOATS[dtype][0]), options,
                                                 providers=["CPUExecutionProvider"])
            self._run(session, probe.view(np.uint8), src_dtype, out, dtype)
        except Exception:  # noqa: BLE001 - the accelerator failing (memory, a broken build) leaves it to torch
            return None
        return session if out.tobytes() == reference_cast(probe, src_dtype, dtype).tobytes() else None

    def _ran(self, session, src: np.ndarray, src_dtype: str, out: np.ndarray, dtype: str) -> bool:
        """Cast one chunk with onnxruntime; False when it failed (out of memory, say): torch casts it then,
        and reports a real shortage of memory in the words the rest of reconcile understands."""
        try:
            self._run(session, src, src_dtype, out, dtype)
        except Exception:  # noqa: BLE001 - onnxruntime's errors share no base class with ours or MemoryError
            return False
        return True

    def _run(self, session, src: np.ndarray, src_dtype: str, out: np.ndarray, dtype: str) -> None:
        ort, binding = self._ort, session.io_binding()
        # over our buffers, no copy; typed by ONNX element type (numpy has no bfloat16)
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            src.view(_FLOATS[src_dtype][1]), _FLOATS[src_dtype][0]))
        binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            out.view(_FLOATS[dtype][1]), _FLOATS[dtype][0]))
        session.run_with_iobinding(binding)

    def _torch_cast(self, src: np.ndarray, src_dtype: str, out: np.ndarray, dtype: str) -> int:
        if self._torch is None:
            import torch

            # One torch thread while casting: the pipeline's threads already fill the cores, and torch's
            # OpenMP workers spin between small per-chunk casts (measured: 5.3 s -> 2.4 s of user CPU, 3.2 GB).
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            self._torch = torch
        torch = self._torch
        s = torch.from_numpy(src).view(getattr(torch, src_dtype))
        o = torch.from_numpy(out).view(getattr(torch, dtype))
        o.copy_(s)
        if torch.finfo(o.dtype).max >= torch.finfo(s.dtype).max:
            return 0
        return new_non_finite(torch, s, o)

    def close(self) -> None:
        """Give torch back its thread count if it cast anything (call it last: a later torch cast sets it again)."""
        if self._torch is not None:
            self._torch.set_num_threads(self._threads)
            self._torch = None

    def _non_finite(self, out: np.ndarray, dtype: str) -> bool:
        """Any +-inf or NaN in `out` (one masked pass and a max: 0.35 ms per 8 MiB of float16 here)."""
        _, unsigned, mask = _FLOATS[dtype]
        bits = out.view(unsigned)
        if bits.size == 0:
            return False
        if self._scratch.nbytes < bits.nbytes:
            self._scratch = np.empty(bits.nbytes // 4 + 1, dtype=np.uint32)
        masked = np.bitwise_and(bits, unsigned(mask), out=self._scratch.view(unsigned)[:bits.size])
        return int(masked.max()) == mask


def _probe(dtype: str) -> np.ndarray:
    """Finite values of `dtype` as unsigned bits: every one for 16-bit types; for float32, every sign and
    exponent with mantissas around the rounding points of float16 (13 bits cut) and bfloat16 (16 bits cut)
    (49k values: numpy's float16 cast of them, the reference, takes ~3 ms; of all 2^16 upper halves, 45 ms)."""
    _, unsigned, mask = _FLOATS[dtype]
    if unsigned is np.uint16:
        bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    else:
        top = np.array([0, 1, 2, 3, 0x3F, 0x40, 0x41, 0x7E, 0x7F], dtype=np.uint32)  # mantissa's upper 7 bits
        high = ((np.arange(512, dtype=np.uint32)[:, None] << 7 | top[None, :]) << 16).reshape(-1)
        low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xFFFF],
                       dtype=np.uint32)
        bits = (high[:, None] | low[None, :]).reshape(-1)
    return bits[(bits & unsigned(mask)) != unsigned(mask)]


def reference_cast(bits: np.ndarray, src_dtype: str, dtype: str) -> np.ndarray:
    """Round-to-nearest-even cast of finite `bits` (unsigned view of `src_dtype`) to `dtype`, by numpy alone.

    Every source here widens to float32 exactly; float32 -> float16 is numpy's cast (nearest even) and
    float32 -> bfloat16 the usual integer rounding of the upper half.
    """
    if src_dtype == "float32":
        wide = bits.view(np.float32)
    elif src_dtype == "float16":
        wide = bits.view(np.float16).astype(np.float32)
    else:
        wide = (bits.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float32":
        return wide
    if dtype == "float16":
        with np.errstate(over="ignore"):  # past 65504: inf, as every engine gives
            return wide.astype(np.float16)
    u = wide.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _onnxruntime():
    """onnxruntime, or None when it is absent or cannot load (e.g. built for another numpy): torch casts then."""
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001 - an optional accelerator that fails to load must not fail a conversion
        return None
    # 1.20: the first release that binds numpy buffers by ONNX element type (how bfloat16 is handed over)
    value = getattr(onnxruntime, "OrtValue", None)
    return onnxruntime if hasattr(value, "ortvalue_from_numpy_with_onnx_type") else None


def new_non_finite(torch, src, cast) -> int:
    """Finite source values that the narrowing cast turned into +-inf (0 in the common case, cheaply).

    A narrowing float cast can only turn finite values into +-inf, so a chunk whose cast min and max
    are finite (NaN fails the comparison) has none; only a chunk holding a non-finite value pays
    for the exact count.
    """
    if cast.numel() == 0:
        return 0
    lo, hi = torch.aminmax(cast)
    inf = float("inf")
    if -inf < lo.item() and hi.item() < inf:
        return 0
    return int((~torch.isfinite(cast)).sum()) - int((~torch.isfinite(src)).sum())


def cast_model(src_type: int, dst_type: int) -> bytes:
    """A one-node ONNX model, y = Cast(x, to=dst_type), for 1-D tensors of any length, serialised.

    Written out here (a dozen protobuf fields) rather than built with the `onnx` package, which
    onnxruntime does not need and which would be one more dependency for five messages.
    """
    dim = _msg(1, _msg(2, b"n"))  # TensorShapeProto.dim { dim_param: "n" }

    def value(name: bytes, elem: int) -> bytes:  # ValueInfoProto { name, type { tensor_type { elem_type, shape } } }
        return _msg(1, name) + _msg(2, _msg(1, _varint_field(1, elem) + _msg(2, dim)))

    to = _msg(1, b"to") + _varint_field(3, dst_type) + _varint_field(20, 2)  # AttributeProto, type INT
    node = _msg(1, b"x") + _msg(2, b"y") + _msg(4, b"Cast") + _msg(5, to)
    graph = _msg(1, node) + _msg(2, b"cast") + _msg(11, value(b"x", src_type)) + _msg(12, value(b"y", dst_type))
    opset = _msg(1, b"") + _varint_field(2, 13)
    return _varint_field(1, 8) + _msg(8, opset) + _msg(7, graph)  # ir_version 8, opset 13, graph


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _msg(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes or an embedded message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload
