"""Big inputs under cluster limits: an address-space limit (`ulimit -v`) smaller than the file, a read-only
input owned by another user. Each case runs the real transforms in a child process that sets the limit
on itself after its imports, so the limit bounds exactly what the work adds.

The limit is the child's address space after importing torch and reconcile (~1 GB) plus HEADROOM, which
is smaller than every input file: a whole-file mapping (`torch.load(mmap=True)`, `safetensors.safe_open`)
cannot fit, and the control case proves it fails there.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from reconciler.apply import apply
from reconciler.errors import ResourceError
from reconciler.lockfile import load_lock
from reconciler.models.tensorfile import open_tensor_file
from reconciler.registry import TRANSFORMS, load_plugins
from tests.fixtures.engine import LOCK_HEAD, write_lock

HEADROOM = 256 << 20  # bytes of address space the work may add: < every input file below
# glibc reserves 64 MB of address space per thread that mallocs (its arenas); at a real 4 GB limit that
# is noise, at this scaled-down one it is not, so the child caps them (as cluster jobs commonly do).
CHILD_ENV = {**os.environ, "MALLOC_ARENA_MAX": "2"}

_CHILD = textwrap.dedent("""
    import json, resource, sys, traceback
    from pathlib import Path
    import torch
    from reconciler.errors import ReconcileError
    from reconciler.models.convert import merge_shards, torch_to_safetensors
    from reconciler.models.micro import micro_model
    from reconciler.models.tensorfile import open_tensor_file
    from reconciler.publish import commit, staged

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def run(fn, inputs, params, final):
        with staged(Path(final), where="t") as out:
            info = fn({k: [Path(p) for p in v] if isinstance(v, list) else Path(v) for k, v in inputs.items()},
                      params, out)
            commit(out, Path(final), where="t", expected_sha256=None)
        return info

    jobs, headroom = json.loads(sys.argv[1]), int(sys.argv[2])
    base = status("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (base + headroom, base + headroom))
    results = []
    for job in jobs:
        try:
            if job["op"] == "mmap":
                torch.load(job["path"], mmap=True, weights_only=True)
            elif job["op"] == "write-probe":  # the input really is out of this user's reach
                try:
                    open(job["path"], "r+b")
                    raise AssertionError(f"{job['path']} is writable")
                except PermissionError:
                    pass
            elif job["op"] == "read":
                with open_tensor_file(job["path"]) as tf:
                    tf.read(job["name"])
            else:
                fn = {"convert": torch_to_safetensors, "merge": merge_shards, "micro": micro_model}[job["op"]]
                run(fn, job["inputs"], job["params"], job["out"])
            results.append({"op": job["op"], "ok": True})
        except ReconcileError as e:
            results.append({"op": job["op"], "ok": False, "error": e.render(), "type": type(e).__name__})
        except Exception as e:
            results.append({"op": job["op"], "ok": False, "error": f"{type(e).__name__}: {e}",
                            "type": type(e).__name__, "trace": traceback.format_exc()[-1500:]})
    print(json.dumps({"base": base, "limit": base + headroom, "peak_vm": status("VmPeak"),
                      "peak_rss": status("VmHWM"), "results": results}))
""")

MICRO = {"arch": "mtp", "dim": 256, "n_layers": 4, "n_heads": 2, "vocab_size": 1000, "n_future_tokens": 4,
         "dtype": "float16", "init": "slice"}


def _child(jobs: list[dict], headroom: int = HEADROOM, user: int | None = None) -> dict:
    """Run the jobs in one child under the address-space limit (as `user`, via setpriv, when given)."""
    become = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    proc = subprocess.run([*become, sys.executable, "-c", _CHILD, json.dumps(jobs), str(headroom)],
                          capture_output=True, text=True, timeout=300, cwd="/", env=CHILD_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _single_shard_index(folder: Path, shard: Path, name: str) -> dict:
    """An HF index naming one shard (a hard link to `shard` under the HF file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = folder / name
    try:
        os.link(shard, linked)
    except OSError:
        shutil.copyfile(shard, linked)
    with open_tensor_file(linked) as tf:
        index = {"metadata": {"total_size": sum(e.nbytes for e in tf.entries)},
                 "weight_map": {e.name: name for e in tf.entries}}
    (folder / "index.json").write_text(json.dumps(index))
    return {"index": str(folder / "index.json"), "shards": [str(linked)]}


@pytest.fixture(scope="module")
def wide_meta(tmp_path_factory) -> dict:
    """A ~400 MB float32 Meta-layout checkpoint (largest tensor 32 MB): bigger than HEADROOM."""
    from reconcile_testing.checkpoints import make_large_meta_checkpoint

    return make_large_meta_checkpoint(tmp_path_factory.mktemp("wide-meta"), 400_000_000, dim=1024, vocab_size=8000,
                                      seed=4)


@pytest.mark.slow  # ~15 s: four conversions of a 400 MB checkpoint in two children (make test runs it)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status: Linux")
def test_convert_merge_and_slice_under_an_address_space_limit_smaller_than_the_files(wide_meta, tmp_path):
    ckpt = Path(wide_meta["checkpoint"])
    converted, f32 = tmp_path / "model.safetensors", tmp_path / "f32.safetensors"
    jobs = [
        {"op": "convert", "inputs": {"checkpoint": str(ckpt), "params": str(wide_meta["params"])},
         "params": {"dtype": "float16"}, "out": str(converted)},
        {"op": "merge", "inputs": _single_shard_index(tmp_path / "bin", ckpt, "pytorch_model-00001-of-00001.bin"),
         "params": {"dtype": "float32"}, "out": str(f32)},  # a float32 safetensors as big as the checkpoint
    ]
    got = _child(jobs)
    assert [r for r in got["results"] if not r["ok"]] == []
    assert got["peak_vm"] <= got["limit"]
    jobs = [
        {"op": "merge", "inputs": _single_shard_index(tmp_path / "st", f32, "model-00001-of-00001.safetensors"),
         "params": {"dtype": "float16"}, "out": str(tmp_path / "merged.safetensors")},
        {"op": "micro", "inputs": {"base": str(f32)}, "params": MICRO, "out": str(tmp_path / "micro.safetensors")},
    ]
    got = _child(jobs)
    assert [r for r in got["results"] if not r["ok"]] == []
    # the bound meant something: every input is bigger than all the address space the work could add
    assert min(ckpt.stat().st_size, f32.stat().st_size) > HEADROOM
    # the same tensors cast the same way, from the .bin/.pth and from the .safetensors route: the same bytes
    assert (tmp_path / "merged.safetensors").read_bytes() == converted.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS: Linux")
def test_whole_file_mappings_fail_under_the_same_limit(wide_meta):
    """Control: the limit really is below what mapping the input needs (the old readers fail here)."""
    got = _child([{"op": "mmap", "path": str(wide_meta["checkpoint"])}])
    assert got["results"][0]["ok"] is False and "Cannot allocate memory" in got["results"][0]["error"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS: Linux")
def test_a_tensor_bigger_than_the_limit_is_a_resource_error_naming_the_limit(tmp_path):
    import torch

    torch.save({"w": torch.zeros(20_000_000)}, tmp_path / "big.pt")  # one 80 MB tensor
    got = _child([{"op": "read", "path": str(tmp_path / "big.pt"), "name": "w"}], headroom=48 << 20)
    result = got["results"][0]
    assert result["ok"] is False and result["type"] == "ResourceError", result
    assert "cannot allocate 80,000,000 bytes for tensor w of big.pt" in result["error"]
    assert f"address-space limit (ulimit -v, RLIMIT_AS) is {got['limit']:,} bytes" in result["error"]
    assert "fix: raise the limit" in result["error"] and "re-download" not in result["error"]


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:117] "
                                     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 524288000 "
                                     "bytes. Error code 12 (Cannot allocate memory)"),
                                     OSError(errno.ENOMEM, "Cannot allocate memory")])
def test_apply_reports_a_transform_out_of_memory_as_a_resource_error(tmp_path, monkeypatch, failure):
    def fails(inputs, params, out):
        raise failure

    load_plugins()
    monkeypatch.setitem(TRANSFORMS, "write_json", dataclasses.replace(TRANSFORMS["write_json"], fn=fails))
    lock = write_lock(tmp_path / "p", LOCK_HEAD + "artifacts:\n  a.json:\n    build: {transform: write_json, "
                                                 "params: {data: 1}}\n")
    err = apply(load_lock(lock), tmp_path / "p" / "storage").failed["a.json"]
    assert isinstance(err, ResourceError), err
    assert "cannot allocate memory for transform write_json" in err.message and "re-download" not in err.render()
    assert "the input files are fine" in err.fix


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root (and setpriv) to give the input to another user and run the child as nobody")
def test_read_only_input_owned_by_another_user(meta_ckpt):
    nobody = 65534
    work = Path(tempfile.mkdtemp(prefix="reconcile-ro-"))
    try:
        work.chmod(0o755)
        src = work / "in"
        src.mkdir()
        for key in ("checkpoint", "params"):
            shutil.copyfile(meta_ckpt[key], src / meta_ckpt[key].name)
            (src / meta_ckpt[key].name).chmod(0o444)  # owned by root, read-only
        src.chmod(0o555)
        out = work / "out"
        out.mkdir()
        os.chown(out, nobody, nobody)
        jobs = [{"op": "write-probe", "path": str(src / "consolidated.pth")},
                {"op": "convert", "inputs": {"checkpoint": str(src / "consolidated.pth"),
                                             "params": str(src / "params.json")},
                 "params": {"dtype": "float16"}, "out": str(out / "model.safetensors")}]
        got = _child(jobs, headroom=1 << 30, user=nobody)
        assert got["results"] == [{"op": "write-probe", "ok": True}, {"op": "convert", "ok": True}]
        assert (out / "model.safetensors").stat().st_uid == nobody
        assert (src / "consolidated.pth").stat().st_uid == 0
    finally:
        shutil.rmtree(work)
