"""`reconcile check`: the stat cache on 1,000 small artifacts, and `check --deep` hashing throughput.

Row 4 applies a lock of 1,000 pinned `write_json` artifacts, then times `check` (stat cache
warm: no file should be hashed) against `check --deep` (every file rehashed, every check rerun),
both through the CLI (what a user runs, interpreter start-up included) and in-process (the
engine alone). Row 5 pins N large random files as fetch artifacts (nothing is downloaded: the
bytes are put in place and pinned), warms the page cache, and compares `reconcile check --deep`
with `sha256sum` and with single-threaded Python hashlib over the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from _util import (
    MB,
    Row,
    alternate,
    fmt_mbps,
    fmt_s,
    median_time,
    paired,
    pairs_for,
    python,
    ratio_cell,
    run_cmd,
    timed,
    verdict,
    warm,
    write_random_file,
)

DEEP_GOAL = 0.9  # deep-check MB/s over (hashlib single-core MB/s x cores)
HEAD = 'version: 1\nstorage_version: "1"\nroot: storage\n'


def _cli(lock: Path, *args: str) -> dict:
    """Run `reconcile check --json` (same interpreter) and return its report."""
    res = run_cmd([python(), "-m", "reconciler", "--lock", str(lock), "check", "--json", *args])
    return json.loads(res.stdout)


def _hashlib_processes(paths: list[Path], cores: int) -> float:
    """Wall time of hashing the files with one process per core: what this machine's cores can do."""
    from concurrent.futures import ProcessPoolExecutor

    from reconciler.hashing import sha256_file
    with ProcessPoolExecutor(cores) as pool:
        list(pool.map(sha256_file, paths[:cores]))  # workers started and warm before timing
        return median_time(lambda: list(pool.map(sha256_file, paths)), 3)[0]


def small_lock(work: Path, n: int) -> Path:
    """A lock of `n` pinned `write_json` artifacts under work/storage."""
    from reconciler.hashing import pretty_json_bytes
    lines = [HEAD + "artifacts:"]
    for i in range(n):
        sha = hashlib.sha256(pretty_json_bytes({"i": i})).hexdigest()
        lines += [f"  small/{i // 100:02d}/{i:04d}.json:", f"    build: {{transform: write_json, params: {{data: {{i: {i}}}}}}}",
                  f"    sha256: {sha}"]
    path = work / "small.lock.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def stat_cache_rows(work: Path, quick: bool) -> list[Row]:
    """Row 4: apply 1,000 artifacts, then fast check vs deep check (CLI and in-process)."""
    from reconciler.apply import apply
    from reconciler.lockfile import load_lock
    from reconciler.verify import check
    n = 1000
    work.mkdir(parents=True, exist_ok=True)
    lock_path = small_lock(work, n)
    lock, root = load_lock(lock_path), work / "storage"
    apply_s, result = timed(lambda: apply(lock, root))
    assert result.ok and len(result.done) == n, "apply of the small lock failed"
    check(lock, root)  # primes the check-result cache (no declared checks here: a no-op)
    pairs = pairs_for(quick)
    reports: dict[str, dict] = {}

    def cli(*args: str) -> float:
        t0 = time.perf_counter()
        reports[args[0] if args else "fast"] = _cli(lock_path, *args)
        return time.perf_counter() - t0

    cli_p = paired(cli, lambda: cli("--deep"), pairs)
    lib_p = paired(lambda: timed(lambda: check(lock, root))[0], lambda: timed(lambda: check(lock, root, deep=True))[0],
                   pairs)
    fast_report, deep_report = reports["fast"], reports["--deep"]
    hashed = fast_report["hashed_files"]
    ok = fast_report["ok"] and deep_report["ok"]
    data = {"artifacts": n, "apply_s": round(apply_s, 3), "check_cli_s": round(cli_p.med_a, 3),
            "check_deep_cli_s": round(cli_p.med_b, 3), "check_lib_s": round(lib_p.med_a, 4),
            "check_deep_lib_s": round(lib_p.med_b, 4), "hashed_files": hashed,
            "hashed_files_deep": deep_report["hashed_files"], "all_ok": ok, "cli_pairs": cli_p.data(),
            "lib_pairs": lib_p.data()}
    label = f"4 check via stat cache ({n:,} artifacts)"
    return [
        Row(label, "`reconcile check` (CLI, warm stat cache)", f"{fmt_s(cli_p.med_a)}, {hashed} files hashed",
            f"`check --deep` {fmt_s(cli_p.med_b)}, {deep_report['hashed_files']} hashed", cli_p.cell(),
            "0 files hashed, all ok", verdict(hashed == 0 and ok), data),
        Row(label, "engine only (in-process `verify.check`)", fmt_s(lib_p.med_a), f"deep {fmt_s(lib_p.med_b)}",
            lib_p.cell(), "", "", {}),
        Row(label, "context: `apply` of the 1,000 artifacts", fmt_s(apply_s), "", "", "", "", {}),
    ]


def big_lock(work: Path, files: dict[str, str], sizes: dict[str, int]) -> Path:
    """A lock pinning `files` (relpath under work/storage -> sha256) as fetch artifacts."""
    lines = [HEAD + f"sources:\n  hub: {{repo: org/big, type: model, revision: {'ab' * 20}}}\nartifacts:"]
    for rel, sha in files.items():
        lines += [f"  {rel}:", f"    fetch: {{source: hub, path: {rel}}}", f"    sha256: {sha}", f"    size: {sizes[rel]}"]
    path = work / "big.lock.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _hashlib_all(paths: list[Path]) -> dict[Path, str]:
    """sha256 of each file, one after another on one thread (8 MiB reads)."""
    from reconciler.hashing import sha256_file
    return {p: sha256_file(p) for p in paths}


def deep_rows(work: Path, quick: bool) -> list[Row]:
    """Row 5: check --deep MB/s vs sha256sum vs hashlib, all from the page cache."""
    from reconciler.lockfile import load_lock
    from reconciler.verify import check
    count, size = 4, (64 << 20) if quick else (512 << 20)
    root = work / "storage"
    paths = [write_random_file(root / f"big/part-{i}.bin", size, seed=i) for i in range(count)]
    os.sync()  # no dirty pages left to write back during the timings
    warm(paths)
    total = count * size
    shas = _hashlib_all(paths)
    rels = {str(p.relative_to(root)): shas[p] for p in paths}
    lock_path = big_lock(work, rels, {r: size for r in rels})
    lock = load_lock(lock_path)
    pairs = pairs_for(quick)
    reports: list[dict] = []

    def cli() -> float:
        t0 = time.perf_counter()
        reports.append(_cli(lock_path, "--deep"))
        return time.perf_counter() - t0

    def hashlib_1() -> float:
        return timed(lambda: _hashlib_all(paths))[0]

    cli_s_all, hl_cli, lib_s_all, hl_lib, sum_s_all = alternate(
        [cli, hashlib_1, lambda: timed(lambda: check(lock, root, deep=True))[0], hashlib_1,
         lambda: timed(lambda: run_cmd(["sha256sum", *map(str, paths)]))[0]], pairs)
    cores = os.cpu_count() or 1
    cli_rs = [h / (c * cores) for c, h in zip(cli_s_all, hl_cli)]  # ours MB/s over hashlib MB/s x cores
    lib_rs = [h / (c * cores) for c, h in zip(lib_s_all, hl_lib)]
    cli_s, lib_s = statistics.median(cli_s_all), statistics.median(lib_s_all)
    hl_s, sum_s = statistics.median(hl_cli + hl_lib), statistics.median(sum_s_all)
    report = reports[-1]
    procs_s = _hashlib_processes(paths, cores)
    data = {"files": count, "bytes": total, "hashlib_s": round(hl_s, 3), "sha256sum_s": round(sum_s, 3),
            "check_deep_cli_s": round(cli_s, 3), "check_deep_lib_s": round(lib_s, 3), "cores": cores,
            "hashlib_processes_s": round(procs_s, 3), "check_ok": report["ok"], "hashed_files": report["hashed_files"]}
    label = f"5 check --deep throughput ({count} x {size >> 20} MiB, page cache warm)"
    return [
        Row(label, "`reconcile check --deep` (CLI, start-up included)", fmt_mbps(total, cli_s),
            f"hashlib 1 thread x {cores} cores = {total * cores / hl_s / MB:,.0f} MB/s", ratio_cell(cli_rs),
            f">= {DEEP_GOAL}x", verdict(statistics.median(cli_rs) >= DEEP_GOAL and report["ok"]), data),
        Row(label, "engine only (in-process `verify.check(deep=True)`)", fmt_mbps(total, lib_s),
            f"hashlib x {cores} cores", ratio_cell(lib_rs), f">= {DEEP_GOAL}x",
            verdict(statistics.median(lib_rs) >= DEEP_GOAL), {}),
        Row(label, f"context: hashlib in {cores} processes (what the cores really give)", fmt_mbps(total, procs_s),
            f"hashlib 1 thread {fmt_mbps(total, hl_s)}", f"{hl_s / procs_s:.2f}x", "", "", {}),
        Row(label, "context: single-core hashers", f"hashlib {fmt_mbps(total, hl_s)}",
            f"sha256sum {fmt_mbps(total, sum_s)}", f"{sum_s / hl_s:.2f}x (hashlib/sha256sum speed)", "", "", {}),
    ]


def run(work: Path, quick: bool, only: str | None = None) -> list[Row]:
    """Both check benchmarks (or one: `stat` / `deep`)."""
    rows: list[Row] = []
    if only in (None, "stat"):
        rows += stat_cache_rows(work / "stat", quick)
    if only in (None, "deep"):
        rows += deep_rows(work / "deep", quick)
    return rows
