"""HTTP server speaking enough of the Hugging Face hub protocol for the real `huggingface_hub` client.

Routes (repo ids may be `owner/name` or `name`; `rev` is a branch or a 40-hex commit, URL-quoted):

* `HEAD|GET /{repo}/resolve/{rev}/{path}` and `/datasets/{repo}/resolve/{rev}/{path}`: the file, with
  `X-Repo-Commit`, `ETag` (quoted sha256 for LFS files, git blob sha1 otherwise), `X-Linked-Etag` and
  `X-Linked-Size` for LFS files, `Content-Length`, `Accept-Ranges: bytes`; GET honours `Range` (206).
  Bodies are streamed from disk with sendfile. No `X-Xet-*` header is ever sent (it would switch the
  client to the Xet protocol).
* `GET /api/{models|datasets}/{repo}[/revision/{rev}]`: repo info (`sha`, `siblings`, `gated`, ...).
* `GET /api/{models|datasets}/{repo}/tree/{rev}[/{path}]?recursive=true`: the file listing.

Errors carry `X-Error-Code` like the real hub: `RepoNotFound` (401 without a token, else 404),
`RevisionNotFound` (404), `EntryNotFound` (404), `GatedRepo` (401 without a token, 403 with a token
the repo does not list). As on the real hub, a gated repo's metadata and listing stay public; only
its file contents need an accepted token.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .repo import Revision, Store, info_json, tree_json

_CHUNK = 1024 * 1024
_PACE_SLICE = 256 * 1024  # bytes per paced sendfile: ~5 ms at 50 MB/s, smooth enough for a WAN stand-in


# -- fault injection and the request log (set from tests at run time) -------------------------------
@dataclass
class Fault:
    """One armed fault: what it does, which requests it hits, and how many more times it fires.

    kind: "fail" (answer `status`), "cut" (drop the connection after `after` body bytes),
    "corrupt" (flip the byte at file offset `offset`), "stall" (sleep `seconds` after `after` body bytes).
    `path` (a file path in the repo) and `method` narrow the requests it applies to; None = any.
    """

    kind: str
    times: int = 1
    path: str | None = None
    method: str | None = None
    status: int = 500
    after: int = 0
    offset: int = 0
    seconds: float = 0.0
    fired: int = 0

    def matches(self, kind: str, method: str, path: str | None) -> bool:
        """Whether this fault applies to a request (and still has shots left)."""
        return (self.kind == kind and self.times > 0 and (self.path is None or self.path == path)
                and (self.method is None or self.method == method))


@dataclass(frozen=True)
class LoggedRequest:
    """One request the hub answered: what was asked and what it replied."""

    method: str
    url: str  # the request path, as sent (still URL-quoted)
    file: str | None  # the repo file path for resolve requests
    range: str | None  # the Range header, e.g. "bytes=1024-"
    status: int
    token: str | None  # the bearer token sent, if any


class FaultBoard:
    """Thread-safe set of armed faults plus the request log."""

    def __init__(self):
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[LoggedRequest] = []

    def arm(self, fault: Fault) -> Fault:
        """Add a fault; returns it so a test can read `fired` later."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def take(self, kind: str, method: str, path: str | None,
             applies: Callable[[Fault], bool] = lambda f: True) -> Fault | None:
        """The first matching fault of a kind that `applies` here, consuming one of its shots.

        `applies` keeps a fault armed for a request it could not affect (e.g. a cut beyond the range served).
        """
        with self._lock:
            for f in self._faults:
                if f.matches(kind, method, path) and applies(f):
                    f.times -= 1
                    f.fired += 1
                    return f
        return None

    def record(self, entry: LoggedRequest) -> None:
        """Append one answered request to the log."""
        with self._lock:
            self._log.append(entry)

    def log(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def faults(self) -> list[Fault]:
        """The armed faults (including spent ones, with their `fired` counts)."""
        with self._lock:
            return list(self._faults)

    def reset(self) -> None:
        """Disarm every fault and clear the log."""
        with self._lock:
            self._faults.clear()
            self._log.clear()


class _BadRange(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive byte positions of a single `bytes=` range, or None for the whole file.

    Raises _BadRange for a range that lies outside the file (answered 416).
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # absent, or a form we do not serve partially: answer the whole file
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":  # suffix form: the last N bytes
            a, b = size - int(last), size - 1
            a = max(a, 0) if int(last) > 0 else size
        else:
            a, b = int(first), (int(last) if last else size - 1)
    except ValueError:
        return None
    if a >= size or b < a:
        raise _BadRange()
    return a, min(b, size - 1)


def _split_repo(segs: list[str], markers: tuple[str, ...]) -> tuple[str, int] | None:
    """The repo id before a marker segment (`resolve`, `tree`, `revision`) and the marker's index."""
    for i in (2, 1):
        if len(segs) > i and segs[i] in markers and all(segs[:i]):
            return "/".join(segs[:i]), i
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    server: HubServer
    timeout = 120
    _file: str | None = None  # the repo file path of a resolve request, once parsed
    headers = None  # set by the base class once the request line parsed; send_error may come before

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        if not self.server.quiet:
            super().log_message(format, *args)

    def send_response(self, code, message=None):
        # Logged when the status goes out, not when the body ends: a client may act on a full
        # body (and a test read the log) before this thread returns from sendfile.
        rng = self.headers.get("Range") if self.headers else None
        self.server.board.record(LoggedRequest(self.command, urlsplit(self.path).path, self._file,
                                               rng, code, self._token()))
        super().send_response(code, message)

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        self._file = None
        url = urlsplit(self.path)
        try:
            if url.path.startswith("/api/"):
                self._api(method, url.path, parse_qs(url.query))
            else:
                self._resolve(method, url.path)
        except OSError:
            # The client went away (or a fault cut it off: shutdown may then find it gone too). With
            # the status line already sent there is nothing better to answer; just drop the connection.
            self.close_connection = True

    # -- answers ------------------------------------------------------------------------------
    def _send(self, status: int, headers: dict, body: bytes, method: str) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _error(self, method: str, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": message}).encode(), method)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "") if self.headers else ""
        return auth[7:].strip() or None if auth.startswith("Bearer ") else None

    def _lookup(self, method: str, type: str, repo: str, rev: str, gate: bool) -> tuple[dict, Revision] | None:
        """Refs and revision of a request, or None after answering the error the real hub gives."""
        refs = self.server.store.refs(repo, type)
        token = self._token()
        if refs is None:
            self._error(method, 404 if token else 401, "RepoNotFound", "Repository not found")
            return None
        if gate and refs.get("gated") and token not in refs.get("tokens", []):
            msg = (f"Access to {type} {repo} is restricted. You must have access to it and be authenticated "
                   "to access it. Please log in." if token is None else
                   f"Access to {type} {repo} is restricted and you are not in the authorized list. "
                   f"Visit https://huggingface.co/{repo} to ask for access.")
            self._error(method, 401 if token is None else 403, "GatedRepo", msg)
            return None
        revision = self.server.store.revision(repo, type, rev)
        if revision is None:
            self._error(method, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return refs, revision

    def _injected_failure(self, method: str) -> bool:
        fault = self.server.board.take("fail", method, self._file)
        if fault is not None:
            self._error(method, fault.status, None, "injected failure")
        return fault is not None

    # -- routes -------------------------------------------------------------------------------
    def _api(self, method: str, path: str, query: dict) -> None:
        segs = path.strip("/").split("/")[1:]
        if not segs or segs[0] not in ("models", "datasets"):
            return self._error(method, 404, None, "Not found")
        type, rest = segs[0][:-1], segs[1:]
        split = _split_repo(rest, ("revision", "tree"))
        repo, op, i = (split[0], rest[split[1]], split[1]) if split else ("/".join(rest), "info", len(rest))
        rev = unquote(rest[i + 1]) if len(rest) > i + 1 else "main"
        if self._injected_failure(method):
            return None
        found = self._lookup(method, type, repo, rev, gate=False)
        if found is None:
            return None
        refs, revision = found
        if op != "tree":
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(info_json(revision, refs)).encode(), method)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        listing = tree_json(revision, unquote("/".join(rest[i + 2:])), recursive)
        if listing is None:
            return self._error(method, 404, "EntryNotFound", "path not found", revision.commit)
        self._send(200, {"Content-Type": "application/json"}, json.dumps(listing).encode(), method)

    def _resolve(self, method: str, path: str) -> None:
        segs = path.strip("/").split("/")
        type = "dataset" if segs[0] == "datasets" else "model"
        segs = segs[1:] if type == "dataset" else segs
        split = _split_repo(segs, ("resolve",))
        if split is None or len(segs) < split[1] + 3:
            return self._error(method, 404, None, "Not found")
        repo, i = split
        rev, self._file = unquote(segs[i + 1]), unquote("/".join(segs[i + 2:]))
        if self._injected_failure(method):
            return None
        found = self._lookup(method, type, repo, rev, gate=True)
        if found is None:
            return None
        revision = found[1]
        entry = revision.files.get(self._file)
        if entry is None:
            return self._error(method, 404, "EntryNotFound", f"{self._file} does not exist on \"{rev}\"",
                               revision.commit)
        self._serve_file(method, revision, entry)

    def _serve_file(self, method: str, revision: Revision, entry: dict) -> None:
        size = entry["size"]
        tag = f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'
        headers = {"X-Repo-Commit": revision.commit, "ETag": tag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": tag, "X-Linked-Size": str(size)})
        try:
            rng = parse_range(self.headers.get("Range"), size) if method == "GET" else None
        except _BadRange:
            return self._error(method, 416, None, "Requested Range Not Satisfiable") or None
        first, last = rng if rng else (0, size - 1)
        self.send_response(206 if rng else 200)
        if rng:
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        if method == "GET" and last >= first:
            self._send_body(revision.file_path(self._file), first, last - first + 1)

    def _send_body(self, path: Path, start: int, length: int) -> None:
        board = self.server.board
        cut = board.take("cut", "GET", self._file, lambda f: f.after < length)
        stop = cut.after if cut else length
        corrupt = board.take("corrupt", "GET", self._file, lambda f: start <= f.offset < start + stop)
        stall = board.take("stall", "GET", self._file, lambda f: f.after < stop)
        with open(path, "rb") as f:
            if cut is None and corrupt is None and stall is None:
                if self.server.rate:
                    return self._send_paced(f, start, length, self.server.rate)
                self.connection.sendfile(f, start, length)  # zero-copy: GB files never pass through Python
                return
            self._send_faulty(f, start, length, cut, corrupt, stall)

    def _send_paced(self, f, start: int, length: int, rate: float) -> None:
        """sendfile in small slices, sleeping so this connection never runs ahead of `rate` bytes/s.

        A connection serves one request at a time, so pacing each body caps each connection: N
        connections get N x rate, like a WAN link whose per-flow throughput is bounded (by RTT and
        window) while the path has room for more flows."""
        sent, t0 = 0, time.monotonic()
        while sent < length:
            n = min(_PACE_SLICE, length - sent)
            self.connection.sendfile(f, start + sent, n)
            sent += n
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def _send_faulty(self, f, start: int, length: int, cut: Fault | None, corrupt: Fault | None,
                     stall: Fault | None) -> None:
        """Chunked copy that applies a cut, a flipped byte and/or a stall (test faults)."""
        stop = min(length, cut.after) if cut else length
        f.seek(start)
        sent = 0
        while sent < stop:
            if stall is not None and sent >= stall.after:
                time.sleep(stall.seconds)
                stall = None
            limit = stop - sent if stall is None else min(stop, stall.after) - sent
            data = bytearray(f.read(min(_CHUNK, limit)))
            if corrupt is not None and 0 <= corrupt.offset - start - sent < len(data):
                data[corrupt.offset - start - sent] ^= 0xFF
            self.wfile.write(data)
            sent += len(data)
        if cut is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a body shorter than Content-Length


class HubServer(ThreadingHTTPServer):
    """The threaded HTTP server: one handler thread per connection, sharing the store and the fault board."""

    daemon_threads = True  # a stalled handler must not block shutdown
    request_queue_size = 128

    def __init__(self, addr, store: Store, board: FaultBoard, quiet: bool, rate: float | None = None):
        self.store, self.board, self.quiet = store, board, quiet
        self.rate = rate  # bytes/s per connection for file bodies (None: as fast as loopback goes)
        super().__init__(addr, _Handler)
