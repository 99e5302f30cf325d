"""The streaming safetensors writer, the strict header reader, and content digests."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from reconciler.errors import IntegrityError
from reconciler.models import safetensors_io as sio
from reconciler.models.safetensors_io import (
    SafetensorsWriter,
    content_digest,
    describe_change,
    dtype_name,
    read_header,
    read_tensor,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(7, 5, generator=g), "b": torch.randn(3, generator=g).half(),
            "c": torch.randn(4, generator=g).bfloat16(), "i": torch.arange(5), "empty": torch.zeros(0, 3),
            "scalar": torch.tensor(2.5), "é-unicode": torch.randn(2, 2, generator=g)}


def _stream(tensors, metadata=sio.METADATA, cast=None) -> bytes:
    buf = io.BytesIO()
    specs = {k: (cast or dtype_name(t.dtype), tuple(t.shape)) for k, t in tensors.items()}
    w = SafetensorsWriter(buf, specs, metadata)
    for name in w.order:
        w.write(name, tensors[name])
    w.close()
    return buf.getvalue()


def _raw(path, header: dict, data: bytes, n: int | None = None):
    """A file with a hand-made header (for corrupt-file tests)."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if n is None else n) + text + data)
    return path


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}])
def test_writer_is_byte_identical_to_save_file(metadata):
    t = _tensors()
    assert _stream(t, metadata) == save(t, metadata=metadata)


def test_writer_casts_in_slices_with_same_bytes(monkeypatch, tmp_path):
    monkeypatch.setattr(sio, "CHUNK_ELEMS", 7)  # force many slices, one of them partial
    t = {"x": torch.randn(10, 9), "y": torch.randn(3)}
    data = _stream(t, cast="F16")
    assert data == save({k: v.half() for k, v in t.items()}, metadata={"format": "pt"})
    (tmp_path / "a.safetensors").write_bytes(data)
    assert torch.equal(load_file(tmp_path / "a.safetensors")["x"], t["x"].half())


def test_writer_counts_values_that_overflow_the_target():
    w = SafetensorsWriter(io.BytesIO(), {"x": ("F16", (3,))})
    _, overflow = w.write("x", torch.tensor([1.0, 1e6, float("inf")]))
    assert overflow == 1  # the source inf was already non-finite


def test_writer_refuses_out_of_order_wrong_shape_and_missing():
    w = SafetensorsWriter(io.BytesIO(), {"a": ("F32", (2,)), "b": ("F32", (2,))})
    with pytest.raises(ValueError, match="out of order"):
        w.write("b", torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="tensor b was declared but never written"):
        w.close()


def test_read_header_roundtrip(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "a.safetensors", metadata={"format": "pt"})
    infos, meta = read_header(tmp_path / "a.safetensors")
    assert meta == {"format": "pt"}
    assert {k: (i.dtype, i.shape) for k, i in infos.items()} == \
        {k: (dtype_name(v.dtype), tuple(v.shape)) for k, v in t.items()}
    assert torch.equal(read_tensor(tmp_path / "a.safetensors", infos["w"]), t["w"])
    assert torch.equal(read_tensor(tmp_path / "a.safetensors", infos["c"]), t["c"])


def test_rejects_offsets_past_end_of_file(tmp_path):
    p = _raw(tmp_path / "t.safetensors", {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(IntegrityError, match="tensor a: data ends at byte .* past the end"):
        read_header(p)


def test_rejects_overlapping_tensors(tmp_path):
    hdr = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(IntegrityError, match="tensor b: data overlaps tensor a"):
        read_header(_raw(tmp_path / "t.safetensors", hdr, b"\0" * 12))


def test_rejects_gaps_and_trailing_bytes(tmp_path):
    hdr = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    with pytest.raises(IntegrityError, match="tensor b: 4 unused bytes after tensor a"):
        read_header(_raw(tmp_path / "gap.safetensors", hdr, b"\0" * 12))
    hdr = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(IntegrityError, match="4 trailing bytes"):
        read_header(_raw(tmp_path / "tail.safetensors", hdr, b"\0" * 8))


def test_rejects_huge_or_past_eof_header_length(tmp_path):
    with pytest.raises(IntegrityError, match="exceeds"):
        read_header(_raw(tmp_path / "huge.safetensors", {}, b"", n=2**62))
    with pytest.raises(IntegrityError, match="runs past the end"):
        read_header(_raw(tmp_path / "eof.safetensors", {}, b"", n=1000))
    (tmp_path / "tiny.safetensors").write_bytes(b"\1\2")
    with pytest.raises(IntegrityError, match="only 2 bytes"):
        read_header(tmp_path / "tiny.safetensors")


def test_rejects_dtype_shape_byte_count_disagreement(tmp_path):
    hdr = {"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 24]}}  # F16 [2,3] is 12 bytes
    with pytest.raises(IntegrityError, match="tensor w: dtype F16 and shape \\[2, 3\\] need 12 bytes"):
        read_header(_raw(tmp_path / "t.safetensors", hdr, b"\0" * 24))


def test_rejects_unknown_dtype_and_bad_json(tmp_path):
    hdr = {"w": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(IntegrityError, match="tensor w: unknown dtype 'F33'"):
        read_header(_raw(tmp_path / "t.safetensors", hdr, b"\0" * 4))
    p = tmp_path / "j.safetensors"
    p.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        read_header(p)


def test_content_digest_ignores_serialisation(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "a.safetensors", metadata={"format": "pt"})
    save_file(t, tmp_path / "b.safetensors", metadata={"format": "pt", "note": "other header bytes"})
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert a != b
    assert content_digest(tmp_path / "a.safetensors") == content_digest(tmp_path / "b.safetensors")
    assert describe_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors") == []


def test_describe_change_names_what_changed(tmp_path):
    t = _tensors()
    save_file(t, tmp_path / "a.safetensors")
    u = dict(t)
    u["w"] = t["w"].clone()
    u["w"][3, 1] += 1.0
    u["b"] = t["b"].float()
    u["i"] = torch.arange(6)
    del u["scalar"]
    u["new"] = torch.zeros(1)
    save_file(u, tmp_path / "b.safetensors")
    changes = describe_change(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert changes == [f"tensor scalar: only in {tmp_path / 'a.safetensors'}",
                       f"tensor new: only in {tmp_path / 'b.safetensors'}",
                       "tensor b: dtype F16 -> F32",
                       "tensor i: shape [5] -> [6]",
                       "tensor w: values differ in 1 of 35 elements"]
    assert content_digest(tmp_path / "a.safetensors") != content_digest(tmp_path / "b.safetensors")
