"""Download: `hf.fetch_file` (+ publish) from the local stand-in hub vs `curl` of the same URL.

The hub runs in its own process (`python -m reconcile_testing.hub`), so server and client do not
share a GIL. Our side is what apply does for a fetch: `staged` -> `fetch_file` (hash while
writing, partial file kept for resume) -> `commit` (fsync, rename, fsync the folder). Two
baselines, in the same run: `curl -s -o FILE URL` (no fsync: its bytes may still sit in the
page cache when it exits) and `curl -s -o FILE URL && sync FILE` (coreutils `sync FILE`
fsyncs the file: the same durability as our publish). Runs alternate (ours, curl,
curl+sync) so drifting machine load hits all three alike; ratios are medians of per-round ratios.

Over a capped link: the hub is started with `--rate 50` (each connection's file bodies paced at
50 MB/s, like a WAN flow bounded by its window and RTT); ours with 4 connections (parallel Range
requests) against single-stream curl, and ours with 1 connection for context.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

from _util import (
    MB,
    Row,
    alternate,
    fmt_mbps,
    fmt_s,
    pairs_for,
    python,
    ratio_cell,
    run_cmd,
    timed_clean,
    verdict,
    warm,
    write_random_file,
)

GOAL = 0.8  # our throughput over curl's
CAP_MB_S = 50.0  # per-connection cap of the WAN stand-in
CAP_GOAL = 3.0  # 4 connections over single-stream curl, under the cap
REPO_ID = "bench/big-file"


class HubProcess:
    """`python -m reconcile_testing.hub --store DIR --port-file F` in a child process."""

    def __init__(self, store: Path, port_file: Path, rate_mb_s: float | None = None):
        self.store, self.port_file = store, port_file
        self.extra = ["--rate", str(rate_mb_s)] if rate_mb_s else []
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> HubProcess:
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([python(), "-m", "reconcile_testing.hub", "--store", str(self.store),
                                      "--port-file", str(self.port_file), *self.extra], stdout=subprocess.DEVNULL)
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


def _fetch(source, dest: Path, partial: Path, connections: int = 4) -> None:
    """What apply does for one fetched file (default connections), minus the plan and provenance."""
    from reconciler.publish import commit, staged
    from reconciler.sources import hf
    with staged(dest, where="bench") as out:
        got = hf.fetch_file(source, "big.bin", out, expected_sha256=None, expected_size=None, partial_dir=partial,
                            connections=connections)
        commit(out, dest, where="bench", expected_sha256=got.sha256)



def make_store(work: Path, size: int) -> tuple[Path, str]:
    """A hub store holding one LFS file of `size` random bytes; returns (store, commit)."""
    from reconcile_testing.hub import add_revision
    blob = write_random_file(work / "blob.bin", size, seed=42)
    store = work / "store"
    commit = add_revision(store, REPO_ID, "model", {"big.bin": blob})
    blob.unlink()  # the store holds its own copy
    warm(list(store.rglob("big.bin")))
    return store, commit


class _Endpoint:
    """HF_ENDPOINT set to a hub for the duration of a block."""

    def __init__(self, url: str):
        self.url, self.old = url, os.environ.get("HF_ENDPOINT")

    def __enter__(self) -> None:
        os.environ["HF_ENDPOINT"] = self.url

    def __exit__(self, *exc) -> None:
        if self.old is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = self.old


def run(work: Path, quick: bool) -> list[Row]:
    """Loopback: fetch_file vs curl and curl+sync; WAN stand-in (50 MB/s per connection): 4 connections vs curl."""
    work.mkdir(parents=True, exist_ok=True)
    return _loopback_rows(work / "loopback", quick) + _capped_rows(work / "capped", quick)


def _clients(work: Path, url_of, commit: str) -> tuple[Path, dict]:
    from huggingface_hub import hf_hub_url

    from reconciler.spec import Source
    dest = work / "out" / "big.bin"
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = Source("bench", REPO_ID, "model", commit)
    curl = ["curl", "-sfL", "-o", str(dest), hf_hub_url(REPO_ID, "big.bin", revision=commit, endpoint=url_of)]
    return dest, {
        "ours": lambda: timed_clean(lambda: _fetch(source, dest, work / "partial"), dest),
        "ours_1": lambda: timed_clean(lambda: _fetch(source, dest, work / "partial", connections=1), dest),
        "curl": lambda: timed_clean(lambda: run_cmd(curl), dest),
        "curl_sync": lambda: timed_clean(lambda: (run_cmd(curl), run_cmd(["sync", str(dest)])), dest),
    }


def _loopback_rows(work: Path, quick: bool) -> list[Row]:
    size = (128 << 20) if quick else (1 << 30)
    work.mkdir(parents=True, exist_ok=True)
    store, commit = make_store(work, size)
    with HubProcess(store, work / "hub.url") as hub, _Endpoint(hub.url):
        _, fns = _clients(work, hub.url, commit)
        ours, curl, synced = alternate([fns["ours"], fns["curl"], fns["curl_sync"]], pairs_for(quick))
    return _rows(size, {"ours": ours, "curl": curl, "curl_sync": synced})


def _rows(size: int, times: dict[str, list[float]]) -> list[Row]:
    med = {k: statistics.median(v) for k, v in times.items()}
    ours, curl, synced = med["ours"], med["curl"], med["curl_sync"]
    vs_curl = [c / o for o, c in zip(times["ours"], times["curl"])]  # throughput ratio per round
    vs_sync = [c / o for o, c in zip(times["ours"], times["curl_sync"])]
    data = {"bytes": size, "samples_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()}}
    label = f"2 download ({size / MB:,.0f} MB, hub in its own process, loopback)"
    return [
        Row(label, "fetch_file (4 connections) + publish (fsync) vs `curl -o`", f"{fmt_mbps(size, ours)} ({fmt_s(ours)})",
            f"curl {fmt_mbps(size, curl)} ({fmt_s(curl)})", ratio_cell(vs_curl), f">= {GOAL}x",
            verdict(statistics.median(vs_curl) >= GOAL), data),
        Row(label, "same, fsync-fair baseline", f"{fmt_mbps(size, ours)}",
            f"curl && sync FILE {fmt_mbps(size, synced)} ({fmt_s(synced)})", ratio_cell(vs_sync), f">= {GOAL}x",
            verdict(statistics.median(vs_sync) >= GOAL), {}),
    ]


def _capped_rows(work: Path, quick: bool) -> list[Row]:
    """The hub capped at CAP_MB_S per connection (a WAN stand-in): our 4 connections vs single-stream curl."""
    size = (64 << 20) if quick else (256 << 20)
    work.mkdir(parents=True, exist_ok=True)
    store, commit = make_store(work, size)
    with HubProcess(store, work / "hub.url", rate_mb_s=CAP_MB_S) as hub, _Endpoint(hub.url):
        _, fns = _clients(work, hub.url, commit)
        ours, curl, one = alternate([fns["ours"], fns["curl"], fns["ours_1"]], pairs_for(quick))
    rs = [c / o for o, c in zip(ours, curl)]
    med = {k: statistics.median(v) for k, v in (("ours", ours), ("curl", curl), ("ours_1", one))}
    data = {"bytes": size, "cap_mb_s_per_connection": CAP_MB_S,
            "samples_s": {"ours_4": ours, "curl": curl, "ours_1": one}, "ratios": rs}
    label = f"2 download over a capped link ({size / MB:,.0f} MB, {CAP_MB_S:g} MB/s per connection)"
    return [
        Row(label, "`apply --connections 4` (Range requests) vs single-stream `curl -o`",
            f"{fmt_mbps(size, med['ours'])} ({fmt_s(med['ours'])})", f"curl {fmt_mbps(size, med['curl'])}",
            ratio_cell(rs), f">= {CAP_GOAL}x", verdict(statistics.median(rs) >= CAP_GOAL), data),
        Row(label, "context: ours with 1 connection", f"{fmt_mbps(size, med['ours_1'])}",
            f"curl {fmt_mbps(size, med['curl'])}", f"{med['curl'] / med['ours_1']:.2f}x", "", "", {}),
    ]
