"""Large downloads over several connections: `Range` requests fetched in parallel, written in order.

Why: one TCP stream over a WAN is bounded by its window and round-trip time, not by the link; like
hf_transfer, a large file is cut into CHUNK-sized ranges fetched on `connections` connections at
once. Unlike a scatter-write, chunks are handed to the writer **in file order**, so the file is
still hashed once while written and the partial file kept for resume is always a prefix of the
file (resume stays a single `Range: bytes=N-`). Memory is bounded: no chunk is requested more than
`WINDOW` chunks per connection ahead of the one being written.

`download_range` is the one place a byte range is fetched; `assemble` knows nothing about HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

CHUNK = 8 << 20  # bytes per Range request: large enough that per-request cost vanishes (hf_transfer: 10 MB)
WINDOW = 2  # chunks per connection that may be fetched ahead of the next one to write
MIN_PARALLEL = 4 * CHUNK  # below this, one stream is as fast (and the request log stays simple)


class RangeNotHonoured(Exception):
    """The server answered a Range request with something other than exactly that range (e.g. 200)."""


class ShortRange(Exception):
    """A range's body ended before its last byte (a dropped connection): worth another try."""


def download_range(stream: Callable, url: str, headers: dict[str, str], first: int, last: int) -> bytearray:
    """Bytes `first..last` (inclusive) of `url`, exactly, in one GET with `Range: bytes=first-last`.

    `stream(url, headers)` is a context manager yielding (response, body chunk iterator) whose
    response has `status_code` and `headers` and was already checked for HTTP errors. Raises
    RangeNotHonoured when the answer is not a 206 for this very range, ShortRange when it ends early.
    """
    want = last - first + 1
    buf = bytearray()
    with stream(url, dict(headers, Range=f"bytes={first}-{last}")) as (r, body):
        if r.status_code != 206 or not str(r.headers.get("Content-Range", "")).startswith(f"bytes {first}-{last}/"):
            raise RangeNotHonoured(f"asked for bytes {first}-{last}, got HTTP {r.status_code} "
                                   f"{r.headers.get('Content-Range', '(no Content-Range)')}")
        for chunk in body:
            buf += chunk
            if len(buf) > want:
                break
    if len(buf) != want:
        raise ShortRange(f"range {first}-{last}: {len(buf)} of {want} bytes before the connection closed")
    return buf


class _Board:
    """What the fetching threads and the writing thread share, under one condition variable."""

    def __init__(self, count: int, ahead: int):
        self.cond = threading.Condition()
        self.count, self.ahead = count, ahead
        self.next_fetch = 0  # the next chunk index a fetcher may take
        self.next_write = 0  # the chunk index the writer waits for
        self.done: dict[int, bytearray] = {}
        self.error: BaseException | None = None
        self.stop = False

    def take(self) -> int | None:
        """The next chunk index to fetch, waiting while the window is full; None when there is none."""
        with self.cond:
            while not self.stop and self.error is None and self.next_fetch < self.count \
                    and self.next_fetch >= self.next_write + self.ahead:
                self.cond.wait()
            if self.stop or self.error is not None or self.next_fetch >= self.count:
                return None
            self.next_fetch += 1
            return self.next_fetch - 1

    def put(self, i: int, data: bytearray | None, error: BaseException | None = None) -> None:
        with self.cond:
            if error is not None:
                self.error = self.error or error
            else:
                self.done[i] = data
            self.cond.notify_all()

    def wait_for(self, i: int) -> bytearray:
        """Chunk i once fetched; re-raises a fetcher's error when chunk i can no longer arrive."""
        with self.cond:
            while i not in self.done and self.error is None:
                self.cond.wait()
            if i not in self.done:
                raise self.error
            self.next_write = i + 1
            self.cond.notify_all()
            return self.done.pop(i)


def assemble(fetch: Callable[[int, int], bytearray], write: Callable[[bytearray], None], start: int, size: int,
             connections: int, chunk: int | None = None) -> None:
    """Fetch bytes `start..size-1` as ranges of `chunk` on up to `connections` threads; `write` them in order.

    Every chunk that arrived before a failure is written before the failure is raised, so the caller's
    resume point moves as far forward as possible. Threads still fetching when this returns or raises
    stop after their current range (its bytes are dropped).
    """
    chunk = chunk or CHUNK
    ranges = [(a, min(a + chunk, size) - 1) for a in range(start, size, chunk)]
    board = _Board(len(ranges), max(1, connections) * WINDOW)

    def fetcher() -> None:
        while (i := board.take()) is not None:
            try:
                board.put(i, fetch(*ranges[i]))
            except BaseException as e:  # handed to the writing thread, which raises it
                board.put(i, None, e)
                return

    threads = [threading.Thread(target=fetcher, name=f"reconcile-range-{n}", daemon=True)
               for n in range(min(connections, len(ranges)))]
    for t in threads:
        t.start()
    try:
        for i in range(len(ranges)):
            write(board.wait_for(i))
    finally:
        with board.cond:
            board.stop = True
            board.cond.notify_all()
