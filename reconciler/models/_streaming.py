"""Shared plumbing of the checkpoint transforms: opening sources, verified writing.

Not a plug-in (the leading underscore keeps `load_plugins` from importing it as one).
Memory model: sources are read tensor by tensor with ordinary reads (`models.tensorfile`), never
mapped, so peak RSS is about one source tensor plus one cast slice, whatever the file size, and
the conversion works under an address-space limit (`ulimit -v`) smaller than the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ReconcileError, ResourceError, TransformError
from .checkpoint_layout import LayoutError
from .safetensors_io import read_header
from .tensorfile import ST_DTYPES, Entry, TensorFile, open_tensor_file
from .torchzip import ITEMSIZE

if TYPE_CHECKING:  # numpy and the pipeline load when a conversion runs, not with the plug-ins (every command)
    import numpy as np

    from .chunkcast import Caster


def read_json(path: Path, where: str) -> dict:
    """A JSON object input, or a TransformError naming the input."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TransformError(f"cannot read {Path(path).name} as JSON: {e}", where=where) from None
    if not isinstance(value, dict):
        raise TransformError(f"{Path(path).name} is not a JSON object", where=where)
    return value


def layout_or_fail(fn: Callable[[Mapping], dict], cfg: Mapping, where: str) -> dict:
    """Expected shapes from a config; a config that describes no model is a TransformError."""
    try:
        return fn(cfg)
    except LayoutError as e:
        raise TransformError(e.message, where=where,
                             fix="use the params.json / config.json that ships with the checkpoint") from None


def open_source(path: Path, where: str) -> TensorFile:
    """A weight file (torch zip or safetensors) opened for tensor-by-tensor reading; errors name `where`.

    A corrupt or hostile file is a TransformError carrying the reader's fix; running out of
    memory or address space stays a ResourceError (the file is fine: re-downloading would not help).
    """
    with _as_transform_error(where):
        return open_tensor_file(path)


@contextmanager
def _as_transform_error(where: str):
    """A reader's error as this transform's (keeping its fix); out of memory stays a ResourceError."""
    try:
        yield
    except ResourceError:
        raise
    except ReconcileError as e:
        raise TransformError(e.message, where=where, fix=e.fix) from None


SAMPLE_BYTES = 4096  # read back and compared per tensor at its start, middle and end


def write_verified(out, specs: Mapping[str, tuple[str, tuple[int, ...]]],
                   source: Callable[[str], tuple[TensorFile, Entry]], where: str) -> dict:
    """Cast tensors into `out` as safetensors in one pipelined pass, then verify layout and sampled values.

    `source(name)` returns the (TensorFile, Entry) to read tensor `name` from. Returns {"bytes": bytes
    written, "cast_by": the engines that cast chunks}; `out.tensors` is set to the tensor manifest
    computed on the way.

    Why the output is not re-read and re-hashed in full: every byte goes through `out`'s hashing
    writer and the tensor hasher (`castwrite`), which hash exactly the buffers written, and publish
    pins that sha256. What a full re-read could still catch is a tensor stored somewhere else than
    its header says (a layout bug), or bytes other than the source's cast (a stale or wrong
    buffer). The first is proven without data: the writer records the stream offsets each
    tensor's bytes went to, counted from what `write` accepted, and these must equal the offsets
    in the header read back from disk by the strict reader (which also checks the tensors tile the
    file to its last byte). The second is checked against the SOURCE: each tensor's first, middle
    and last 4 KiB are read back from the file and compared with an independent read and cast of
    the same source elements (~12 KiB per tensor: the input is still read ~once).
    """
    for name in specs:
        _, entry = _open(source, name, where)
        if not entry.dtype.startswith(("float", "bfloat")):
            raise TransformError(f"tensor {name} has dtype {entry.dtype}, not a floating-point weight", where=where)
    from .castwrite import CastWriter
    from .chunkcast import Caster

    caster = Caster()  # the writer's chunks and the read-back samples are cast by the same engines
    try:
        with out.open() as f, open(out.path, "rb", buffering=0) as readback:
            writer = CastWriter(f, specs, lambda name: _open(source, name, where), where, caster)
            size = writer.run()
            f.flush()
            for name in writer.order:
                tf, entry = _open(source, name, where)
                _check_samples(readback, tf, entry, specs[name][0], writer.spans[name], where, caster)
    finally:
        caster.close()  # after the samples: a torch cast among them must not leave torch on one thread
    verify_layout(Path(out.path), specs, writer.spans, where)
    out.tensors = writer.manifest
    return {"bytes": size, "cast_by": writer.cast_by}


def _open(source: Callable[[str], tuple[TensorFile, Entry]], name: str, where: str) -> tuple[TensorFile, Entry]:
    with _as_transform_error(where):
        return source(name)


def _check_samples(readback, tf: TensorFile, entry: Entry, dtype: str, span: tuple[int, int], where: str,
                   caster: Caster) -> None:
    """The stored bytes at a tensor's start, middle and end equal the source's cast there."""
    import numpy as np

    target = ST_DTYPES[dtype]
    width, isz, name = ITEMSIZE[target], entry.itemsize, entry.name
    start, end = span
    k = max(SAMPLE_BYTES // width, 1)
    n = entry.numel
    flat = _strided_bytes(tf, name) if entry.stride is not None else None
    for first in sorted({0, max(n // 2 - k // 2, 0), max(n - k, 0)}):
        count = min(k, n - first)
        if count <= 0:
            continue
        if flat is None:
            src = np.empty(count * isz, dtype=np.uint8)
            tf.pread_into(memoryview(src), entry.start + first * isz, name)
        else:
            src = flat[first * isz:(first + count) * isz]
        want = np.empty(count * width, dtype=np.uint8)
        caster.cast(src, entry.dtype, want, target)  # an overflow already failed the write
        at = start + first * width
        got = os.pread(readback.fileno(), count * width, at)
        if at + len(got) > end or len(got) != count * width:
            raise TransformError(f"tensor {name}: the converted file is shorter than its header says", where=where)
        if got != want.tobytes() and not _same_values(got, want, target):
            raise TransformError(f"tensor {name}: stored values differ from the source cast to {dtype}",
                                 where=where)


def _strided_bytes(tf: TensorFile, name: str) -> np.ndarray:
    import torch

    return tf.read(name).reshape(-1).view(torch.uint8).numpy()


def _same_values(got: bytes, want: np.ndarray, dtype: str) -> bool:
    """Equal as values, NaN equal to NaN (payloads may differ between cast engines); rare, so torch."""
    import torch

    stored = torch.frombuffer(bytearray(got), dtype=getattr(torch, dtype))
    expected = torch.from_numpy(want).view(getattr(torch, dtype))
    return bool(((stored == expected) | (stored.isnan() & expected.isnan())).all())


def verify_layout(path: Path, specs: Mapping[str, tuple[str, tuple[int, ...]]],
                  spans: Mapping[str, tuple[int, int]], where: str) -> None:
    """The file on disk holds exactly `specs`, each tensor's header offsets where its bytes were written."""
    try:
        infos, _ = read_header(path)
    except ReconcileError as e:
        raise TransformError(f"the converted file does not read back: {e.message}", where=where) from None
    for name in sorted(specs.keys() | infos.keys()):
        info = infos.get(name)
        if info is None or name not in specs or (info.dtype, info.shape) != tuple(specs[name]):
            raise TransformError(f"tensor {name}: the converted file's header disagrees with the plan", where=where)
        if (info.start, info.end) != spans.get(name):
            raise TransformError(f"tensor {name}: its bytes were written at {spans.get(name)}, but the header "
                                 f"places them at {(info.start, info.end)}", where=where)
