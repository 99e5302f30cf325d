"""`make bench-real`: the real-size run of the Meta 7B_1T_4 conversion (26.95 GB float32 -> 13.5 GB float16).

    python3 bench/bench_real.py [--workdir DIR] [--pairs N] [--keep] [--reuse] [--convert-only] [--table RESULTS]

Steps, each a child process measured with wait4 (wall, user/sys CPU, peak RSS, bytes read from
storage = ru_inblock x 512, i.e. what missed the page cache):

1. generate the checkpoint with the real layout (params.json from ../shared/upstream when present,
   else the same numbers inline; random N(0, 0.02) weights; memory bounded by the largest tensor);
2. hash it once and record the hash in the root's stat cache, as `apply` does while downloading;
3. N alternating pairs (default 5) of the floor (read the input once with `dd`, then write as many
   bytes as the output with an fsync) and of ours (`reconcile apply` of torch_to_safetensors under
   `ulimit -v 4194304`); the input's cached pages are dropped (posix_fadvise DONTNEED) before each;
4. `reconcile apply` of the micro model sliced from the fp16 file, under the same limit;
5. every converted tensor compared with its source cast to float16 (tensor by tensor);
6. `reconcile lock` (pins the outputs), then `reconcile check --deep` of everything, under the same limit.

Needs ~41.5 GB free under the work dir (checked first; 45 GB recommended). Big files are deleted at the end unless --keep.
Results: bench-out/real/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AS_LIMIT = 4194304 * 1024  # `ulimit -v 4194304` (KiB): 4 GiB of address space
NEED_DISK = 41.5e9  # checkpoint 26.95 GB + fp16 output 13.48 GB + micro 0.09 GB, and 1 GB to spare
PARAMS_CANDIDATES = [REPO.parent / "shared/upstream/multi-token-prediction/7B_1T_4/params.json",
                     Path("/work/shared/upstream/multi-token-prediction/7B_1T_4/params.json")]
# FORMATS.md: the real 7B_1T_4/params.json (sha256 da72c269...), used when the file is not here.
PARAMS = {"dim": 4096, "ffn_dim_multiplier": 1.0, "multiple_of": 256, "n_future_tokens": 4, "n_heads": 32,
          "n_kv_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 10000.0, "vocab_size": 32000}
MICRO = {"arch": "mtp", "dim": 512, "n_layers": 4, "n_heads": 8, "vocab_size": 32000, "n_future_tokens": 4,
         "dtype": "float16", "init": "slice", "seed": 0}  # the WMTP lock's micro-mtp spec
CKPT, PARAMS_REL = "raw/7B_1T_4/consolidated.pth", "raw/7B_1T_4/params.json"
OUT, MICRO_OUT = "safetensors/model.safetensors", "micro/model.safetensors"


def measure(cmd: list[str], *, limit_as: bool = False, cwd: Path | None = None) -> dict:
    """Run a child to the end; its wall time and its own rusage (CPU, peak RSS, storage bytes read/written)."""
    import tempfile

    def limit() -> None:  # in the child, before exec: what `ulimit -v 4194304` does
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, preexec_fn=limit if limit_as else None)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{text[-2000:]}\n{errors[-3000:]}")
    return {"wall_s": round(wall, 2), "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2),
            "peak_rss_bytes": ru.ru_maxrss * 1024, "read_bytes": ru.ru_inblock * 512,
            "written_bytes": ru.ru_oublock * 512, "stdout": text[-4000:], "stderr": errors[-2000:]}


def drop_cache(*paths: Path) -> None:
    """Drop these files' clean cached pages (other processes' cache is untouched)."""
    for p in paths:
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def params_bytes() -> tuple[bytes, str]:
    for p in PARAMS_CANDIDATES:
        if p.is_file():
            return p.read_bytes(), str(p)
    return json.dumps(PARAMS, indent=4, sort_keys=True).encode(), "inline (FORMATS.md numbers)"


def lock_text(ckpt_sha: str, ckpt_size: int, params_sha: str, params_size: int, micro: bool) -> str:
    text = f"""version: 1
storage_version: "1"
root: storage
sources:
  meta: {{repo: facebook/multi-token-prediction, type: model, revision: "{'0' * 40}"}}
artifacts:
  {CKPT}:
    fetch: {{source: meta, path: 7B_1T_4/consolidated.pth}}
    sha256: {ckpt_sha}
    size: {ckpt_size}
  {PARAMS_REL}:
    fetch: {{source: meta, path: 7B_1T_4/params.json}}
    sha256: {params_sha}
    size: {params_size}
  {OUT}:
    build: {{transform: torch_to_safetensors, inputs: {{checkpoint: {CKPT}, params: {PARAMS_REL}}}, params: {{dtype: float16, drop: [rope.freqs]}}}}
    checks:
      - dtype: {{dtype: float16}}
      - tensors: {{config: {PARAMS_REL}}}
"""
    if micro:
        text += f"""  {MICRO_OUT}:
    build: {{transform: micro_model, inputs: {{base: {OUT}}}, params: {json.dumps(MICRO)}}}
    checks:
      - dtype: {{dtype: float16}}
"""
    return text


GEN = """
import json, sys
from pathlib import Path
from reconcile_testing.checkpoints import make_meta_checkpoint
out = make_meta_checkpoint(Path(sys.argv[1]), json.loads(sys.argv[2]), seed=0)
Path(sys.argv[3]).write_bytes(Path(sys.argv[4]).read_bytes())  # the real params.json bytes
"""

HASH = """
import sys
from pathlib import Path
from reconciler.hashing import sha256_file
from reconciler.state import StatCache
root, rel = Path(sys.argv[1]), sys.argv[2]
sha = sha256_file(root / rel)
cache = StatCache(root)
cache.remember_file(rel, root / rel, sha)  # what apply records after a download hashed while writing
cache.flush()
print(sha)
"""

WRITE_FLOOR = """
import os, sys
n, path = int(sys.argv[1]), sys.argv[2]
block = os.urandom(64 << 20)
with open(path, "wb", buffering=0) as f:
    left = n
    while left:
        left -= f.write(memoryview(block)[:min(left, len(block))])
    os.fsync(f.fileno())
"""

COMPARE = """
import json, sys, torch
from reconciler.models.tensorfile import open_tensor_file
torch.set_num_threads(2)
n = bad = 0
with open_tensor_file(sys.argv[1]) as src, open_tensor_file(sys.argv[2]) as out:
    assert sorted(out.names) == sorted(k for k in src.names if k != "rope.freqs"), "key sets differ"
    for name in out.names:
        a, b = src.read(name).to(torch.float16), out.read(name)
        n += 1
        bad += 0 if (a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))) else 1
print(json.dumps({"tensors": n, "differ": bad}))
"""


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "real")
    ap.add_argument("--pairs", type=int, default=5)  # the bench method: at least 5 alternating pairs
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="reuse a checkpoint a --keep run left (skips generate + hash)")
    ap.add_argument("--convert-only", action="store_true", help="stop after the pairs (no micro, compare, check)")
    ap.add_argument("--smoke", action="store_true", help="a ~240 MB checkpoint (dim 512, 8 layers): tries the script")
    ap.add_argument("--table", type=Path, help="print the table of a results.json and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    if args.smoke:
        global NEED_DISK, params_bytes
        NEED_DISK = 2e9
        params_bytes = lambda: (json.dumps({**PARAMS, "dim": 512, "n_heads": 8, "n_kv_heads": 8, "n_layers": 8},  # noqa: E731
                                           indent=4, sort_keys=True).encode(), "smoke")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    # what a kept run left counts as free: it is reused (the checkpoint) or replaced (the outputs)
    free += sum(p.stat().st_size for p in (work / "storage" / CKPT, work / "storage" / OUT, work / "storage" / MICRO_OUT)
                if p.exists() and (args.reuse or p.name != "consolidated.pth"))
    print(f"free disk under {work}: {free / 1e9:.1f} GB (need ~{NEED_DISK / 1e9:.0f} GB)", flush=True)
    if free < NEED_DISK:
        print("not enough free disk: free some space or pass --workdir on a bigger disk", file=sys.stderr)
        return 1
    py, cli = sys.executable, str(Path(sys.executable).with_name("reconcile"))
    root = work / "storage"
    try:
        results = run(work, root, py, cli, args.pairs, args.convert_only, args.reuse)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            (work / "floor.bin").unlink(missing_ok=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results) if "check_deep" in results else json.dumps(results["pairs"], indent=1, default=str))
    return 0


def run(work: Path, root: Path, py: str, cli: str, pairs: int, convert_only: bool = False,
        reuse: bool = False) -> dict:
    res: dict = {"machine": machine(), "load_before": os.getloadavg()}
    pbytes, res["params_from"] = params_bytes()
    ckpt, params = root / CKPT, root / PARAMS_REL
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    (work / "params.json").write_bytes(pbytes)
    kept = work / "checkpoint.sha256"  # written once the checkpoint is generated and hashed
    if reuse and ckpt.exists() and kept.exists() and params.read_bytes() == pbytes:
        step("reuse the checkpoint a --keep run left")
        sha = kept.read_text().strip()
        res["reused_checkpoint"] = True
    else:
        kept.unlink(missing_ok=True)
        step("generate the checkpoint")
        res["generate"] = measure([py, "-c", GEN, str(ckpt.parent), pbytes.decode(), str(params),
                                   str(work / "params.json")])
        drop_cache(ckpt)
        step("hash it once (what a download does)")
        res["hash_input"] = measure([py, "-c", HASH, str(root), CKPT])
        sha = res["hash_input"]["stdout"].strip()
        kept.write_text(sha + "\n")
    res["checkpoint_bytes"] = ckpt.stat().st_size
    psha = hashlib.sha256(pbytes).hexdigest()
    (work / "convert.lock.yaml").write_text(lock_text(sha, ckpt.stat().st_size, psha, len(pbytes), micro=False))
    (work / "micro.lock.yaml").write_text(lock_text(sha, ckpt.stat().st_size, psha, len(pbytes), micro=True))
    out, floor_out = root / OUT, work / "floor.bin"
    apply = [cli, "--lock", str(work / "convert.lock.yaml"), "apply", "--no-hf-cache"]
    res["pairs"] = []
    out_size = None
    for i in range(pairs):
        out.unlink(missing_ok=True)  # never the output and the floor's file at once: disk peak = input + output
        drop_cache(ckpt)
        step(f"pair {i + 1}: floor (read input with dd, write output-size bytes + fsync)")
        read = measure(["dd", f"if={ckpt}", "of=/dev/null", "bs=16M"])
        write = measure([py, "-c", WRITE_FLOOR, str(out_size or res["checkpoint_bytes"] // 2), str(floor_out)])
        floor_out.unlink()
        drop_cache(ckpt)
        out.unlink(missing_ok=True)
        os.sync()
        step(f"pair {i + 1}: reconcile apply (torch_to_safetensors) under ulimit -v 4194304")
        ours = measure(apply, limit_as=True, cwd=work)
        out_size = out.stat().st_size
        res["pairs"].append({"floor_read": read, "floor_write": write, "convert": ours,
                             "floor_s": round(read["wall_s"] + write["wall_s"], 2)})
        print(f"   floor {read['wall_s']} + {write['wall_s']} s, ours {ours['wall_s']} s "
              f"(read {ours['read_bytes'] / 1e9:.1f} GB, user {ours['user_s']} s)", flush=True)
    res["out_bytes"] = out_size
    res["load_after"] = os.getloadavg()
    if convert_only:
        return res
    (root / MICRO_OUT).unlink(missing_ok=True)  # a kept run's micro model would make this step "Nothing to do"
    step("reconcile apply of the micro model (sliced from the fp16 file) under the same limit")
    res["micro"] = measure([cli, "--lock", str(work / "micro.lock.yaml"), "apply", "--no-hf-cache"], limit_as=True,
                          cwd=work)
    res["micro_bytes"] = (root / MICRO_OUT).stat().st_size
    step("compare every converted tensor with its source cast to float16")
    res["compare"] = measure([py, "-c", COMPARE, str(ckpt), str(out)])
    res["compare"]["result"] = json.loads(res["compare"]["stdout"].strip().splitlines()[-1])
    measure([cli, "--lock", str(work / "micro.lock.yaml"), "lock"], cwd=work)  # pin the outputs: check gates on pins
    drop_cache(ckpt, out)
    step("reconcile check --deep under the same limit")
    res["check_deep"] = measure([cli, "--lock", str(work / "micro.lock.yaml"), "check", "--deep"], limit_as=True,
                               cwd=work)
    res["load_after"] = os.getloadavg()
    return res


def step(text: str) -> None:
    print(f"-- {time.strftime('%H:%M:%S')} {text} (load {os.getloadavg()[0]:.1f})", flush=True)


def machine() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _util import machine as describe
    return describe()


def table(r: dict) -> str:
    """The README rows."""
    conv = [p["convert"] for p in r["pairs"]]
    walls = [c["wall_s"] for c in conv]
    floors = [p["floor_s"] for p in r["pairs"]]
    ratios = [c["wall_s"] / p["floor_s"] for c, p in zip(conv, r["pairs"])]
    med = statistics.median
    rows = ["| step | wall | user CPU | peak RSS | bytes read from disk | note |", "|---|---|---|---|---|---|"]
    if "generate" in r:  # a --reuse run did not generate or hash the checkpoint
        rows += [
            f"| generate {r['checkpoint_bytes']:,} B checkpoint | {r['generate']['wall_s']} s | "
            f"{r['generate']['user_s']} s | {r['generate']['peak_rss_bytes'] / 1e9:.2f} GB | - | random N(0, 0.02), "
            "real layout; RSS counts its file-backed scratch pages |",
            f"| hash the input once | {r['hash_input']['wall_s']} s | {r['hash_input']['user_s']} s | - | "
            f"{r['hash_input']['read_bytes'] / 1e9:.1f} GB | what a download does while writing |",
        ]
    else:
        rows.append(f"| checkpoint {r['checkpoint_bytes']:,} B, kept from an earlier run (`--reuse`) | - | - | - | - | |")
    for i, (c, p) in enumerate(zip(conv, r["pairs"]), 1):
        rows.append(f"| convert (apply, ulimit -v 4194304), run {i} | {c['wall_s']} s | {c['user_s']} s | "
                    f"{c['peak_rss_bytes'] / 1e9:.2f} GB | {c['read_bytes'] / 1e9:.1f} GB | floor {p['floor_s']} s "
                    f"(read {p['floor_read']['wall_s']} + write+fsync {p['floor_write']['wall_s']}): "
                    f"{c['wall_s'] / p['floor_s']:.2f}x |")
    rows += [
        f"| micro_model from the fp16 file (ulimit -v) | {r['micro']['wall_s']} s | {r['micro']['user_s']} s | - | "
        f"{r['micro']['read_bytes'] / 1e9:.2f} GB | {r['micro_bytes']:,} B |",
        f"| every tensor == source cast to fp16 | {r['compare']['wall_s']} s | - | - | - | "
        f"{r['compare']['result']['tensors']} tensors, {r['compare']['result']['differ']} differ |",
        f"| check --deep (ulimit -v) | {r['check_deep']['wall_s']} s | {r['check_deep']['user_s']} s | - | "
        f"{r['check_deep']['read_bytes'] / 1e9:.1f} GB | |",
        "",
        f"conversion: median {med(walls)} s vs floor median {med(floors)} s -> ratio median {med(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); output {r['out_bytes']:,} B; load average before "
        f"{r['load_before'][0]:.1f}, after {r['load_after'][0]:.1f}",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
