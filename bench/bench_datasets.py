"""Benchmark: CodeContests parquet -> Alpaca JSONL (`to_alpaca`) against SentencePiece alone.

Generates a synthetic CodeContests split (default 1,000 problems x 300 correct + 150 incorrect
solution entries) cut into SHARDS parquet shards, like the hub's 39-shard train split. Converts
it in a subprocess (one process per shard on every core; and, pinned to one core with
`RECONCILE_WORKERS=1`, in one process) against SentencePiece alone batch-encoding the very texts
the conversion tokenizes (each description and test block once, every Python solution) with
as many threads as cores it runs on: all cores, then one core. Conversion and SentencePiece
alternate (A B A B ...) after a warm-up pair; ratios are medians of per-pair ratios. Repeats the
conversion at twice the input (twice the shards) to show that peak memory per process stays flat.

    python3 bench/bench_datasets.py [--problems 1000] [--solutions 300] [--workdir DIR]

`measure()` returns the figures as a dict for a `make bench` driver; `main()` prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "upstream" / "multi-token-prediction" / "tokenizer.model"


def _tokenizer(workdir: Path) -> Path:
    """The real LLaMA-2 tokenizer when present (realistic speed), else a small trained one."""
    if REAL_TOKENIZER.is_file():
        return REAL_TOKENIZER
    import sentencepiece as spm
    from reconcile_testing.datasets import make_codecontests_parquet
    sample = make_codecontests_parquet(workdir / "corpus.parquet", 40, 20, seed=99)
    import pyarrow.parquet as pq
    t = pq.read_table(sample, columns=["description", "solutions"]).to_pylist()
    corpus = [r["description"] for r in t] + [s for r in t for s in r["solutions"]["solution"]]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(workdir / "bench_spm"),
                                   vocab_size=2000, model_type="bpe", byte_fallback=True, minloglevel=2)
    return workdir / "bench_spm.model"


SHARDS = 4  # shards of the N input (2N: twice as many of the same size)


def convert_child(data: str, tokenizer: str, out_path: str) -> dict:
    """Run `to_alpaca` once (inside the child process) and report time, counts and peak RSS."""
    from reconciler.datasets.transforms import to_alpaca
    from reconciler.publish import commit, staged

    imported = _peak_rss_mb()  # every plug-in module is imported, torch included
    final = Path(out_path)
    t0, c0 = time.perf_counter(), time.process_time()
    with staged(final, where="bench") as out:
        info = to_alpaca({"data": Path(data), "tokenizer": Path(tokenizer)}, {"dataset": "codecontests"}, out)
        size, _ = commit(out, final, where="bench", expected_sha256=None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest worker (upper bound:
    # Linux carries a parent's RSS high-water mark across fork + exec)
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": info["rows_written"], "tokens": info["tokens_counted"],
            "bytes_out": size, "import_rss_mb": imported, "peak_rss_mb": _peak_rss_mb(), "worker_peak_rss_mb": workers}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss it does not inherit the parent's peak at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def _run_child(data: Path, tokenizer: Path, out: Path, cpus: set[int] | None = None) -> dict:
    """The conversion in a child process; `cpus`: pinned to those CPUs with RECONCILE_WORKERS=len(cpus)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(data), str(tokenizer), str(out)]
    env = dict(os.environ)
    env.pop("RECONCILE_WORKERS", None)
    if cpus:
        env["RECONCILE_WORKERS"] = str(len(cpus))
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                         preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _texts(data: Path) -> list[str]:
    """The texts the conversion tokenizes (every shard of a folder), extracted with pyarrow (not timed)."""
    import pyarrow.parquet as pq

    from reconciler.datasets.alpaca_convert import CC_LANGUAGES, examples_block
    texts: list[str] = []
    files = sorted(data.glob("*.parquet")) if data.is_dir() else [data]
    for rb in (b for f in files for b in pq.ParquetFile(f).iter_batches(
            columns=["description", "public_tests", "solutions", "incorrect_solutions"])):
        for r in rb.to_pylist():
            texts.append(r["description"])
            texts.append(examples_block(r["public_tests"]["input"], r["public_tests"]["output"]))
            for col in ("solutions", "incorrect_solutions"):
                texts += [s for lang, s in zip(r[col]["language"], r[col]["solution"]) if lang in CC_LANGUAGES]
    return texts


def sentencepiece_alone(texts: list[str], tokenizer: Path, threads: int) -> dict:
    """Time SentencePiece batch-encoding the same texts (same chunk size) on `threads` threads."""
    import sentencepiece as spm

    from reconciler.datasets.alpaca_io import ENCODE_CHUNK_CHARS, TokenCounter
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    out_type = TokenCounter(sp).out_type  # the cheapest return type, as the transform uses
    t0, c0 = time.perf_counter(), time.process_time()
    tokens, start, size = 0, 0, 0
    for i, t in enumerate(texts + [""]):
        size += len(t)
        if size >= ENCODE_CHUNK_CHARS or i == len(texts):
            tokens += sum(map(len, sp.encode(texts[start:i + 1], out_type=out_type, num_threads=threads)))
            start, size = i + 1, 0
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": tokens}


def _shards(folder: Path, n_problems: int, solutions: int, count: int, seed0: int) -> list[Path]:
    from reconcile_testing.datasets import make_codecontests_parquet
    per = max(1, n_problems // count)
    return [make_codecontests_parquet(folder / f"train-{k:05d}-of-{count:05d}.parquet", per, solutions, seed=seed0 + k)
            for k in range(count)]


def _pinned(cpus: set[int], fn):
    """Run fn() with this process pinned to `cpus` (SentencePiece threads included), then unpin."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return fn()
    finally:
        os.sched_setaffinity(0, old)


def measure(n_problems: int = 1000, solutions_per_problem: int = 300, workdir: Path | None = None,
            pairs: int = 5) -> dict:
    """Generate inputs, run the benchmark (alternating pairs after a warm-up) and return its figures."""
    from _util import alternate

    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    cpus = os.sched_getaffinity(0)
    one_cpu = {min(cpus)}
    with tempfile.TemporaryDirectory(prefix="bench-datasets-", dir=workdir) as tmp:
        tmp = Path(tmp)
        tok = _tokenizer(tmp)
        one = tmp / "n"
        first = _shards(one, n_problems, solutions_per_problem, SHARDS, 0)
        two = tmp / "2n"
        two.mkdir()
        for f in first:
            os.link(f, two / f.name.replace(f"-of-{SHARDS:05d}", f"-of-{2 * SHARDS:05d}"))
        for k, f in enumerate(_shards(tmp / "more", n_problems, solutions_per_problem, SHARDS, SHARDS)):
            os.replace(f, two / f"train-{SHARDS + k:05d}-of-{2 * SHARDS:05d}.parquet")
        texts = _texts(one)
        runs: dict[str, list[dict]] = {"all": [], "one": [], "sp_all": [], "sp_one": []}

        def step(key: str, fn) -> float:
            runs[key].append(fn())
            return runs[key][-1]["seconds"]

        conv_all, sp_all, conv_one, sp_one = alternate([
            lambda: step("all", lambda: _run_child(one, tok, tmp / "n.jsonl")),
            lambda: step("sp_all", lambda: sentencepiece_alone(texts, tok, len(cpus))),
            lambda: step("one", lambda: _run_child(one, tok, tmp / "n1.jsonl", one_cpu)),
            lambda: step("sp_one", lambda: _pinned(one_cpu, lambda: sentencepiece_alone(texts, tok, 1))),
        ], pairs)
        same_bytes = (tmp / "n.jsonl").read_bytes() == (tmp / "n1.jsonl").read_bytes()
        conv2 = _run_child(two, tok, tmp / "2n.jsonl")
        one2 = _run_child(two, tok, tmp / "2n1.jsonl", one_cpu)
    c = runs["all"][-1]
    tokens, rows = c["tokens"], c["rows"]
    med = {k: statistics.median(v) for k, v in (("all", conv_all), ("sp_all", sp_all), ("one", conv_one),
                                                 ("sp_one", sp_one))}
    entries = n_problems * (solutions_per_problem + solutions_per_problem // 2)
    return {
        "problems": n_problems, "solution_entries": entries, "shards": SHARDS, "tokenizer": tok.name,
        "cpus": len(cpus), "load_avg_1m": round(os.getloadavg()[0], 2), "rows": rows, "tokens": tokens,
        "same_bytes_1_vs_all_cores": same_bytes, "seconds": round(med["all"], 3),
        "rows_per_s": round(rows / med["all"]), "tokens_per_s": round(tokens / med["all"]),
        "sp_alone_tokens_per_s": round(tokens / med["sp_all"]),
        "tokens_per_s_1core": round(tokens / med["one"]), "sp_alone_tokens_per_s_1core": round(tokens / med["sp_one"]),
        "ratios_all": [round(b / a, 4) for a, b in zip(conv_all, sp_all)],
        "ratios_1core": [round(b / a, 4) for a, b in zip(conv_one, sp_one)],
        "samples_s": {"all": conv_all, "sp_all": sp_all, "one": conv_one, "sp_one": sp_one},
        "import_rss_mb": round(runs["one"][-1]["import_rss_mb"], 1),
        "peak_rss_mb_n": round(runs["one"][-1]["peak_rss_mb"], 1), "peak_rss_mb_2n": round(one2["peak_rss_mb"], 1),
        "worker_rss_mb_n": round(c["worker_peak_rss_mb"], 1), "worker_rss_mb_2n": round(conv2["worker_peak_rss_mb"], 1),
        "parent_rss_mb_n": round(c["peak_rss_mb"], 1), "parent_rss_mb_2n": round(conv2["peak_rss_mb"], 1),
        "rows_2n": conv2["rows"], "seconds_2n": round(conv2["seconds"], 3), "mb_out_n": round(c["bytes_out"] / 1e6, 1),
    }


def table(r: dict) -> str:
    """A small markdown table of `measure()`'s figures."""
    rows = [("input", f"{r['problems']:,} problems in {r['shards']} shards, {r['solution_entries']:,} solution entries"),
            ("machine", f"{r['cpus']} CPUs, load average {r['load_avg_1m']}, tokenizer {r['tokenizer']}"),
            ("rows written (N)", f"{r['rows']:,} in {r['seconds']} s ({r['mb_out_n']} MB)"),
            ("tokens/s all cores: conversion / SP alone", f"{r['tokens_per_s']:,} / {r['sp_alone_tokens_per_s']:,}"),
            ("ratios all cores (per pair)", ", ".join(map(str, r["ratios_all"]))),
            ("tokens/s one core: conversion / SP alone", f"{r['tokens_per_s_1core']:,} / "
                                                         f"{r['sp_alone_tokens_per_s_1core']:,}"),
            ("ratios one core (per pair)", ", ".join(map(str, r["ratios_1core"]))),
            ("peak RSS one process at N / 2N", f"{r['peak_rss_mb_n']} / {r['peak_rss_mb_2n']} MB"),
            ("peak RSS largest worker at N / 2N", f"{r['worker_rss_mb_n']} / {r['worker_rss_mb_2n']} MB")]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print the table (or act as the conversion child)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(convert_child(*argv[1:4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=1000)
    ap.add_argument("--solutions", type=int, default=300)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(table(measure(args.problems, args.solutions, args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
