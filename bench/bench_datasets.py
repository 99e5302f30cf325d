"""Benchmark: CodeContests parquet -> Alpaca JSONL (`to_alpaca`) against SentencePiece alone.

Generates a synthetic CodeContests split (default 1,000 problems x 300 correct + 150 incorrect
solution entries), converts it in a subprocess (so `ru_maxrss` is the conversion's own peak),
then batch-encodes the very texts the conversion tokenizes (each description and test block
once, every Python solution) with SentencePiece alone, in the same run. Repeats the conversion
at twice the input (two shards in a folder) to show that peak memory stays flat.

    python3 bench/bench_datasets.py [--problems 1000] [--solutions 300] [--workdir DIR]

`measure()` returns the figures as a dict for a `make bench` driver; `main()` prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    return {"seconds": seconds, "cpu_seconds": cpu, "rows": info["rows_written"], "tokens": info["tokens_counted"],
            "bytes_out": size, "import_rss_mb": imported, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss it does not inherit the parent's peak at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def _run_child(data: Path, tokenizer: Path, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(data), str(tokenizer), str(out)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _texts(data: Path) -> list[str]:
    """The texts the conversion tokenizes, extracted with pyarrow (not timed)."""
    import pyarrow.parquet as pq

    from reconciler.datasets.alpaca_convert import CC_LANGUAGES, examples_block
    texts: list[str] = []
    for rb in pq.ParquetFile(data).iter_batches(columns=["description", "public_tests", "solutions",
                                                         "incorrect_solutions"]):
        for r in rb.to_pylist():
            texts.append(r["description"])
            texts.append(examples_block(r["public_tests"]["input"], r["public_tests"]["output"]))
            for col in ("solutions", "incorrect_solutions"):
                texts += [s for lang, s in zip(r[col]["language"], r[col]["solution"]) if lang in CC_LANGUAGES]
    return texts


def sentencepiece_alone(data: Path, tokenizer: Path) -> dict:
    """Time SentencePiece batch-encoding the same texts (same chunk size and thread count)."""
    import sentencepiece as spm

    from reconciler.datasets.alpaca_io import ENCODE_CHUNK_CHARS, TokenCounter
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    out_type = TokenCounter(sp).out_type  # the cheapest return type, as the transform uses
    texts = _texts(data)
    threads = os.cpu_count() or 1
    t0, c0 = time.perf_counter(), time.process_time()
    tokens, start, size = 0, 0, 0
    for i, t in enumerate(texts + [""]):
        size += len(t)
        if size >= ENCODE_CHUNK_CHARS or i == len(texts):
            tokens += sum(map(len, sp.encode(texts[start:i + 1], out_type=out_type, num_threads=threads)))
            start, size = i + 1, 0
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": tokens}


def measure(n_problems: int = 1000, solutions_per_problem: int = 300, workdir: Path | None = None,
            repeats: int = 3) -> dict:
    """Generate inputs, run the benchmark and return its figures as a flat dict."""
    from reconcile_testing.datasets import make_codecontests_parquet

    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-", dir=workdir) as tmp:
        tmp = Path(tmp)
        tok = _tokenizer(tmp)
        one = make_codecontests_parquet(tmp / "n" / "train-00000-of-00002.parquet", n_problems,
                                        solutions_per_problem, seed=0)
        two = tmp / "2n"
        two.mkdir()
        os.link(one, two / one.name)
        make_codecontests_parquet(two / "train-00001-of-00002.parquet", n_problems, solutions_per_problem, seed=1)
        # Interleaved repeats, best of each: other work on the machine slows single runs.
        convs, alones = [], []
        for _ in range(repeats):
            convs.append(_run_child(one, tok, tmp / "n.jsonl"))
            alones.append(sentencepiece_alone(one, tok))
        conv = min(convs, key=lambda r: r["seconds"])
        alone = min(alones, key=lambda r: r["seconds"])
        conv2 = _run_child(two, tok, tmp / "2n.jsonl")
    entries = n_problems * (solutions_per_problem + solutions_per_problem // 2)
    return {
        "problems": n_problems, "solution_entries": entries, "tokenizer": tok.name, "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews wall-clock ratios
        "rows": conv["rows"], "seconds": round(conv["seconds"], 3),
        "rows_per_s": round(conv["rows"] / conv["seconds"]), "tokens_per_s": round(conv["tokens"] / conv["seconds"]),
        "sp_alone_tokens_per_s": round(alone["tokens"] / alone["seconds"]),
        "ratio_vs_sp_alone": round(alone["seconds"] / conv["seconds"], 3),
        "cpu_ratio_vs_sp_alone": round(alone["cpu_seconds"] / conv["cpu_seconds"], 3),
        "import_rss_mb": round(conv["import_rss_mb"], 1), "peak_rss_mb_n": round(conv["peak_rss_mb"], 1), "peak_rss_mb_2n": round(conv2["peak_rss_mb"], 1),
        "rows_2n": conv2["rows"], "seconds_2n": round(conv2["seconds"], 3), "mb_out_n": round(conv["bytes_out"] / 1e6, 1),
    }


def table(r: dict) -> str:
    """A small markdown table of `measure()`'s figures."""
    rows = [("input", f"{r['problems']:,} problems, {r['solution_entries']:,} solution entries"),
            ("machine", f"{r['cpus']} CPUs, load average {r['load_avg_1m']}, tokenizer {r['tokenizer']}"),
            ("rows written (N)", f"{r['rows']:,} in {r['seconds']} s ({r['mb_out_n']} MB)"),
            ("rows/s", f"{r['rows_per_s']:,}"),
            ("tokens/s (conversion)", f"{r['tokens_per_s']:,}"),
            ("tokens/s (SentencePiece alone)", f"{r['sp_alone_tokens_per_s']:,}"),
            ("conversion / SP alone (wall)", f"{r['ratio_vs_sp_alone']}x (goal >= 0.7x)"),
            ("conversion / SP alone (CPU time)", f"{r['cpu_ratio_vs_sp_alone']}x"),
            ("peak RSS at N", f"{r['peak_rss_mb_n']} MB (after imports: {r['import_rss_mb']} MB)"),
            ("peak RSS at 2N", f"{r['peak_rss_mb_2n']} MB ({r['rows_2n']:,} rows in {r['seconds_2n']} s)")]
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
    print(table(measure(args.problems, args.solutions, args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
