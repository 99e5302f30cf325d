"""Checkpoint conversion transforms (Meta .pth, HF shards) and the tensor checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from reconcile_testing.checkpoints import make_meta_checkpoint
from safetensors.torch import load_file, save_file

from reconciler.errors import CheckFailed, TransformError
from reconciler.models.checkpoint_layout import hf_llama_shapes, meta_shapes, n_params
from reconciler.models.convert import merge_shards, torch_to_safetensors
from reconciler.models.safetensors_io import content_digest, describe_change, read_header
from reconciler.models.tensor_checks import dtype as dtype_check
from reconciler.models.tensor_checks import tensors as tensors_check
from reconciler.registry import TRANSFORMS, CheckContext
from tests.conftest import UPSTREAM
from tests.fixtures.checkpoints import run_transform

INV_FREQ = ["*.rotary_emb.inv_freq"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ctx(path: Path) -> CheckContext:
    return CheckContext(root=path.parent, deep=False, artifact=path.name, lock=None)


def _resaved(meta_ckpt, tmp_path: Path, edit) -> dict:
    """A copy of the Meta fixture whose state dict went through `edit(state)`."""
    state = torch.load(meta_ckpt["checkpoint"], weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "consolidated.pth")
    return {"checkpoint": tmp_path / "consolidated.pth", "params": meta_ckpt["params"]}


def test_transforms_are_registered():
    assert dict(TRANSFORMS["torch_to_safetensors"].inputs) == {"checkpoint": "file", "params": "file"}
    assert dict(TRANSFORMS["merge_shards"].inputs) == {"index": "file", "shards": "list"}


def test_meta_conversion_keys_dtype_and_values(meta_ckpt, meta_converted):
    path, info = meta_converted
    params = json.loads(meta_ckpt["params"].read_text())
    infos, metadata = read_header(path)
    assert set(infos) == set(meta_shapes(params))  # rope.freqs left out
    assert {i.dtype for i in infos.values()} == {"F16"} and metadata == {"format": "pt"}
    src = torch.load(meta_ckpt["checkpoint"], weights_only=True)
    out = load_file(path)
    for name, t in out.items():
        assert torch.equal(t, src[name].to(torch.float16)), name
    assert info["dropped"] == ["rope.freqs"] and info["n_tensors"] == len(infos)
    assert info["n_params"] == n_params(meta_shapes(params))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_meta_conversion_other_dtypes(meta_ckpt, tmp_path, dtype):
    final = tmp_path / "m.safetensors"
    run_transform(torch_to_safetensors, dict(meta_ckpt), {"dtype": dtype, "drop": ["extra_heads.*"]}, final)
    src = torch.load(meta_ckpt["checkpoint"], weights_only=True)
    out = load_file(final)
    assert not any(k.startswith("extra_heads.") for k in out)
    for name, t in out.items():
        assert torch.equal(t, src[name].to(getattr(torch, dtype))), name


def test_two_builds_are_byte_identical(meta_ckpt, meta_converted, hf_bin, tmp_path):
    again = tmp_path / "again.safetensors"
    run_transform(torch_to_safetensors, dict(meta_ckpt), {}, again)
    assert _sha(again) == _sha(meta_converted[0])
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for final in (a, b):
        run_transform(merge_shards, {"index": hf_bin["index"], "shards": hf_bin["shards"]}, {"drop": INV_FREQ}, final)
    assert _sha(a) == _sha(b)


def test_generated_checkpoints_are_deterministic_and_mmap_loadable(meta_ckpt, tmp_path):
    again = make_meta_checkpoint(tmp_path / "same", rope_freqs=True, seed=1)
    other = make_meta_checkpoint(tmp_path / "other", rope_freqs=True, seed=2)
    assert _sha(again["checkpoint"]) == _sha(meta_ckpt["checkpoint"]) != _sha(other["checkpoint"])
    assert again["params"].read_bytes() == meta_ckpt["params"].read_bytes()
    state = torch.load(again["checkpoint"], mmap=True, weights_only=True, map_location="cpu")
    assert all(t.data_ptr() % 64 == 0 for t in state.values())  # records aligned like torch.save's


def test_missing_key_is_named(meta_ckpt, tmp_path):
    inputs = _resaved(meta_ckpt, tmp_path, lambda s: s.pop("layers.1.feed_forward.w3.weight"))
    with pytest.raises(TransformError, match="missing tensor layers.1.feed_forward.w3.weight"):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_wrong_shape_and_unexpected_key_are_named(meta_ckpt, tmp_path):
    def edit(s):
        s["extra_heads.2.attention.wk.weight"] = torch.zeros(32, 64)
        s["lm_head.weight"] = torch.zeros(1)

    inputs = _resaved(meta_ckpt, tmp_path, edit)
    with pytest.raises(TransformError, match=r"tensor extra_heads.2.attention.wk.weight has shape \[32, 64\], "
                                             r"expected \[64, 64\] \(and 1 more problems\)"):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")
    inputs = _resaved(meta_ckpt, tmp_path, lambda s: s.update({"lm_head.weight": torch.zeros(1)}))
    with pytest.raises(TransformError, match="unexpected tensor lm_head.weight"):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")
    # listed in drop, the extra key is accepted and left out
    run_transform(torch_to_safetensors, inputs, {"drop": ["lm_head.weight"]}, tmp_path / "o.safetensors")
    assert "lm_head.weight" not in read_header(tmp_path / "o.safetensors")[0]


def test_params_json_that_disagrees_names_the_tensor(meta_ckpt, tmp_path):
    params = json.loads(meta_ckpt["params"].read_text())
    (tmp_path / "params.json").write_text(json.dumps({**params, "vocab_size": 1000}))
    inputs = {"checkpoint": meta_ckpt["checkpoint"], "params": tmp_path / "params.json"}
    with pytest.raises(TransformError, match=r"output.weight has shape \[512, 64\], expected \[1000, 64\]"):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")


class _Evil:
    """Unpickling this runs a shell command: what a weights-only loader must refuse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_fails_safely(meta_ckpt, tmp_path, zip_format):
    marker = tmp_path / "pwned"
    torch.save({"tok_embeddings.weight": _Evil(marker)}, tmp_path / "consolidated.pth",
               _use_new_zipfile_serialization=zip_format)
    inputs = {"checkpoint": tmp_path / "consolidated.pth", "params": meta_ckpt["params"]}
    with pytest.raises(TransformError):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")
    assert not marker.exists()


def test_changed_tensor_value_is_named(meta_ckpt, meta_converted, tmp_path):
    def edit(s):
        s["layers.2.attention.wv.weight"][5, 7] += 0.5

    run_transform(torch_to_safetensors, _resaved(meta_ckpt, tmp_path, edit), {}, tmp_path / "o.safetensors")
    assert content_digest(tmp_path / "o.safetensors") != content_digest(meta_converted[0])
    assert describe_change(meta_converted[0], tmp_path / "o.safetensors") == \
        ["tensor layers.2.attention.wv.weight: values differ in 1 of 4096 elements"]


def test_float16_overflow_fails_naming_the_tensor(meta_ckpt, tmp_path):
    inputs = _resaved(meta_ckpt, tmp_path, lambda s: s["norm.weight"].__setitem__(0, 1e6))
    with pytest.raises(TransformError, match="tensor norm.weight: 1 finite values overflow F16"):
        run_transform(torch_to_safetensors, inputs, {}, tmp_path / "o.safetensors")


@pytest.mark.parametrize("fixture", ["hf_bin", "hf_safetensors"])
def test_merge_shards_values_and_drop(request, fixture, tmp_path):
    hf = request.getfixturevalue(fixture)
    final = tmp_path / "model.safetensors"
    info = run_transform(merge_shards, {"index": hf["index"], "shards": hf["shards"]}, {"drop": INV_FREQ}, final)
    config = json.loads(hf["config"].read_text())
    out = load_file(final)
    assert set(out) == set(hf_llama_shapes(config)) and info["n_shards"] == len(hf["shards"])
    assert len(info["dropped"]) == config["num_hidden_layers"]
    src = {}
    for shard in hf["shards"]:
        src.update(torch.load(shard, weights_only=True) if shard.suffix == ".bin" else load_file(shard))
    for name, t in out.items():
        assert t.dtype == torch.float16 and torch.equal(t, src[name].half()), name


def test_bin_and_safetensors_shards_merge_to_the_same_bytes(hf_bin, hf_safetensors, tmp_path):
    for hf, final in ((hf_bin, tmp_path / "a.safetensors"), (hf_safetensors, tmp_path / "b.safetensors")):
        run_transform(merge_shards, {"index": hf["index"], "shards": hf["shards"]}, {}, final)
    assert _sha(tmp_path / "a.safetensors") == _sha(tmp_path / "b.safetensors")


def _bad_index(hf, tmp_path: Path, edit) -> dict:
    idx = json.loads(hf["index"].read_text())
    edit(idx)
    (tmp_path / hf["index"].name).write_text(json.dumps(idx))
    return {"index": tmp_path / hf["index"].name, "shards": hf["shards"]}


@pytest.mark.parametrize("edit, message", [
    (lambda i: i["weight_map"].update({"lm_head.weight": "pytorch_model-00001-of-00002.bin"}),
     "tensor lm_head.weight is in pytorch_model-00002-of-00002.bin but the index says pytorch_model-00001"),
    (lambda i: i["weight_map"].pop("model.norm.weight"),
     "shard pytorch_model-00002-of-00002.bin holds tensor model.norm.weight, which the index does not list"),
    (lambda i: i["weight_map"].update({"model.layers.9.mlp.up_proj.weight": "pytorch_model-00001-of-00002.bin"}),
     "tensor model.layers.9.mlp.up_proj.weight is listed in the index .* but that shard does not hold it"),
    (lambda i: i["metadata"].update({"total_size": i["metadata"]["total_size"] - 256}),
     "total_size is .* but the shards' tensors hold"),
    (lambda i: i["weight_map"].update({"lm_head.weight": "pytorch_model-00003-of-00003.bin"}),
     "the index names shard pytorch_model-00003-of-00003.bin, which is not among the inputs"),
])
def test_index_that_disagrees_with_shards_fails(hf_bin, tmp_path, edit, message):
    with pytest.raises(TransformError, match=message):
        run_transform(merge_shards, _bad_index(hf_bin, tmp_path, edit), {}, tmp_path / "o.safetensors")


def test_missing_input_shard_fails(hf_bin, tmp_path):
    inputs = {"index": hf_bin["index"], "shards": hf_bin["shards"][:1]}
    with pytest.raises(TransformError, match="pytorch_model-00002-of-00002.bin, which is not among the inputs"):
        run_transform(merge_shards, inputs, {}, tmp_path / "o.safetensors")


def test_dtype_check(meta_converted, tmp_path):
    assert "all F16" in dtype_check(meta_converted[0], {"dtype": "float16"}, _ctx(meta_converted[0]))
    mixed = {k: v for k, v in load_file(meta_converted[0]).items()}
    mixed["layers.0.ffn_norm.weight"] = mixed["layers.0.ffn_norm.weight"].float()
    save_file(mixed, tmp_path / "m.safetensors")
    with pytest.raises(CheckFailed, match="tensor layers.0.ffn_norm.weight has dtype F32, expected F16"):
        dtype_check(tmp_path / "m.safetensors", {"dtype": "float16"}, _ctx(tmp_path / "m.safetensors"))


def test_tensors_check_meta_and_hf(meta_ckpt, meta_converted, hf_bin, tmp_path):
    (tmp_path / "params.json").write_bytes(meta_ckpt["params"].read_bytes())
    (tmp_path / "config.json").write_bytes(hf_bin["config"].read_bytes())
    model = tmp_path / "model.safetensors"
    model.write_bytes(meta_converted[0].read_bytes())
    assert tensors_check(model, {"config": "params.json"}, _ctx(model))
    with pytest.raises(CheckFailed, match="unexpected tensor extra_heads.0.attention.wk.weight .* more problems"):
        tensors_check(model, {"config": "config.json"}, _ctx(model))
    run_transform(merge_shards, {"index": hf_bin["index"], "shards": hf_bin["shards"]}, {"drop": INV_FREQ}, model)
    assert tensors_check(model, {"config": "config.json"}, _ctx(model))
    smaller = load_file(model)
    del smaller["model.norm.weight"]
    save_file(smaller, tmp_path / "less.safetensors")
    with pytest.raises(CheckFailed, match="missing tensor model.norm.weight"):
        tensors_check(tmp_path / "less.safetensors", {"config": "config.json"}, _ctx(tmp_path / "less.safetensors"))
    model.write_bytes(model.read_bytes()[:-10])  # truncated: a clear message, not a traceback
    with pytest.raises(CheckFailed, match="not a valid safetensors file"):
        tensors_check(model, {"config": "config.json"}, _ctx(model))


_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from reconciler.models.convert import torch_to_safetensors
    from reconciler.publish import staged, commit
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ckpt, params, final = map(Path, sys.argv[1:4])
    with staged(final, where="t") as out:
        torch_to_safetensors({"checkpoint": ckpt, "params": params}, {"dtype": "float16"}, out)
        commit(out, final, where="t", expected_sha256=None)
    print(json.dumps({"before_kb": before, "after_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB and madvise: Linux")
def test_conversion_memory_is_bounded_by_a_tensor_not_the_file(big_meta, tmp_path):
    final = tmp_path / "model.safetensors"
    proc = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(big_meta["checkpoint"]),
                           str(big_meta["params"]), str(final)], capture_output=True, text=True, check=True)
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = (rss["after_kb"] - rss["before_kb"]) * 1024
    assert final.stat().st_size > big_meta["size"] * 0.45  # it really converted the whole model
    # a whole-model load alone would grow RSS by the file size (~270 MB); streaming stays near
    # the largest tensor (32 MB of mmap pages plus its float16 copy and slices)
    assert growth < big_meta["size"] / 2, f"peak RSS grew {growth / 1e6:.0f} MB for a {big_meta['size'] / 1e6:.0f} MB file"


@pytest.mark.upstream
def test_real_layouts_match_upstream_files():
    params_path = UPSTREAM / "multi-token-prediction" / "7B_1T_4" / "params.json"
    index_path = UPSTREAM / "Sheared-LLaMA-2.7B" / "pytorch_model.bin.index.json"
    if not (params_path.exists() and index_path.exists()):
        pytest.skip("../shared/upstream is absent")
    shapes = meta_shapes(json.loads(params_path.read_text()))
    assert len(shapes) == 291 and n_params(shapes) == 6_738_415_616
    assert shapes["layers.28.feed_forward.w1.weight"] == (11008, 4096)
    assert "extra_heads.2.ffn_norm.weight" in shapes and "layers.29.ffn_norm.weight" not in shapes
    index = json.loads(index_path.read_text())
    config = json.loads((UPSTREAM / "Sheared-LLaMA-2.7B" / "config.json").read_text())
    hf = hf_llama_shapes(config, inv_freq=True)
    assert set(hf) == set(index["weight_map"]) and len(hf) == 323
    # total_size counts the float32 inv_freq buffers too (32 layers x 64 x 4 bytes)
    assert n_params(hf) * 4 == index["metadata"]["total_size"] == 10_806_249_472
    assert sum(1 for v in index["weight_map"].values() if v.startswith("pytorch_model-00002")) == 17


@pytest.mark.parametrize("case", ["meta", "bin", "safetensors", "micro"])
def test_the_manifest_computed_while_writing_equals_a_reread(case, meta_ckpt, meta_converted, hf_bin, hf_safetensors,
                                                             tmp_path):
    from reconciler.models.micro import micro_model
    from reconciler.models.safetensors_io import tensor_manifest
    from reconciler.publish import commit, staged

    hf = {"bin": hf_bin, "safetensors": hf_safetensors}.get(case)
    fn, inputs, params = {
        "meta": (torch_to_safetensors, dict(meta_ckpt), {"dtype": "bfloat16"}),
        "micro": (micro_model, {"base": meta_converted[0]},
                  {"arch": "mtp", "dim": 32, "n_layers": 5, "n_heads": 2, "vocab_size": 100, "n_future_tokens": 4,
                   "multiple_of": 32, "dtype": "float16", "init": "slice"}),
    }.get(case) or (merge_shards, {"index": hf["index"], "shards": hf["shards"]}, {"drop": INV_FREQ})
    final = tmp_path / "out.safetensors"
    with staged(final, where="t") as out:
        fn(inputs, params, out)
        commit(out, final, where="t", expected_sha256=None)
    assert out.tensors == tensor_manifest(final)
    assert list(out.tensors) == sorted(out.tensors)


def test_a_write_error_in_the_pipeline_surfaces_and_stops_its_threads(big_meta):
    """ENOSPC on the writer thread reaches the caller (staged turns it into a ResourceError); no thread is left."""
    import errno
    import threading

    from reconciler.models.castwrite import CastWriter
    from reconciler.models.chunkcast import Caster
    from reconciler.models.tensorfile import open_tensor_file

    class FillsUp:
        def __init__(self):
            self.n = 0

        def write(self, data):
            self.n += memoryview(data).nbytes
            if self.n > 20 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return memoryview(data).nbytes

    before = threading.active_count()
    with open_tensor_file(big_meta["checkpoint"]) as tf:
        specs = {e.name: ("F16", e.shape) for e in tf.entries}
        with pytest.raises(OSError) as e:
            CastWriter(FillsUp(), specs, lambda name: (tf, tf[name]), "t", Caster()).run()
    assert e.value.errno == errno.ENOSPC
    assert threading.active_count() == before
