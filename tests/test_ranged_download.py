"""Large downloads over several connections: parallel Range requests, written and hashed in order,
resumable, recovering a dropped range; the hub's per-connection bandwidth cap."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from reconcile_testing.hub import LocalHub, add_revision

from reconciler.errors import IntegrityError
from reconciler.layout import partial_key
from reconciler.publish import commit, staged
from reconciler.sources import hf, ranged
from reconciler.spec import Source
from tests.fixtures.hub import MODEL, MODEL_FILES, sha256

BIG = "model.safetensors"  # 400 kB LFS file
BIG_BYTES = MODEL_FILES[BIG]
SRC = Source("tiny", MODEL, "model", "main")
CHUNK = 64 * 1024


@pytest.fixture
def small_ranges(monkeypatch):
    """Ranges of 64 KiB from 128 KiB up, so a 400 kB file takes 7 ranges (the mechanism, at test size)."""
    monkeypatch.setattr(ranged, "CHUNK", CHUNK)
    monkeypatch.setattr(ranged, "MIN_PARALLEL", 2 * CHUNK)


def _fetch(tmp_path: Path, connections: int, expected: str | None = None) -> tuple[hf.RemoteFile, Path]:
    final = tmp_path / "root" / BIG
    with staged(final, where=BIG) as out:
        got = hf.fetch_file(SRC, BIG, out, expected_sha256=expected, expected_size=None,
                            partial_dir=tmp_path / "partial", connections=connections)
        commit(out, final, where=BIG, expected_sha256=expected)
    return got, final


def _ranges(hub) -> list[tuple[int, int]]:
    out = []
    for r in hub.requests(method="GET", file=BIG):
        first, _, last = r.range.removeprefix("bytes=").partition("-")
        out.append((int(first), int(last)))
    return out


def test_parallel_ranges_give_the_same_verified_file(clean_hub, tmp_path, small_ranges):
    got, final = _fetch(tmp_path, connections=4, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES and got.sha256 == sha256(BIG_BYTES)
    spans = sorted(_ranges(clean_hub))
    assert len(spans) == -(-len(BIG_BYTES) // CHUNK), "one GET per range"
    assert spans[0][0] == 0 and spans[-1][1] == len(BIG_BYTES) - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:])), "ranges tile the file exactly once"
    assert not list((tmp_path / "partial").iterdir())


def test_one_connection_is_one_stream(clean_hub, tmp_path, small_ranges):
    _fetch(tmp_path, connections=1)
    gets = clean_hub.requests(method="GET", file=BIG)
    assert len(gets) == 1 and gets[0].range is None


def test_parallel_download_resumes_from_the_partial_prefix(clean_hub, tmp_path, small_ranges):
    have = 100_000
    key = partial_key(SRC.repo, SRC.type, clean_hub.commits["model"], BIG, None, None)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / key).write_bytes(BIG_BYTES[:have])
    _, final = _fetch(tmp_path, connections=3)
    assert final.read_bytes() == BIG_BYTES
    spans = sorted(_ranges(clean_hub))
    assert spans[0] == (have, have + CHUNK - 1), "the first range starts where the partial file ends"


def test_a_dropped_range_is_fetched_again(clean_hub, tmp_path, small_ranges):
    cut = clean_hub.cut(10_000, path=BIG, times=2)
    _, final = _fetch(tmp_path, connections=4, expected=sha256(BIG_BYTES))
    assert cut.fired == 2 and final.read_bytes() == BIG_BYTES
    assert len(clean_hub.requests(method="GET", file=BIG)) > -(-len(BIG_BYTES) // CHUNK)


def test_corrupt_bytes_in_one_range_never_publish(clean_hub, tmp_path, small_ranges):
    clean_hub.corrupt(offset=300_000, path=BIG)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        _fetch(tmp_path, connections=4, expected=sha256(BIG_BYTES))
    assert not (tmp_path / "root" / BIG).exists()
    assert not list((tmp_path / "partial").iterdir()), "bad bytes are not kept for a resume"


def test_assemble_writes_in_order_whatever_order_ranges_arrive():
    data = bytes(range(256)) * 40  # 10,240 bytes, 10 ranges of 1,024

    def fetch(a: int, b: int) -> bytearray:
        time.sleep(0.002 * (10 - a // 1024))  # later ranges come back first
        return bytearray(data[a:b + 1])

    out = bytearray()
    ranged.assemble(fetch, out.extend, 0, len(data), connections=4, chunk=1024)
    assert bytes(out) == data


def test_assemble_writes_every_range_before_a_failure_then_raises():
    data = bytes(10_000)
    seen = threading.Event()

    def fetch(a: int, b: int) -> bytearray:
        if a == 3000:
            seen.set()
            raise ranged.ShortRange("cut")
        return bytearray(data[a:b + 1])

    out = bytearray()
    with pytest.raises(ranged.ShortRange):
        ranged.assemble(fetch, out.extend, 0, len(data), connections=2, chunk=1000)
    assert seen.is_set() and len(out) == 3000, "ranges 0-2 written: the resume point is as far as it can be"


def test_hub_caps_each_connection(tmp_path):
    """4 MB at 8 MB/s per connection takes >= 0.5 s on one stream; 4 connections together fetch 4x as much
    in about the same time (the cap is per connection, not per server)."""
    import httpx2
    payload = bytes(4_000_000)
    add_revision(tmp_path / "store", "cap/repo", "model", {"w.bin": payload})
    with LocalHub(tmp_path / "store", rate_per_connection=8e6) as hub:
        url = f"{hub.url}/cap/repo/resolve/main/w.bin"
        t0 = time.monotonic()
        assert len(httpx2.get(url).content) == len(payload)
        one = time.monotonic() - t0
        t0 = time.monotonic()
        got: list[int] = []
        threads = [threading.Thread(target=lambda: got.append(len(httpx2.get(url).content))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        four = time.monotonic() - t0
    assert one >= 0.5 - 0.02, f"capped: {one:.2f} s"
    assert got == [len(payload)] * 4 and four < 2 * one + 1, f"one {one:.2f} s, four in parallel {four:.2f} s"
