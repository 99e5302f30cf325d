"""Conversion: `torch_to_safetensors` (float32 -> float16) on a generated Meta-layout checkpoint.

Our side is the registered transform run as the engine runs it (`publish.staged` -> transform
-> `publish.commit`: hashed while written, verified, fsynced, renamed), in a child process so
its peak RSS (`wait4` rusage) is its own. Baselines, same run, same warm page cache (the
checkpoint is read once before anything is timed): `cp` of the checkpoint, and `cp && sync
FILE` (fsynced like our publish). Then the memory experiment: a cgroup v1 memory group with a
1 GiB hard limit (RAM+swap) runs the streaming conversion, then the naive conversion
(`torch.load` everything, `.half()` everything, `safetensors.torch.save_file`); the naive one
is expected to be OOM-killed. Page cache is charged to the group but reclaimable, so only
anonymous memory (what the naive path needs ~1.5x the file of) can exhaust it.

    python3 bench/bench_models.py --child convert|naive CKPT PARAMS OUT   (used by run())
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from _util import (
    GIB,
    MB,
    ChildResult,
    MemoryCgroup,
    Row,
    alternate,
    fmt_s,
    pairs_for,
    python,
    ratio_cell,
    run_child,
    run_cmd,
    timed,
    verdict,
    warm,
)

GOAL_TIME = 1.5  # conversion wall time over cp's
CGROUP = "reconcile-bench"


# -- child side ------------------------------------------------------------------------------------
def vm_hwm() -> int:
    """This process's own peak RSS (VmHWM, bytes). Unlike ru_maxrss, it is not inherited from the
    parent's high-water mark across fork + exec, so a big parent cannot inflate it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_convert(ckpt: str, params: str, out: str) -> dict:
    """The streaming conversion through the engine's publish path; returns timing and RSS."""
    import torch  # noqa: F401 - the engine imports torch lazily; keep its import out of the timed span

    from reconciler.models.convert import torch_to_safetensors
    from reconciler.publish import commit, staged
    imported = vm_hwm()
    final = Path(out)
    t0 = time.perf_counter()
    with staged(final, where="bench") as o:
        info = torch_to_safetensors({"checkpoint": Path(ckpt), "params": Path(params)}, {"dtype": "float16"}, o)
        size, _ = commit(o, final, where="bench", expected_sha256=None)
    return {"seconds": time.perf_counter() - t0, "bytes_out": size, "n_tensors": info["n_tensors"],
            "import_rss_bytes": imported, "peak_rss_bytes": vm_hwm()}


def child_naive(ckpt: str, params: str, out: str) -> dict:
    """The naive conversion: whole state dict in memory, cast in memory, saved in one call."""
    import safetensors.torch
    import torch
    imported = vm_hwm()
    t0 = time.perf_counter()
    sd = torch.load(ckpt)
    sd = {k: v.half() for k, v in sd.items()}
    safetensors.torch.save_file(sd, out)
    with open(out, "rb") as f:  # same durability as the engine's publish
        os.fsync(f.fileno())
    return {"seconds": time.perf_counter() - t0, "bytes_out": os.path.getsize(out), "import_rss_bytes": imported,
            "peak_rss_bytes": vm_hwm()}


def _spawn(mode: str, ck: dict, out: Path, cgroup: Path | None = None) -> tuple[ChildResult, dict]:
    """Run a conversion child (fresh output, nothing dirty pending); returns (process result, its JSON)."""
    out.unlink(missing_ok=True)
    os.sync()
    res = run_child([python(), str(Path(__file__).resolve()), "--child", mode, str(ck["checkpoint"]),
                     str(ck["params"]), str(out)], cgroup=cgroup)
    info = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else {}
    if res.returncode == 0 and not info:
        raise RuntimeError(f"{mode} child printed nothing: {res.stderr[-300:]}")
    if res.returncode not in (0, -9, 137) or (res.returncode != 0 and cgroup is None):
        raise RuntimeError(f"{mode} child exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res, info


# -- parent side -----------------------------------------------------------------------------------
def make_checkpoint(work: Path, quick: bool) -> dict:
    """A float32 Meta-layout checkpoint: >= 3 GB (largest tensor 262 MB), or ~300 MB for --quick."""
    from reconcile_testing.checkpoints import make_large_meta_checkpoint
    if quick:
        return make_large_meta_checkpoint(work / "ckpt", 300e6, dim=1024, vocab_size=8000)
    return make_large_meta_checkpoint(work / "ckpt", 3e9)


def _cp_once(src: Path, dst: Path, sync: bool) -> float:
    """Wall time of `cp` (and `sync FILE` when `sync`) from a clean slate."""
    dst.unlink(missing_ok=True)
    os.sync()
    cmds = [["cp", str(src), str(dst)]] + ([["sync", str(dst)]] if sync else [])
    s, _ = timed(lambda: [run_cmd(c) for c in cmds])
    dst.unlink()
    return s


def run(work: Path, quick: bool) -> list[Row]:
    """Conversion time vs cp (alternating rounds), peak RSS vs file size, and the 1 GiB cgroup experiment."""
    work.mkdir(parents=True, exist_ok=True)
    ck = make_checkpoint(work, quick)
    size = ck["size"]
    warm([ck["checkpoint"]])
    out = work / "model.safetensors"
    runs: list[tuple[ChildResult, dict]] = []

    def convert() -> float:
        runs.append(_spawn("convert", ck, out))
        return runs[-1][1]["seconds"]  # the child's own span: start-up and imports excluded

    conv_s, cp_sync_s, cp_s = alternate([convert, lambda: _cp_once(ck["checkpoint"], work / "copy.pth", True),
                                         lambda: _cp_once(ck["checkpoint"], work / "copy.pth", False)],
                                        pairs_for(quick))
    conv, info = runs[-1]
    _, naive_info = _spawn("naive", ck, out)
    out.unlink(missing_ok=True)
    rows = _speed_rows(size, ck, {"convert": conv_s, "cp_sync": cp_sync_s, "cp": cp_s,
                                  "process": [r.seconds for r, _ in runs[1:]]}, info, naive_info)
    # --quick's ~300 MB checkpoint fits 1 GiB even naively: a 512 MiB limit keeps the experiment meaningful.
    return rows + cgroup_rows(ck, out, GIB // 2 if quick else GIB)


def _speed_rows(size: int, ck: dict, times: dict[str, list[float]], info: dict, naive_info: dict) -> list[Row]:
    med = {k: statistics.median(v) for k, v in times.items()}
    t, cp_s, cp_sync_s = med["convert"], med["cp"], med["cp_sync"]
    vs_cp = [a / b for a, b in zip(times["convert"], times["cp"])]
    vs_sync = [a / b for a, b in zip(times["convert"], times["cp_sync"])]
    data = {"checkpoint_bytes": size, "n_params": ck["n_params"], "out_bytes": info["bytes_out"],
            "convert_s": round(t, 3), "convert_process_s": round(med["process"], 3), "cp_s": round(cp_s, 3),
            "cp_sync_s": round(cp_sync_s, 3), "samples_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "peak_rss_bytes": info["peak_rss_bytes"], "import_rss_bytes": info["import_rss_bytes"],
            "naive_s": round(naive_info["seconds"], 3), "naive_peak_rss_bytes": naive_info["peak_rss_bytes"],
            "page_cache": "warm for all (read once first)"}
    peak, naive_peak = info["peak_rss_bytes"], naive_info["peak_rss_bytes"]
    label = f"1 conversion fp32->fp16 ({size / 1e9:.2f} GB checkpoint, page cache warm)"
    return [
        Row(label, "torch_to_safetensors + publish vs `cp`", fmt_s(t), f"cp {fmt_s(cp_s)}", ratio_cell(vs_cp),
            f"<= {GOAL_TIME}x", verdict(statistics.median(vs_cp) <= GOAL_TIME), data),
        Row(label, "same, fsync-fair baseline", fmt_s(t), f"cp && sync FILE {fmt_s(cp_sync_s)}",
            ratio_cell(vs_sync), f"<= {GOAL_TIME}x", verdict(statistics.median(vs_sync) <= GOAL_TIME), {}),
        Row(label, "peak RSS (VmHWM) of the conversion process", f"{peak / MB:,.0f} MB "
            f"({info['import_rss_bytes'] / MB:,.0f} MB after imports)", f"file {size / MB:,.0f} MB",
            f"{peak / size:.2f}x", "< 1x (one tensor, not the file)", verdict(peak < size), {}),
        Row(label, "context: naive conversion (no limit)", f"{fmt_s(t)}, {peak / MB:,.0f} MB peak",
            f"naive {fmt_s(naive_info['seconds'])}, {naive_peak / MB:,.0f} MB peak",
            f"{t / naive_info['seconds']:.2f}x time, {peak / naive_peak:.2f}x RSS", "", "", {}),
    ]


def cgroup_rows(ck: dict, out: Path, limit: int) -> list[Row]:
    """Streaming conversion vs naive conversion inside a memory cgroup of `limit` bytes."""
    label = f"1 conversion in a {limit / GIB:g} GiB memory cgroup (v1, RAM+swap limit)"
    try:
        group = MemoryCgroup(CGROUP, limit)
        with group:
            group.reset_peak()
            conv, conv_info = _spawn("convert", ck, out, group.path)
            conv_peak = group.peak_bytes()
            group.reset_peak()
            naive, _ = _spawn("naive", ck, out, group.path)
            naive_peak, kills = group.peak_bytes(), group.oom_kills()
    except OSError as e:
        return [Row(label, "streaming vs naive under the limit", f"n/a ({e})")]
    finally:
        out.unlink(missing_ok=True)
    data = {"limit_bytes": limit, "convert_rc": conv.returncode, "convert_s": round(conv.seconds, 3),
            "convert_cgroup_peak_bytes": conv_peak, "convert_peak_rss_bytes": conv_info.get("peak_rss_bytes"),
            "naive_rc": naive.returncode, "naive_s": round(naive.seconds, 3), "naive_cgroup_peak_bytes": naive_peak,
            "oom_kills": kills}
    ok = conv.returncode == 0 and naive.returncode in (-9, 137)
    return [Row(label, "streaming conversion vs naive, same cgroup",
                f"exit {conv.returncode} in {fmt_s(conv.seconds)} (RSS {conv_info.get('peak_rss_bytes', 0) / MB:,.0f} MB, "
                f"cgroup peak {conv_peak / MB:,.0f} MB)",
                f"naive: exit {naive.returncode}{' (OOM-killed)' if naive.returncode in (-9, 137) else ''} "
                f"after {fmt_s(naive.seconds)}", "", "ours completes, naive killed", verdict(ok), data)]


def main(argv: list[str]) -> int:
    """`--child convert|naive CKPT PARAMS OUT`: run one conversion and print its JSON figures."""
    if argv[:1] != ["--child"] or len(argv) != 5:
        print(__doc__)
        return 2
    fn = {"convert": child_convert, "naive": child_naive}[argv[1]]
    print(json.dumps(fn(*argv[2:5])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
