"""The staging file that writes whole blocks past the page cache: same bytes on every path, errors surface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import directio
from reconciler.directio import BLOCK, DIRECT_FROM, StagingFile
from reconciler.publish import HashingWriter

K = 4096

# Each case: the sizes of successive writes; "F" flushes (someone reads the bytes back) in between.
CASES = {
    "empty": [],
    "one byte": [1],
    "one page": [K],
    "just under a block": [BLOCK - 1],
    "exactly a block": [BLOCK],
    "a block and a byte": [BLOCK + 1],
    "many small writes across blocks": [4097] * 5000,
    "big write spanning blocks, odd tail": [3 * BLOCK + 17],
    "more blocks than the ring": [BLOCK] * (directio.RING + 2) + [5],
    "flush mid-block, then blocks": [100, "F", 2 * BLOCK + 3, "F", 7],
    "flush at a block edge": [BLOCK, "F", BLOCK],
    "flush in the direct phase": [DIRECT_FROM + 5, "F", BLOCK, 3],
    "flush at a block edge of the direct phase": [DIRECT_FROM + BLOCK, "F", BLOCK + 1],
    "the switch inside one write": [DIRECT_FROM - 3, 2 * BLOCK + 9],
    # castwrite's pattern: a tensor's head up to a chunk boundary, whole chunks, an odd tail, the next head
    "heads, whole chunks, tails": [88 + 4096 * 3, BLOCK, BLOCK, 1234, BLOCK - 1234, BLOCK, 10, 4086, 7 * K, 3],
}


def _payload(n: int, seed: int) -> bytes:
    return (seed.to_bytes(4, "little") + os.urandom(60)) * (n // 64) + os.urandom(n % 64)


def _aligned(data: bytes) -> memoryview:
    """`data` in a writable page-aligned buffer (what castwrite hands over: written in place, no copy)."""
    import mmap

    if not data:
        return memoryview(b"")
    m = mmap.mmap(-1, len(data))
    m[:] = data
    return memoryview(m)


def _write(path: Path, steps: list, buffers=memoryview) -> bytes:
    want = bytearray()
    f = StagingFile(path)
    for i, step in enumerate(steps):
        if step == "F":
            f.flush()
            assert path.read_bytes() == bytes(want), "after flush another descriptor reads every accepted byte"
            continue
        data = _payload(step, i)
        assert f.write(buffers(data)) == len(data)
        want += data
    f.close()
    return bytes(want)


@pytest.mark.parametrize("buffers", [memoryview, _aligned], ids=["copied", "aligned-in-place"])
@pytest.mark.parametrize("steps", CASES.values(), ids=CASES.keys())
def test_the_file_holds_exactly_the_bytes_written(tmp_path, steps, buffers):
    path = tmp_path / "out.bin"
    want = _write(path, steps, buffers)
    assert path.stat().st_size == len(want)
    assert path.read_bytes() == want


@pytest.mark.parametrize("steps", [CASES["big write spanning blocks, odd tail"], CASES["flush mid-block, then blocks"]])
def test_same_bytes_where_there_is_no_o_direct(tmp_path, monkeypatch, steps):
    """A platform without O_DIRECT (macOS): every block goes through the page cache, same bytes."""
    monkeypatch.setattr(directio, "_O_DIRECT", 0)
    f = StagingFile(tmp_path / "probe")
    f.write(b"x" * (DIRECT_FROM + BLOCK))
    assert not f.direct
    f.abort()
    want = _write(tmp_path / "out.bin", steps)
    assert (tmp_path / "out.bin").read_bytes() == want


@pytest.mark.parametrize("steps", [CASES["big write spanning blocks, odd tail"]])
def test_same_bytes_on_tmpfs(steps):
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable tmpfs at /dev/shm")
    path = shm / f"reconcile-directio-{os.getpid()}.bin"
    try:
        want = _write(path, steps)
        assert path.read_bytes() == want
    finally:
        path.unlink(missing_ok=True)


def test_whole_blocks_go_direct_until_someone_reads_back(tmp_path):
    f = StagingFile(tmp_path / "x")
    f.write(b"\1" * (DIRECT_FROM - 1))
    assert not f.direct  # small files stay in the page cache
    f.write(b"\1" * (BLOCK + 11))
    if not f.direct:
        f.abort()
        pytest.skip("this filesystem refuses O_DIRECT")
    f.flush()
    assert not f.direct  # the unaligned tail went through the page cache, and so does what follows
    f.write(b"\2" * 10)
    f.close()
    assert (tmp_path / "x").read_bytes() == b"\1" * (DIRECT_FROM + BLOCK + 10) + b"\2" * 10


def test_hashing_writer_digest_matches_the_file(tmp_path):
    import hashlib

    data = _payload(2 * BLOCK + 12345, 7)
    with HashingWriter(tmp_path / "h") as w:
        for i in range(0, len(data), 3 * (1 << 20) + 1):
            w.write(data[i:i + 3 * (1 << 20) + 1])
    assert w.hexdigest() == hashlib.sha256(data).hexdigest() == hashlib.sha256((tmp_path / "h").read_bytes()).hexdigest()


_FAULT = r"""
import errno, resource, signal, sys
from reconciler.publish import HashingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))
w = HashingWriter(sys.argv[1])
try:
    with w:
        for _ in range(8):
            w.write(b"x" * (8 << 20))
except OSError as e:
    print("raised", errno.errorcode[e.errno])
    sys.exit(0)
print("no error")
sys.exit(1)
"""


def test_a_write_error_on_the_io_thread_reaches_the_writer_and_nothing_hangs(tmp_path):
    """A real fault (the file-size limit, EFBIG at the third block) raised to the caller, no deadlock."""
    res = subprocess.run([sys.executable, "-c", _FAULT, str(tmp_path / "big")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "raised EFBIG" in res.stdout


CHUNK_CASES = {  # (elements, elements per chunk, itemsize, stream offset of the tensor's first byte)
    "starts on a boundary": (10_000, 1024, 2, 0),
    "after a header": (10_000, 1024, 2, 88),
    "smaller than the head": (5, 1024, 2, 88),
    "fp32 after an odd fp16 tensor": (10_000, 512, 4, 4096 * 3 + 2),
    "exactly one chunk after the head": (1024 + 980, 1024, 2, 88),
    "empty": (0, 1024, 2, 88),
}


@pytest.mark.parametrize("case", CHUNK_CASES.values(), ids=CHUNK_CASES.keys())
def test_castwrite_chunks_tile_the_tensor_and_meet_chunk_boundaries(case):
    from reconciler.models.castwrite import _chunks

    n, step, itemsize, at = case
    ranges = list(_chunks(n, step, itemsize, at))
    assert [f for f, _ in ranges] == [sum(c for _, c in ranges[:i]) for i in range(len(ranges))]
    assert sum(c for _, c in ranges) == n and all(0 < c <= step for _, c in ranges)
    chunk = step * itemsize
    aligned = ((-at) % chunk) % itemsize == 0
    starts = [at + f * itemsize for f, _ in ranges[1:]]
    if aligned:  # every range after the first starts on a chunk boundary of the stream
        assert all(s % chunk == 0 for s in starts)


def _dir_fsyncs(monkeypatch) -> list[str]:
    """Record the folders os.fsync is called on (the real fsync still runs)."""
    import stat

    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def _publish(final: Path, data: bytes) -> None:
    from reconciler.publish import commit, staged

    with staged(final, where=final.name) as out:
        with out.open() as f:
            f.write(data)
        commit(out, final, where=final.name, expected_sha256=None)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the fsynced folders")
def test_folder_fsyncs_are_batched_once_per_folder(tmp_path, monkeypatch):
    from reconciler.publish import batched_dir_syncs

    seen = _dir_fsyncs(monkeypatch)
    _publish(tmp_path / "alone.bin", b"x")
    assert seen == [str(tmp_path)]  # outside a batch: the rename is made durable at once
    seen.clear()
    with batched_dir_syncs():
        with batched_dir_syncs():  # nested: only the outermost batch syncs
            for i in range(3):
                _publish(tmp_path / "a" / f"{i}.bin", b"a")
        for i in range(2):
            _publish(tmp_path / "b" / f"{i}.bin", b"b")
        assert seen == []
        assert (tmp_path / "a" / "2.bin").read_bytes() == b"a"  # renamed, visible before the sync
    assert sorted(seen) == [str(tmp_path / "a"), str(tmp_path / "b")]
