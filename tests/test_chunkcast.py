"""The chunk caster against torch, the reference: same bytes for every value, NaN and overflow included.

onnxruntime casts when installed (`fast` extra: CI installs it), torch otherwise; a conversion's output
must not depend on which. Each case casts a table of hand-picked bit patterns (rounding ties both
ways, the largest finite values and the first ones past them, subnormals and the smallest of them,
signed zeros, infinities, quiet and signalling NaNs with payloads) plus random values of every
magnitude, and compares with `torch.Tensor.to`.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from reconciler.models.chunkcast import Caster

ort = pytest.importorskip("onnxruntime", reason="the `fast` extra (onnxruntime) is not installed")

F32_EDGES = [
    0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,  # zeros, float32 subnormals
    0x33000000, 0x33000001, 0x337FFFFF, 0x33800000, 0x33C00000, 0x34000000,  # around float16's smallest subnormal
    0x387FC000, 0x387FE000, 0x387FFFFF, 0x38800000, 0x38801000, 0x38802000,  # float16 subnormal/normal border
    0x3F800000, 0x3F801000, 0x3F803000, 0x3F800FFF, 0x3F801001,  # ties to even in float16 (1 + half an ulp)
    0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties in bfloat16
    0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x47800000,  # float16 max 65504, then overflow
    0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF,  # bfloat16's rounding at float32's max
    0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0x7FFFFFFF, 0xFF812345,  # inf, NaN
]


def _values(dtype: str) -> torch.Tensor:
    edges = torch.tensor(np.array(F32_EDGES, dtype=np.uint32).view(np.int32)).view(torch.float32)
    edges = torch.cat([edges, -edges])
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(-45, 38, 200, dtype=torch.float64).to(torch.float32)
    noise = torch.randn(200, 500, generator=gen) * scales[:, None]
    values = torch.cat([edges, noise.reshape(-1)])
    return values.to(getattr(torch, dtype))  # a narrower source: its own edges come from the cast


def _finite(values: torch.Tensor) -> torch.Tensor:
    return values[torch.isfinite(values)]


def _cast(caster: Caster, values: torch.Tensor, dtype: str) -> tuple[bytes, int]:
    src = values.view(torch.uint8).numpy().copy()
    out = np.zeros(values.numel() * torch.empty(0, dtype=getattr(torch, dtype)).element_size(), dtype=np.uint8)
    overflow = caster.cast(src, str(values.dtype).removeprefix("torch."), out, dtype)
    return out.tobytes(), overflow


PAIRS = [("float32", "float16"), ("float32", "bfloat16"), ("bfloat16", "float16"), ("float16", "bfloat16"),
         ("float16", "float32"), ("bfloat16", "float32")]


@pytest.mark.parametrize("use_ort", [True, False], ids=["onnxruntime", "torch"])
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_finite_values_cast_to_the_same_bits_as_torch(pair, use_ort):
    src_dtype, dtype = pair
    values = _finite(_values(src_dtype))
    want = values.to(getattr(torch, dtype))
    caster = Caster(use_onnxruntime=use_ort)
    got, overflow = _cast(caster, values, dtype)
    assert got == want.view(torch.uint8).numpy().tobytes()
    assert overflow == int(torch.isinf(want).sum())  # finite values past the target's max became inf
    assert caster.engine == ("onnxruntime" if use_ort else "torch")


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_chunk_holding_nan_or_inf_gets_torch_bits_and_count(pair):
    """NaN payloads and overflow counting are where engines may differ: such a chunk is torch's."""
    src_dtype, dtype = pair
    values = _values(src_dtype)
    assert not bool(torch.isfinite(values).all())
    want = values.to(getattr(torch, dtype))
    got, overflow = _cast(Caster(), values, dtype)
    assert got == want.view(torch.uint8).numpy().tobytes()
    narrowing = torch.finfo(getattr(torch, dtype)).max < torch.finfo(values.dtype).max
    expected = int((~torch.isfinite(want)).sum()) - int((~torch.isfinite(values)).sum()) if narrowing else 0
    assert overflow == expected


def test_a_chunk_without_finite_overflow_but_with_nan_reports_no_overflow():
    values = torch.tensor([1.0, float("nan"), -2.5, float("inf")], dtype=torch.float32)
    got, overflow = _cast(Caster(), values, "float16")
    assert overflow == 0
    assert got == values.to(torch.float16).view(torch.uint8).numpy().tobytes()


def test_float64_sources_are_cast_by_torch():
    """float64 -> float16 may round twice through float32 in another engine: torch casts it, always."""
    values = torch.tensor([1 + 2 ** -11 + 2 ** -40, 65519.99, 1e-8], dtype=torch.float64)
    got, overflow = _cast(Caster(), values, "float16")
    assert got == values.to(torch.float16).view(torch.uint8).numpy().tobytes()
    assert overflow == 0


def test_empty_chunks_cast_to_nothing():
    for use_ort in (True, False):
        got, overflow = _cast(Caster(use_onnxruntime=use_ort), torch.empty(0), "float16")
        assert (got, overflow) == (b"", 0)


def test_a_conversion_does_not_import_torch_when_onnxruntime_casts(tmp_path):
    """What makes a conversion start casting at once: `import torch` (~0.9 s) never runs on that path."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, struct, json\n"
        "import numpy as np\n"
        "from reconciler.models.castwrite import CastWriter\n"
        "from reconciler.models.tensorfile import open_tensor_file\n"
        f"src = {str(tmp_path / 'in.safetensors')!r}\n"
        "data = np.arange(4096, dtype=np.float32).tobytes()\n"
        "header = json.dumps({'w': {'dtype': 'F32', 'shape': [64, 64], 'data_offsets': [0, len(data)]}}).encode()\n"
        "header += b' ' * (-len(header) % 8)\n"
        "open(src, 'wb').write(struct.pack('<Q', len(header)) + header + data)\n"
        "class Sink:\n"
        "    def write(self, b): return memoryview(b).nbytes\n"
        "from reconciler.models.chunkcast import Caster\n"
        "with open_tensor_file(src) as tf:\n"
        "    CastWriter(Sink(), {'w': ('F16', (64, 64))}, lambda n: (tf, tf[n]), 't', Caster()).run()\n"
        "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False", res.stderr


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_the_probe_reference_is_torchs_cast(pair):
    """What each onnxruntime session is probed against before it casts anything: torch's bits, exactly."""
    from reconciler.models.chunkcast import _probe, reference_cast

    src_dtype, dtype = pair
    bits = _probe(src_dtype)
    src = torch.from_numpy(bits.view(np.int32 if bits.itemsize == 4 else np.int16)).view(getattr(torch, src_dtype))
    assert bool(torch.isfinite(src).all())
    want = src.to(getattr(torch, dtype)).view(torch.uint8).numpy().tobytes()
    assert reference_cast(bits, src_dtype, dtype).tobytes() == want


def test_the_probe_tells_truncation_from_rounding():
    """An engine that truncated float32 to bfloat16 instead of rounding would fail the probe: torch casts then."""
    from reconciler.models.chunkcast import _probe, reference_cast

    bits = _probe("float32")
    truncated = (bits >> 16).astype(np.uint16)
    assert truncated.tobytes() != reference_cast(bits, "float32", "bfloat16").tobytes()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_apply_writes_the_same_bytes_with_and_without_onnxruntime(meta_ckpt, tmp_path, dtype):
    """The whole CLI, as a user without the `fast` extra runs it (onnxruntime absent) and with it."""
    from reconciler.hashing import sha256_file
    from reconciler.provenance import read_provenance

    digests = []
    for without in (False, True):
        work = tmp_path / f"{'without' if without else 'with'}"
        root = work / "storage"
        (root / "raw").mkdir(parents=True)
        lines = ["version: 1", 'storage_version: "1"', "root: storage", "sources:",
                 f'  src: {{repo: t/src, type: model, revision: "{"0" * 40}"}}', "artifacts:"]
        for rel, path in (("raw/consolidated.pth", meta_ckpt["checkpoint"]), ("raw/params.json", meta_ckpt["params"])):
            (root / rel).write_bytes(path.read_bytes())
            lines += [f"  {rel}:", f"    fetch: {{source: src, path: {rel}}}", f"    sha256: {sha256_file(root / rel)}"]
        lines += ["  out/model.safetensors:", "    build: {transform: torch_to_safetensors, inputs: {checkpoint: "
                  f"raw/consolidated.pth, params: raw/params.json}}, params: {{dtype: {dtype}, drop: [rope.freqs]}}}}"]
        (work / "storage.lock.yaml").write_text("\n".join(lines) + "\n")
        hide = "sys.modules['onnxruntime'] = None; " if without else ""
        code = f"import sys; {hide}from reconciler.cli import main; main()"
        res = subprocess.run([sys.executable, "-c", code, "--lock", str(work / "storage.lock.yaml"), "apply",
                              "--no-hf-cache"], capture_output=True, text=True, timeout=300, cwd=work)
        assert res.returncode == 0, res.stderr
        digests.append(sha256_file(root / "out" / "model.safetensors"))
        assert read_provenance(root, "out/model.safetensors")["info"]["cast_by"] == (
            ["torch"] if without else ["onnxruntime"])
    assert digests[0] == digests[1]


def _write(tmp_path, tensors: dict) -> dict:
    """write_verified of a torch checkpoint holding `tensors`, each to float16; returns its info."""
    from reconciler.models._streaming import write_verified
    from reconciler.models.tensorfile import open_tensor_file
    from reconciler.publish import commit, staged

    torch.save(tensors, tmp_path / "c.pth")
    final = tmp_path / "out.safetensors"
    with open_tensor_file(tmp_path / "c.pth") as tf, staged(final, where="t") as out:
        info = write_verified(out, {n: ("F16", tuple(t.shape)) for n, t in tensors.items()},
                              lambda n: (tf, tf[n]), "t")
        commit(out, final, where="t", expected_sha256=None)
    return info


def test_cast_by_names_the_engines_that_cast_the_stored_bytes(tmp_path):
    """One chunk holding a NaN is torch's; the read-back samples (some cast by onnxruntime) do not count."""
    nan_first = torch.randn(64, 64)
    nan_first[0, 0] = float("nan")  # in the first sample, not the middle one
    assert _write(tmp_path, {"w": nan_first})["cast_by"] == ["torch"]
    assert _write(tmp_path, {"w": torch.randn(64, 64)})["cast_by"] == ["onnxruntime"]
    both = _write(tmp_path, {"v": torch.randn(100), "w": nan_first})["cast_by"]
    assert both == ["onnxruntime", "torch"]


def test_a_conversion_leaves_torchs_thread_count_as_it_found_it(tmp_path):
    """torch casts at one thread while the pipeline runs (its workers would spin), and gives the count back
    after the read-back samples too, which torch may also cast."""
    t = torch.randn(64, 64)
    t[0, 0] = float("nan")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert "torch" in _write(tmp_path, {"w": t})["cast_by"]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_merging_bfloat16_shards_gives_torchs_cast(tmp_path, dtype):
    """The other source dtype real checkpoints ship in: bfloat16 safetensors shards, cast by onnxruntime."""
    from reconcile_testing.checkpoints import make_hf_shards
    from safetensors.torch import load_file

    from reconciler.models.convert import merge_shards
    from reconciler.publish import commit, staged

    hf = make_hf_shards(tmp_path / "hf", fmt="safetensors", n_shards=2, seed=5, dtype=torch.bfloat16)
    final = tmp_path / "merged.safetensors"
    with staged(final, where="t") as out:
        info = merge_shards({"index": hf["index"], "shards": hf["shards"]}, {"dtype": dtype}, out)
        commit(out, final, where="t", expected_sha256=None)
    assert "bfloat16" in info["source_dtypes"] and info["cast_by"] == ["onnxruntime"]
    source = {k: v for shard in hf["shards"] for k, v in load_file(shard).items()}
    merged = load_file(final)
    assert merged.keys() == source.keys()
    for name, t in merged.items():
        assert torch.equal(t.view(torch.uint8), source[name].to(getattr(torch, dtype)).view(torch.uint8)), name
