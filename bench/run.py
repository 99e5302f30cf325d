"""`make bench`: every benchmark, one markdown table of ratios against baselines measured in the same run.

    python3 bench/run.py [--quick] [--only NAME ...] [--workdir DIR] [--keep]

NAMEs: convert, pairs, download, dataset, check, deep, lock, hfcache, loads, peers, remote. Writes the table to bench-out/results.md
and the raw figures (plus the machine description) to bench-out/results.json. Large files are
generated under the work dir (default bench-out/work) and removed at the end unless --keep.
A benchmark that fails becomes an `error` row; the others still run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench modules

from _util import REPO, Row, fmt_s, machine, machine_line, verdict  # noqa: E402

NAMES = ("convert", "pairs", "download", "dataset", "check", "deep", "lock", "hfcache", "loads", "peers", "remote")
COLUMNS = ("benchmark", "figure", "ours", "baseline", "ratio", "goal", "met")


def dataset_rows(work: Path, quick: bool) -> list[Row]:
    """Row 3: bench/bench_datasets.py's `measure()` figures, at its spec's smallest size (quick: tiny)."""
    import bench_datasets
    from _util import pairs_for, ratio_cell
    problems, solutions = (100, 30) if quick else (1000, 300)  # default = its spec: >= 1,000 x >= 300,000
    work.mkdir(parents=True, exist_ok=True)
    r = bench_datasets.measure(problems, solutions, work, pairs=pairs_for(quick))
    label = (f"3 dataset to_alpaca ({r['problems']:,} problems in {r['shards']} shards, "
             f"{r['solution_entries']:,} solution entries, {r['cpus']} cores)")
    ratio = statistics.median(r["ratios_all"])
    flat = r["peak_rss_mb_2n"] <= 1.1 * r["peak_rss_mb_n"] and r["worker_rss_mb_2n"] <= 1.1 * r["worker_rss_mb_n"]
    return [
        Row(label, "tokens/s on all cores: conversion (a process per shard) vs SentencePiece alone",
            f"{r['tokens_per_s']:,} tok/s", f"SP alone {r['sp_alone_tokens_per_s']:,} tok/s", ratio_cell(r["ratios_all"]),
            ">= 0.8x", verdict(ratio >= 0.8 and r["same_bytes_1_vs_all_cores"]), r),
        Row(label, "tokens/s on one core (RECONCILE_WORKERS=1, pinned) vs SentencePiece alone on it",
            f"{r['tokens_per_s_1core']:,} tok/s", f"SP alone {r['sp_alone_tokens_per_s_1core']:,} tok/s",
            ratio_cell(r["ratios_1core"]), "", "", {}),
        Row(label, "rows/s on all cores (rows written); output identical to one core's",
            f"{r['rows_per_s']:,} rows/s", f"{r['rows']:,} rows in {r['seconds']} s", "", "byte-identical",
            verdict(r["same_bytes_1_vs_all_cores"])),
        Row(label, "peak RSS per process at N vs 2N input (one process / largest worker)",
            f"{r['peak_rss_mb_n']} / {r['worker_rss_mb_n']} MB", f"2N: {r['peak_rss_mb_2n']} / {r['worker_rss_mb_2n']} MB",
            f"{r['peak_rss_mb_2n'] / r['peak_rss_mb_n']:.2f}x / {r['worker_rss_mb_2n'] / r['worker_rss_mb_n']:.2f}x",
            "flat (2N/N <= 1.1x)", verdict(flat)),
    ]


def _runners():
    import bench_check
    import bench_convert_pairs
    import bench_download
    import bench_hf_cache
    import bench_loads
    import bench_lock
    import bench_models
    import bench_peers
    import bench_remote
    return {"convert": bench_models.run, "pairs": bench_convert_pairs.run, "download": bench_download.run, "dataset": dataset_rows,
            "check": lambda w, q: bench_check.run(w, q, "stat"), "deep": lambda w, q: bench_check.run(w, q, "deep"),
            "lock": bench_lock.run, "hfcache": bench_hf_cache.run, "loads": bench_loads.run,
            "peers": bench_peers.run, "remote": bench_remote.run}


def run_all(names: list[str], work: Path, quick: bool) -> tuple[list[Row], dict[str, float]]:
    """Run the named benchmarks in order; a failure becomes an error row. Returns rows and durations."""
    rows: list[Row] = []
    took: dict[str, float] = {}
    runners = _runners()
    for name in names:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            rows += runners[name](work / name, quick)
        except Exception as e:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            rows.append(Row(name, "error", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
        finally:
            shutil.rmtree(work / name, ignore_errors=True)  # large files go as soon as their bench is done
        took[name] = time.perf_counter() - t0
        print(f"bench: {name} done in {fmt_s(took[name])}", file=sys.stderr, flush=True)
    return rows, took


def table(rows: list[Row]) -> str:
    """The one markdown table."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in (r.bench, r.figure, r.ours, r.baseline, r.ratio, r.goal,
                                                           r.met)) + " |")
    return "\n".join(lines)


def write_results(out_dir: Path, rows: list[Row], took: dict, mach: dict, quick: bool) -> str:
    """Write results.md and results.json; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    md = (f"# reconcile benchmarks{' (--quick)' if quick else ''}\n\nMachine: {machine_line(mach)}  \n"
          f"Run: {when}, {sum(took.values()):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in took.items())})\n\n"
          + table(rows) + "\n")
    (out_dir / "results.md").write_text(md)
    doc = {"when": when, "quick": quick, "machine": mach, "seconds": {k: round(v, 1) for k, v in took.items()},
           "rows": [r.as_dict() for r in rows]}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return md


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print the table; exit 1 if a benchmark errored (missed goals are not errors)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every benchmark")
    ap.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(NAMES)}")
    ap.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "work")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (generated inputs are still removed)")
    args = ap.parse_args(argv)
    names = [n for n in NAMES if n in (args.only or NAMES)]
    mach = machine()
    print(f"machine: {machine_line(mach)}", file=sys.stderr)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows, took = run_all(names, args.workdir, args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    md = write_results(REPO / "bench-out", rows, took, mach, args.quick)
    print(md)
    return 1 if any(r.figure == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
