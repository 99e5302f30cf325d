"""Download: `hf.fetch_file` (+ publish) from the local stand-in hub vs `curl` of the same URL.

The hub runs in its own process (`python -m reconcile_testing.hub`), so server and client do not
share a GIL. Our side is what apply does for a fetch: `staged` -> `fetch_file` (hash while
writing, partial file kept for resume) -> `commit` (fsync, rename, fsync the folder). Two
baselines, in the same run: `curl -s -o FILE URL` (no fsync: its bytes may still sit in the
page cache when it exits) and `curl -s -o FILE URL && sync FILE` (coreutils `sync FILE`
fsyncs the file: the same durability as our publish). Runs alternate (ours, curl,
curl+sync) so drifting machine load hits all three alike; each figure is the median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from _util import MB, Row, fmt_mbps, fmt_s, python, run_cmd, verdict, warm, write_random_file

GOAL = 0.8  # our throughput over curl's
REPO_ID = "bench/big-file"


class HubProcess:
    """`python -m reconcile_testing.hub --store DIR --port-file F` in a child process."""

    def __init__(self, store: Path, port_file: Path):
        self.store, self.port_file = store, port_file
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> HubProcess:
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([python(), "-m", "reconcile_testing.hub", "--store", str(self.store),
                                      "--port-file", str(self.port_file)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the local hub did not start")
            time.sleep(0.05)
        self.url = self.port_file.read_text().strip()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _fetch(source, dest: Path, partial: Path) -> None:
    """What apply does for one fetched file, minus the plan and provenance."""
    from reconciler.publish import commit, staged
    from reconciler.sources import hf
    with staged(dest, where="bench") as out:
        got = hf.fetch_file(source, "big.bin", out, expected_sha256=None, expected_size=None, partial_dir=partial)
        commit(out, dest, where="bench", expected_sha256=got.sha256)


def _timed_clean(fn, dest: Path) -> float:
    """Time `fn()` from a clean slate: nothing dirty to write back, no old output."""
    dest.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    if dest.stat().st_size == 0:
        raise RuntimeError(f"{dest} is empty after the download")
    dest.unlink()
    return seconds


def make_store(work: Path, size: int) -> tuple[Path, str]:
    """A hub store holding one LFS file of `size` random bytes; returns (store, commit)."""
    from reconcile_testing.hub import add_revision
    blob = write_random_file(work / "blob.bin", size, seed=42)
    store = work / "store"
    commit = add_revision(store, REPO_ID, "model", {"big.bin": blob})
    blob.unlink()  # the store holds its own copy
    warm(list(store.rglob("big.bin")))
    return store, commit


def run(work: Path, quick: bool) -> list[Row]:
    """Median of 3 (quick: 2) alternating runs of fetch_file, curl and curl+sync."""
    from huggingface_hub import hf_hub_url

    from reconciler.spec import Source
    size = (128 << 20) if quick else (1 << 30)
    reps = 2 if quick else 3
    work.mkdir(parents=True, exist_ok=True)
    store, commit = make_store(work, size)
    dest = work / "out" / "big.bin"
    dest.parent.mkdir(exist_ok=True)
    times: dict[str, list[float]] = {"ours": [], "curl": [], "curl_sync": []}
    old = os.environ.get("HF_ENDPOINT")
    with HubProcess(store, work / "hub.url") as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        try:
            source = Source("bench", REPO_ID, "model", commit)
            url = hf_hub_url(REPO_ID, "big.bin", revision=commit, endpoint=hub.url)
            curl = ["curl", "-sfL", "-o", str(dest), url]
            for _ in range(reps):
                times["ours"].append(_timed_clean(lambda: _fetch(source, dest, work / "partial"), dest))
                times["curl"].append(_timed_clean(lambda: run_cmd(curl), dest))
                times["curl_sync"].append(_timed_clean(lambda: (run_cmd(curl), run_cmd(["sync", str(dest)])), dest))
        finally:
            if old is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = old
    return _rows(size, times)


def _rows(size: int, times: dict[str, list[float]]) -> list[Row]:
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, curl, synced = med["ours"], med["curl"], med["curl_sync"]
    data = {"bytes": size, "samples_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()}}
    label = f"2 download ({size / MB:,.0f} MB, hub in its own process)"
    return [
        Row(label, "fetch_file + publish (fsync) vs `curl -o`", f"{fmt_mbps(size, ours)} ({fmt_s(ours)})",
            f"curl {fmt_mbps(size, curl)} ({fmt_s(curl)})", f"{curl / ours:.2f}x", f">= {GOAL}x",
            verdict(curl / ours >= GOAL), data),
        Row(label, "same, fsync-fair baseline", f"{fmt_mbps(size, ours)}",
            f"curl && sync FILE {fmt_mbps(size, synced)} ({fmt_s(synced)})", f"{synced / ours:.2f}x", f">= {GOAL}x",
            verdict(synced / ours >= GOAL), {}),
    ]
