"""A local stand-in for the Hugging Face hub: serves a folder of repos over the hub's real protocol.

`add_revision` builds the store (layout in `repo.py`); `LocalHub` serves it from a background thread
and lets tests inject faults; `python -m reconcile_testing.hub --store DIR` serves it in the foreground (for
`make demo`). Routes and error codes are described in `server.py`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from .repo import LFS_MIN_SIZE, LFS_SUFFIXES, Store, add_revision, is_lfs
from .server import Fault, FaultBoard, HubServer, LoggedRequest

__all__ = ["LFS_MIN_SIZE", "LFS_SUFFIXES", "Fault", "LocalHub", "LoggedRequest", "Store", "add_revision", "is_lfs"]


class LocalHub:
    """A stand-in hub serving a store on 127.0.0.1 from a background thread.

    Use as a context manager (`with LocalHub(store) as hub: hub.url`) or call start()/stop().
    Tests arm faults with fail/cut/corrupt/stall and read `log()` / `requests()`.
    `rate_per_connection` (bytes/s) caps how fast each connection sends a file body, so loopback
    behaves like a WAN link where one stream cannot fill the pipe.
    """

    def __init__(self, store: str | Path, *, host: str = "127.0.0.1", port: int = 0, quiet: bool = True,
                 rate_per_connection: float | None = None):
        self.store = Store(store)
        self.rate = rate_per_connection  # bytes/s each connection may send a file body at (a WAN stand-in)
        self.board = FaultBoard()
        self._addr = (host, port)
        self._quiet = quiet
        self._server: HubServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint to use as HF_ENDPOINT, e.g. http://127.0.0.1:38517."""
        if self._server is None:
            raise RuntimeError("the hub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        """Bind the port (0 = a free one) and serve in a daemon thread."""
        self._server = HubServer(self._addr, self.store, self.board, self._quiet, self.rate)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="reconcile-local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults and log (for tests) -------------------------------------------------------------
    def fail(self, times: int = 1, *, status: int = 500, path: str | None = None, method: str | None = None) -> Fault:
        """Answer `status` to the next `times` matching requests (any request when path is None)."""
        return self.board.arm(Fault("fail", times, path, method, status=status))

    def cut(self, after: int, *, path: str | None = None, times: int = 1) -> Fault:
        """Drop the connection after `after` bytes of the next `times` GET bodies."""
        return self.board.arm(Fault("cut", times, path, "GET", after=after))

    def corrupt(self, *, offset: int = 0, path: str | None = None, times: int = 1) -> Fault:
        """Flip the byte at file offset `offset` in the next `times` GET bodies."""
        return self.board.arm(Fault("corrupt", times, path, "GET", offset=offset))

    def stall(self, seconds: float, *, after: int = 0, path: str | None = None, times: int = 1) -> Fault:
        """Sleep `seconds` after `after` body bytes of the next `times` GETs."""
        return self.board.arm(Fault("stall", times, path, "GET", after=after, seconds=seconds))

    def reset(self) -> None:
        """Disarm all faults and clear the request log."""
        self.board.reset()

    def log(self) -> list[LoggedRequest]:
        """Every request answered since the last reset, oldest first."""
        return self.board.log()

    def requests(self, *, method: str | None = None, file: str | None = None) -> list[LoggedRequest]:
        """The logged requests for a method and/or a repo file path."""
        return [r for r in self.board.log()
                if (method is None or r.method == method) and (file is None or r.file == file)]
