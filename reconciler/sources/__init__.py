"""Where fetched bytes come from. `hf` is the Hugging Face source the engine's apply uses.

Importing this package checks `HF_ENDPOINT` first: huggingface_hub parses it while it is imported,
and a value that is not a URL (`http://host:http://...`, a bare host name) made that import fail
with "Port could not be cast to integer value", which apply reported as a content failure of each
file, with a fix about the upstream file. Now it is one SourceError naming the variable.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ..errors import SourceError


def check_endpoint() -> None:
    """Refuse an `HF_ENDPOINT` that is set but is not an http(s) URL with a valid host and port."""
    value = os.environ.get("HF_ENDPOINT")
    if not value:
        return
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is what raises on a malformed one
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise SourceError(f"HF_ENDPOINT is not an http(s) URL: {value!r}", where="HF_ENDPOINT",
                          fix="set HF_ENDPOINT to the hub's base URL, e.g. https://huggingface.co or "
                              "http://127.0.0.1:8080, or unset it")


check_endpoint()
