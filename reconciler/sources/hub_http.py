"""huggingface_hub's HTTP layer across its release lines, in one place.

huggingface_hub 0.x (what transformers 4.x requires: `huggingface_hub<1.0`) runs on `requests`; 1.x on
`httpx`; 2.x on `httpx2`. We always use the hub client's own session (its proxies, certificates, user
agent and offline switch), so what differs between the lines is only the transport's exception types,
the streaming call and one renamed error class. Everything else in `hf.py` is line-agnostic.

The transport is found from the client itself (the base class of `HfHubHTTPError` is the transport's
HTTP error), not from version numbers, so a line we have not seen fails here, at import, by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

from huggingface_hub import errors as _errors
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session

RECV_BYTES = 1 << 20  # most bytes one socket read may return (httpcore's default: 64 KiB)

# 1.x split EntryNotFoundError into a remote and a local kind; 0.x raises EntryNotFoundError for a 404.
EntryNotFoundError = getattr(_errors, "RemoteEntryNotFoundError", None) or _errors.EntryNotFoundError

TRANSPORT = HfHubHTTPError.__mro__[1].__module__.split(".")[0]  # "requests" | "httpx" | "httpx2"
_t = importlib.import_module(TRANSPORT)

if TRANSPORT == "requests":
    import urllib3

    _exc, _u3 = _t.exceptions, urllib3.exceptions
    # Worth another try: refused, dropped, timed out, or a body that ended early. The body is read
    # from urllib3 directly (see stream_get), so its own errors appear unwrapped.
    TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
        _exc.ConnectionError, _exc.Timeout, _exc.ChunkedEncodingError, _exc.ContentDecodingError,
        _u3.ProtocolError, _u3.ReadTimeoutError)
    CONNECT_ERRORS: tuple[type[BaseException], ...] = (_exc.ConnectionError,)
    HTTP_ERRORS: tuple[type[BaseException], ...] = (_exc.RequestException, _u3.HTTPError)
else:
    TRANSIENT_ERRORS = (_t.TransportError,)
    CONNECT_ERRORS = (_t.ConnectError,)
    HTTP_ERRORS = (_t.HTTPError,)


@contextmanager
def stream_get(url: str, headers: dict[str, str], timeout: float) -> Iterator[tuple[object, Iterator[bytes]]]:
    """GET `url` with the hub's session, following redirects: yields (response, iterator over body chunks)."""
    if TRANSPORT == "requests":
        r = get_session().get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=True)
        try:
            yield r, _read1_chunks(r.raw)
        finally:
            r.close()
        return
    widen_reads()
    with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        yield r, r.iter_bytes()


def head(url: str, headers: dict[str, str], timeout: float):
    """HEAD `url` with the hub's session, following only relative redirects (a renamed repo), as
    `get_hf_file_metadata` does: a redirect to another host (the CDN of an LFS file) is the answer,
    and its `X-Linked-*` headers describe the file. Ours because 0.x's `get_hf_file_metadata` retries
    5xx and refused connections with fixed backoffs (~23 s) that our own retry policy cannot shorten."""
    for _ in range(10):
        if TRANSPORT == "requests":
            r = get_session().head(url, headers=headers, timeout=timeout, allow_redirects=False)
        else:
            r = get_session().head(url, headers=headers, timeout=timeout, follow_redirects=False)
        location = r.headers.get("Location")
        if not (300 <= r.status_code < 400 and location and not urlsplit(location).netloc):
            return r
        url = urljoin(url, location)
    return r


def _read1_chunks(raw) -> Iterator[bytes]:
    """What each socket read returns (up to 1 MiB). Not `iter_content`: its reads wait for a full chunk
    and drop the bytes of a chunk a dropped connection cut short, which a resume would then fetch again."""
    while chunk := raw.read1(RECV_BYTES):
        yield chunk


def widen_reads() -> bool:
    """httpx lines: let HTTP/1.1 connections read up to 1 MiB per socket read instead of 64 KiB.

    httpcore reads a body `READ_NUM_BYTES` at a time and runs its h11 event machinery once per read:
    at 64 KiB that costs ~0.8 s of Python per GB, more than hashing or writing it. The constant is a
    class attribute with no per-request option, so this sets it for the process; a larger value only
    raises the upper bound of each `recv`, every other request behaves the same. It is changed only
    when it still holds the value this was measured against (64 KiB); `tests/test_hub_http.py` fails
    when the library renames it or changes its default, so the measurement gets redone. Returns
    whether the attribute is (now) widened.
    """
    try:
        cls = importlib.import_module(TRANSPORT.replace("httpx", "httpcore")).HTTP11Connection
    except (ImportError, AttributeError):
        return False
    if getattr(cls, "READ_NUM_BYTES", None) == 64 * 1024:
        cls.READ_NUM_BYTES = RECV_BYTES
    return getattr(cls, "READ_NUM_BYTES", None) == RECV_BYTES
