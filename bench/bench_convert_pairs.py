"""Conversion at disk pace: `reconcile apply` of a conversion vs `cp && sync`, in alternating pairs.

Whole processes, start-up included, as a user runs them: a storage root whose lock pins the float32
inputs (hard links to the generated files; their hashes already in the stat cache after a warm-up
apply) and builds one float16 `model.safetensors`. Ours: remove the output, `reconcile apply`, then
`sync FILE` of the output. Baseline: `cp` of the input(s) and `sync` of the copies. Page cache warm
for both (inputs read once before anything is timed); `os.sync()` before each run so no write-back
is pending. A warm-up of each, then PAIRS alternating pairs (A B A B ...); median and min-max.
Two rows: `torch_to_safetensors` of a Meta checkpoint, `merge_shards` of HF `.bin` shards.

    python3 bench/bench_convert_pairs.py [--quick] [--pairs N] [--code DIR]   (standalone; DIR: another
                                                                              checkout's reconciler, for before/after)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _util import Row, python, run_child, run_cmd, verdict, warm

GOAL = 1.2
PAIRS = 5


def _sha(path: Path) -> str:
    from reconciler.hashing import sha256_file
    return sha256_file(path)


def project(work: Path, inputs: dict[str, Path], build: str) -> Path:
    """A storage root whose lock pins `inputs` (rel path -> file, hard-linked in) and builds `out/model.safetensors`."""
    root = work / "storage"
    lines = ["version: 1", 'storage_version: "1"', "root: storage", "sources:",
             f'  src: {{repo: bench/src, type: model, revision: "{"0" * 40}"}}', "artifacts:"]
    for rel, path in inputs.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(path, dst)
        lines += [f"  {rel}:", f"    fetch: {{source: src, path: {rel}}}", f"    sha256: {_sha(dst)}",
                  f"    size: {dst.stat().st_size}"]
    lines += ["  out/model.safetensors:", f"    build: {build}"]
    lock = work / "storage.lock.yaml"
    lock.write_text("\n".join(lines) + "\n")
    return lock


def _apply_once(lock: Path, out: Path, env: dict) -> dict:
    out.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    res = run_child([str(Path(python()).with_name("reconcile")), "--lock", str(lock), "apply", "--no-hf-cache"],
                    env=env)
    if res.returncode != 0:
        raise RuntimeError(f"apply exited {res.returncode}: {res.stderr[-800:]}")
    run_cmd(["sync", str(out)])
    return {"wall_s": time.perf_counter() - t0, "apply_s": res.seconds}


def _cp_once(srcs: list[Path], dst_dir: Path) -> float:
    dsts = [dst_dir / f"copy-{i}" for i in range(len(srcs))]
    for d in dsts:
        d.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    for s, d in zip(srcs, dsts):
        run_cmd(["cp", str(s), str(d)])
    run_cmd(["sync", *map(str, dsts)])
    seconds = time.perf_counter() - t0
    for d in dsts:
        d.unlink()
    return seconds


def pairs(lock: Path, srcs: list[Path], work: Path, n: int, env: dict) -> dict:
    """Warm-up of each, then n alternating (ours, cp && sync) pairs."""
    out = lock.parent / "storage" / "out" / "model.safetensors"
    warm(srcs)
    _apply_once(lock, out, env)  # warm-up: hashes the inputs into the stat cache, imports hot
    _cp_once(srcs, work)
    ours, base = [], []
    for _ in range(n):
        ours.append(_apply_once(lock, out, env))
        base.append(_cp_once(srcs, work))
    ratios = [o["wall_s"] / b for o, b in zip(ours, base)]
    return {"ours_s": [round(o["wall_s"], 3) for o in ours], "cp_sync_s": [round(b, 3) for b in base],
            "ratios": [round(r, 3) for r in ratios],
            "out_bytes": out.stat().st_size, "in_bytes": sum(s.stat().st_size for s in srcs),
            "load": os.getloadavg()}


def _row(label: str, figure: str, r: dict) -> Row:
    med = statistics.median
    ratio = med(r["ratios"])
    return Row(label, figure, f"{med(r['ours_s']):.2f} s (load {r['load'][0]:.1f})",
               f"cp && sync {med(r['cp_sync_s']):.2f} s", f"{ratio:.2f}x ({min(r['ratios']):.2f}-{max(r['ratios']):.2f})",
               f"<= {GOAL}x, median of {len(r['ratios'])} pairs", verdict(ratio <= GOAL), r)


def run(work: Path, quick: bool, n: int | None = None, env: dict | None = None, ck: dict | None = None) -> list[Row]:
    """Rows for `torch_to_safetensors` and `merge_shards`, each vs `cp && sync` of its inputs (`ck`: a
    checkpoint already made by `make_large_meta_checkpoint`)."""
    from reconcile_testing.checkpoints import SMALL_HF_CONFIG, make_hf_shards, make_large_meta_checkpoint
    n = n or (2 if quick else PAIRS)
    env = env or dict(os.environ)
    rows = []
    if ck is None and (work / "meta" / "consolidated.pth").exists():  # a standalone re-run (before/after)
        ck = {"checkpoint": work / "meta" / "consolidated.pth", "params": work / "meta" / "params.json"}
    ck = ck or make_large_meta_checkpoint(work / "meta", 300e6 if quick else 3e9,
                                          **({"dim": 1024, "vocab_size": 8000} if quick else {}))
    lock = project(work / "p-meta", {"raw/consolidated.pth": ck["checkpoint"], "raw/params.json": ck["params"]},
                   "{transform: torch_to_safetensors, inputs: {checkpoint: raw/consolidated.pth, params: "
                   "raw/params.json}, params: {dtype: float16}}")
    r = pairs(lock, [ck["checkpoint"]], work, n, env)
    rows.append(_row(f"1 conversion apply fp32->fp16 ({r['in_bytes'] / 1e9:.2f} GB, warm cache, start-up included)",
                     "`reconcile apply` + sync vs `cp && sync`", r))
    config = {**SMALL_HF_CONFIG, "hidden_size": 2048, "intermediate_size": 5504, "num_attention_heads": 16,
              "num_key_value_heads": 16, "num_hidden_layers": 2 if quick else 8, "vocab_size": 32000}
    hf = _reuse_hf(work / "hf") or make_hf_shards(work / "hf", config, fmt="bin", n_shards=3, seed=1)
    inputs = {f"raw/{p.name}": p for p in hf["shards"]} | {"raw/index.json": hf["index"]}
    shard_list = ", ".join(f"raw/{p.name}" for p in hf["shards"])
    lock = project(work / "p-hf", inputs, f"{{transform: merge_shards, inputs: {{index: raw/index.json, shards: "
                                          f"[{shard_list}]}}, params: {{dtype: float16, drop: ['*.rotary_emb.inv_freq']}}}}")
    r = pairs(lock, list(hf["shards"]), work, n, env)
    rows.append(_row(f"1 merge_shards apply fp32 .bin x{len(hf['shards'])} -> fp16 ({r['in_bytes'] / 1e9:.2f} GB, warm)",
                     "`reconcile apply` + sync vs `cp && sync` of the shards", r))
    return rows


def _reuse_hf(folder: Path) -> dict | None:
    index = folder / "pytorch_model.bin.index.json"
    if not index.exists():
        return None
    return {"index": index, "shards": sorted(folder.glob("pytorch_model-*.bin")), "config": folder / "config.json"}


def main(argv: list[str]) -> int:
    """Standalone: print the rows as JSON lines (with --code DIR, run another checkout's reconciler)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--pairs", type=int, default=PAIRS)
    ap.add_argument("--code", type=Path, help="a folder holding another `reconciler` package (before/after)")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parents[1] / "bench-out" / "pairs")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = str(args.code.resolve())
    args.workdir.mkdir(parents=True, exist_ok=True)
    for row in run(args.workdir, args.quick, args.pairs, env):
        print(json.dumps(row.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
