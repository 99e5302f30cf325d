"""A split of many parquet shards converted on every core: one process per shard, concatenated in order.

Why a process pool inside `to_alpaca` rather than per-shard artifacts plus a concatenation: the lock
keeps one artifact per split (same recipe, same sha256, same consumers), the user writes nothing
new, and the bytes cannot depend on the number of processes by construction: a shard's lines
depend only on that shard (the converter carries nothing across record batches but counts), so the
shards' outputs concatenated in shard order are the one-process output. Processes, not threads:
the row work is Python and holds the GIL; SentencePiece's own threads are split between them.

Memory and disk stay bounded: each worker streams its shard batch by batch (RSS flat in input
size); the parent holds no rows, it appends finished shard files to the output in shard order
(hashed once there) and deletes them; at most 2 x workers shards are in flight.
Workers are started with `spawn`: the parent has threads (SentencePiece, the publish writer), and
forking a threaded process can deadlock the child.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ..errors import TransformError
from ..publish import temp_path_for

COPY_CHUNK = 8 << 20


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def workers_for(shards: int) -> int:
    """Processes to use for `shards` shards: `RECONCILE_WORKERS` if set, else every core (never more than shards)."""
    env = os.environ.get("RECONCILE_WORKERS", "").strip()
    try:
        n = int(env) if env else cores()
    except ValueError:
        raise TransformError(f"RECONCILE_WORKERS={env!r} is not a whole number", where="RECONCILE_WORKERS",
                             fix="set it to the number of processes to use (1 = no parallelism), or unset it") from None
    return max(1, min(n, shards))


def convert_shard(dataset: str, shard: str, tokenizer: str, max_tokens: int, dest: str, threads: int):
    """Worker: convert one shard into `dest`; returns (Tally, tokens counted)."""
    from .alpaca_convert import Converter
    from .alpaca_io import TokenCounter, load_tokenizer
    counter = TokenCounter(load_tokenizer(Path(tokenizer)), threads=threads)
    conv = Converter(dataset, counter, max_tokens)
    with open(dest, "wb") as f:
        tally = conv.run([Path(shard)], f.write)
    return tally, counter.tokens


def convert_shards(dataset: str, files: Sequence[Path], tokenizer: Path, max_tokens: int,
                   write: Callable[[bytes], object], workdir: Path, workers: int):
    """Convert `files` on `workers` processes; `write` receives every shard's lines in shard order.

    Returns (tallies in shard order, tokens counted). A shard's error is raised as the one-process
    conversion would raise it: the first failing shard in order wins.
    """
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, cores() // workers)
    todo = deque(enumerate(files))
    running: deque[tuple[object, Path]] = deque()
    tallies, tokens = [], 0
    pool = ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        def submit() -> None:
            i, shard = todo.popleft()
            dest = temp_path_for(workdir / f"shard-{i:05d}.jsonl")
            running.append((pool.submit(convert_shard, dataset, str(shard), str(tokenizer), max_tokens,
                                        str(dest), threads), dest))

        while todo and len(running) < 2 * workers:
            submit()
        while running:
            fut, dest = running[0]
            try:
                tally, n = fut.result()
            except BrokenProcessPool as e:
                raise TransformError(f"a conversion worker process died ({e})", where="data",
                                     fix="check memory limits (dmesg: OOM killer) or set RECONCILE_WORKERS=1") from None
            _append(dest, write)
            running.popleft()
            dest.unlink(missing_ok=True)
            tallies.append(tally)
            tokens += n
            if todo:
                submit()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for _, dest in running:
            dest.unlink(missing_ok=True)
    return tallies, tokens


def _append(src: Path, write: Callable[[bytes], object]) -> None:
    with open(src, "rb", buffering=0) as f:
        while chunk := f.read(COPY_CHUNK):
            write(chunk)
