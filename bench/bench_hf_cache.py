"""Reuse of the Hugging Face cache: publishing a cached 1 GB file vs downloading it vs `ln` / `cp`.

A hub store with one 1 GB LFS file is served by the local hub in its own process; the real
huggingface_hub client (`hf_hub_download`) fills a Hugging Face cache from it once. Then, alternating
(A B C D A B C D ...), each timed from a clean slate (`os.sync()` first, no old output):

* ours: `HfCache.publish` exactly as apply calls it: stage a hard link to the blob, hash it (the
  bytes are verified against the pin, never trusted), fsync, rename.
* download: what apply does without the cache (`fetch_file` from the local hub + publish).
* `ln`: a bare hard link (the floor: no verification).
* `cp && sync`: a verified-nothing copy of the blob made durable (what a copy costs).

When /dev/shm is a tmpfs with room, the same file in a cache there (another filesystem) gives the
copy path: ours-copy vs `cp && sync` from the same place. Each figure is the median; min-max kept.
"""

from __future__ import annotations

import os
import shutil
import statistics
import uuid
from pathlib import Path

from _util import GIB, Row, fmt_s, run_cmd, timed_clean, verdict

REPO_ID = "bench/big-file"



def _publish(cache_root: Path, source, sha: str, dest: Path) -> None:
    from reconciler.sources.hf_cache import HfCache
    got = HfCache(cache_root).publish(source, source.revision, "big.bin", dest, where="bench", expected_sha256=sha,
                                      expected_size=None, warn=print)
    if got is None:
        raise RuntimeError("the cached file was not used")


def _fetch(source, sha: str, dest: Path, partial: Path) -> None:
    from reconciler.publish import commit, staged
    from reconciler.sources import hf
    with staged(dest, where="bench") as out:
        hf.fetch_file(source, "big.bin", out, expected_sha256=sha, expected_size=None, partial_dir=partial)
        commit(out, dest, where="bench", expected_sha256=sha)


def _spread(v: list[float]) -> str:
    return f"{fmt_s(statistics.median(v))} ({min(v):.2f}-{max(v):.2f} s)"


def run(work: Path, quick: bool) -> list[Row]:
    """Median of 5 (quick: 2) alternating runs; a second block for a cache on /dev/shm when possible."""
    from bench_download import HubProcess, make_store
    from huggingface_hub import hf_hub_download

    from reconciler.spec import Source
    size = (128 << 20) if quick else GIB
    reps = 2 if quick else 5
    work.mkdir(parents=True, exist_ok=True)
    store, commit = make_store(work, size)
    cache = work / "hf-cache"
    dest = work / "root" / "big.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"ours": [], "download": [], "ln": [], "cp_sync": []}
    old = os.environ.get("HF_ENDPOINT")
    with HubProcess(store, work / "hub.url") as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        try:
            blob = Path(hf_hub_download(REPO_ID, "big.bin", revision=commit, cache_dir=cache,
                                        endpoint=hub.url)).resolve()
            sha = blob.name
            source = Source("bench", REPO_ID, "model", commit)
            for _ in range(reps):
                times["ours"].append(timed_clean(lambda: _publish(cache, source, sha, dest), dest))
                times["download"].append(timed_clean(lambda: _fetch(source, sha, dest, work / "partial"), dest))
                times["ln"].append(timed_clean(lambda: os.link(blob, dest), dest))
                times["cp_sync"].append(timed_clean(lambda: (run_cmd(["cp", str(blob), str(dest)]),
                                                              run_cmd(["sync", str(dest)])), dest))
        finally:
            if old is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = old
        copy_times = _other_fs(cache, blob, source, sha, dest, size, reps)
    return _rows(size, times, copy_times)


def _other_fs(cache: Path, blob: Path, source, sha: str, dest: Path, size: int, reps: int) -> dict | None:
    """The copy path: the same cache on /dev/shm (tmpfs), if it is another filesystem with room."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == dest.parent.stat().st_dev or shutil.disk_usage(shm).free < 2 * size:
        return None
    moved = shm / f"reconcile-bench-{uuid.uuid4().hex[:8]}"
    try:
        run_cmd(["cp", "-a", str(cache), str(moved)])
        moved_blob = moved / blob.relative_to(cache.resolve())
        times: dict[str, list[float]] = {"ours_copy": [], "cp_sync": []}
        for _ in range(reps):
            times["ours_copy"].append(timed_clean(lambda: _publish(moved, source, sha, dest), dest))
            times["cp_sync"].append(timed_clean(lambda: (run_cmd(["cp", str(moved_blob), str(dest)]),
                                                          run_cmd(["sync", str(dest)])), dest))
        return times
    finally:
        shutil.rmtree(moved, ignore_errors=True)


def _rows(size: int, t: dict[str, list[float]], copy: dict | None) -> list[Row]:
    med = {k: statistics.median(v) for k, v in t.items()}
    label = f"7 Hugging Face cache reuse ({size / GIB:.0f} GiB file, cached by hf_hub_download)"
    data = {"bytes": size, "samples_s": {k: [round(x, 3) for x in v] for k, v in t.items()}}
    rows = [
        Row(label, "publish from the cache (hard link + verify) vs download + publish", _spread(t["ours"]),
            f"download {_spread(t['download'])}", f"{med['download'] / med['ours']:.1f}x faster", ">= 2x faster",
            verdict(med["download"] / med["ours"] >= 2), data),
        Row(label, "same vs `cp blob && sync` (a copy)", _spread(t["ours"]), f"cp+sync {_spread(t['cp_sync'])}",
            f"{med['ours'] / med['cp_sync']:.2f}x the time", "<= 1.5x a copy",
            verdict(med["ours"] / med["cp_sync"] <= 1.5)),
        Row(label, "same vs a bare `ln` (no verification)", _spread(t["ours"]), f"ln {_spread(t['ln'])}", "", ""),
    ]
    if copy is not None:
        mc = {k: statistics.median(v) for k, v in copy.items()}
        rows.append(Row(label, "cache on another filesystem (tmpfs): verified copy vs `cp && sync`",
                        _spread(copy["ours_copy"]), f"cp+sync {_spread(copy['cp_sync'])}",
                        f"{mc['ours_copy'] / mc['cp_sync']:.2f}x the time", "<= 1.5x a copy",
                        verdict(mc["ours_copy"] / mc["cp_sync"] <= 1.5),
                        {"samples_s": {k: [round(x, 3) for x in v] for k, v in copy.items()}}))
    return rows
