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
from pathlib import Path

from ..errors import ReconcileError, ResourceError, TransformError
from .checkpoint_layout import LayoutError
from .safetensors_io import SafetensorsWriter, read_header, torch_dtype
from .tensorfile import TensorFile, open_tensor_file


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
    try:
        return open_tensor_file(path)
    except ResourceError:
        raise
    except ReconcileError as e:
        raise TransformError(e.message, where=where, fix=e.fix) from None


SAMPLE_BYTES = 4096  # read back and compared per tensor at its start, middle and end


def write_verified(out, specs: Mapping[str, tuple[str, tuple[int, ...]]], get: Callable[[str], object],
                   where: str) -> int:
    """Stream tensors into `out` as safetensors, verifying the layout and sampled values.

    `get(name)` returns the source tensor (read when asked, dropped once written). Returns the
    number of bytes written.

    Why the output is not re-read and re-hashed in full (it was; that doubled the hashing of a
    multi-GB file): every byte goes through `out`'s hashing writer, which hashes exactly the
    buffer it writes (the cast slice, not a copy), and publish pins that sha256. What a full
    re-read could still catch is a tensor stored somewhere else than its header says (a layout
    bug), or bytes other than the source's cast (a stale or wrong buffer). The first is proven
    without data: the writer records the stream offsets each tensor's bytes went to, counted
    from what `write` accepted, and these must equal the offsets in the header read back from
    disk by the strict reader (which also checks the tensors tile the file to its last byte).
    The second is checked against the SOURCE, something the old hash comparison never did:
    each tensor's first, middle and last 4 KiB are read back from the file and compared with an
    independent cast of the same source elements.
    """
    with out.open() as f, open(out.path, "rb", buffering=0) as readback:
        writer = SafetensorsWriter(f, specs, digests=False)
        for name in writer.order:
            tensor = _source(get, name, where)
            if not tensor.dtype.is_floating_point:
                raise TransformError(f"tensor {name} has dtype {tensor.dtype}, not a floating-point weight",
                                     where=where)
            _, overflow = writer.write(name, tensor)
            if overflow:
                raise TransformError(f"tensor {name}: {overflow} finite values overflow {specs[name][0]} "
                                     "(they would become inf)", where=where,
                                     fix="convert to bfloat16 or float32 instead")
            if hasattr(f, "flush"):
                f.flush()
            _check_samples(readback, name, tensor, specs[name][0], writer.spans[name], where)
            del tensor  # only one source tensor resident at a time
        writer.close()
        size = f.size
    verify_layout(Path(out.path), specs, writer.spans, where)
    return size


def _source(get: Callable[[str], object], name: str, where: str):
    try:
        return get(name)
    except ResourceError:
        raise
    except ReconcileError as e:
        raise TransformError(e.message, where=where, fix=e.fix) from None


def _check_samples(readback, name: str, tensor, dtype: str, span: tuple[int, int], where: str) -> None:
    """The stored bytes at a tensor's start, middle and end equal the source's cast there."""
    import torch

    target = torch_dtype(dtype)
    width = target.itemsize
    flat, (start, end) = tensor.reshape(-1), span
    k = max(SAMPLE_BYTES // width, 1)
    n = flat.numel()
    for first in sorted({0, max(n // 2 - k // 2, 0), max(n - k, 0)}):
        want = flat[first:first + k].to(target)
        at = start + first * width
        got = os.pread(readback.fileno(), want.numel() * width, at)
        if at + len(got) > end or len(got) != want.numel() * width:
            raise TransformError(f"tensor {name}: the converted file is shorter than its header says", where=where)
        if got == want.view(torch.uint8).numpy().tobytes():
            continue
        stored = torch.frombuffer(bytearray(got), dtype=target)
        if not bool(((stored == want) | (stored.isnan() & want.isnan())).all()):  # NaN payloads may differ
            raise TransformError(f"tensor {name}: stored values differ from the source cast to {dtype}",
                                 where=where)


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
