"""The tensor-by-tensor reader (`models.tensorfile` + `models.torchzip`) against torch.load and safetensors."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reconciler.errors import IntegrityError
from reconciler.models.tensorfile import open_tensor_file


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bytes as uint8 (exact comparison, NaN payloads and float8 included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _same_as_reference(path: Path, reference: dict) -> int:
    """Every tensor read one at a time equals the reference bit for bit; returns the bytes read."""
    with open_tensor_file(path) as tf:
        assert sorted(tf.names) == sorted(reference)
        starts = [e.start for e in tf.entries]
        assert starts == sorted(starts)  # file order
        for name in tf.names:
            got, want = tf.read(name), reference[name]
            assert (got.dtype, tuple(got.shape)) == (want.dtype, tuple(want.shape)), name
            assert torch.equal(_bits(got), _bits(want)), name
            assert (tf[name].dtype, tf[name].shape) == (str(want.dtype).removeprefix("torch."), tuple(want.shape))
        return tf.bytes_read


def test_generated_meta_checkpoint_equals_torch_load(meta_ckpt):
    reference = torch.load(meta_ckpt["checkpoint"], weights_only=True)
    read = _same_as_reference(meta_ckpt["checkpoint"], reference)
    assert read == sum(t.numel() * t.element_size() for t in reference.values())  # each byte once


def test_bin_and_safetensors_shards_equal_their_reference_loaders(hf_bin, hf_safetensors):
    for shard in hf_bin["shards"]:
        _same_as_reference(shard, torch.load(shard, weights_only=True))
    for shard in hf_safetensors["shards"]:
        _same_as_reference(shard, load_file(shard))


def test_torch_save_oddities_equal_torch_load(tmp_path):
    """Views into one storage, a transposed view, a Parameter, narrow dtypes, empty and 0-d tensors."""
    base = torch.randn(10, 8)
    state = {"base": base, "rows": base[2:5], "transposed": base.t(), "param": torch.nn.Parameter(torch.randn(3)),
             "bf16": torch.randn(4, 4).bfloat16(), "f16": torch.randn(7).half(),
             "f8": torch.randn(5).to(torch.float8_e4m3fn), "u16": torch.arange(5, dtype=torch.int32).to(torch.uint16),
             "i64": torch.arange(6), "flag": torch.tensor([True, False]), "empty": torch.empty(0, 3),
             "scalar": torch.tensor(3.5), "nan": torch.tensor([float("nan"), float("inf")])}
    torch.save(state, tmp_path / "odd.pt")
    _same_as_reference(tmp_path / "odd.pt", torch.load(tmp_path / "odd.pt", weights_only=True))
    with open_tensor_file(tmp_path / "odd.pt") as tf:
        assert tf["transposed"].stride == (1, 8) and tf["base"].stride is None


def test_leading_slices_and_chunks(meta_ckpt):
    reference = torch.load(meta_ckpt["checkpoint"], weights_only=True)
    with open_tensor_file(meta_ckpt["checkpoint"]) as tf:
        emb = reference["tok_embeddings.weight"]
        assert torch.equal(tf.read_leading("tok_embeddings.weight", (7, 5)), emb[:7, :5])
        assert torch.equal(tf.read_leading("norm.weight", (3,)), reference["norm.weight"][:3])
        with pytest.raises(ValueError, match="cannot cut"):
            tf.read_leading("norm.weight", (10_000,))
        pieces = b"".join(bytes(p) for p in tf.chunks("tok_embeddings.weight", chunk=1000))
        assert pieces == _bits(emb).numpy().tobytes()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_pickle(tmp_path: Path, payload: bytes) -> Path:
    """A real torch.save archive whose data.pkl is replaced by `payload`."""
    torch.save({"w": torch.zeros(4)}, tmp_path / "ok.pt")
    out = tmp_path / "edited.pt"
    with zipfile.ZipFile(tmp_path / "ok.pt") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, payload if info.filename.endswith("data.pkl") else src.read(info))
    return out


@pytest.mark.parametrize("payload, message", [
    (lambda m: pickle.dumps({"w": _Evil(m)}, protocol=2), "names posix.system, which a weights-only load refuses"),
    (lambda m: b"cbuiltins\neval\n(S'1'\ntR.", "names builtins.eval"),
    (lambda m: b"ctorch\nFloatStorage\n(tR.", "cannot be read as a state dict"),  # calling an inert marker
    (lambda m: pickle.dumps([1, 2], protocol=2), "holds a list, not a state dict"),
    (lambda m: pickle.dumps({"w": 3}, protocol=2), "entry 'w' is not a named tensor"),
])
def test_hostile_or_foreign_pickles_are_refused_without_running_anything(tmp_path, payload, message):
    marker = tmp_path / "pwned"
    path = _with_pickle(tmp_path, payload(marker))
    with pytest.raises(IntegrityError, match=message):
        open_tensor_file(path)
    assert not marker.exists()


def test_truncated_compressed_and_legacy_files_say_what_is_wrong(meta_ckpt, tmp_path):
    data = meta_ckpt["checkpoint"].read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="not a complete zip archive") as e:
        open_tensor_file(tmp_path / "cut.pth")
    assert "re-download" in e.value.fix
    with zipfile.ZipFile(meta_ckpt["checkpoint"]) as src, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(IntegrityError, match="is compressed"):
        open_tensor_file(tmp_path / "deflated.pth")
    torch.save({"w": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(IntegrityError, match="legacy") as e:
        open_tensor_file(tmp_path / "legacy.pt")
    assert "torch.save" in e.value.fix
