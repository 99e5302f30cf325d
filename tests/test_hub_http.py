"""The huggingface_hub compatibility seam: which transport the installed line runs on, and the one
library constant we change. These fail when the library moves, so the choice gets re-measured."""

from __future__ import annotations

import subprocess
import sys

import huggingface_hub
import pytest

from reconciler.sources import hub_http


def test_the_transport_matches_the_installed_line():
    major = int(huggingface_hub.__version__.split(".")[0])
    assert hub_http.TRANSPORT == {0: "requests", 1: "httpx"}.get(major, "httpx2")


@pytest.mark.skipif(hub_http.TRANSPORT == "requests", reason="httpx lines only: requests reads via urllib3 read1")
def test_httpcore_read_size_is_what_the_widening_was_measured_against():
    core = hub_http.TRANSPORT.replace("httpx", "httpcore")
    pristine = subprocess.run([sys.executable, "-c", f"import {core}; print({core}.HTTP11Connection.READ_NUM_BYTES)"],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert pristine == str(64 * 1024), f"{core} changed its read size: re-measure hub_http.widen_reads"
    assert hub_http.widen_reads()


@pytest.mark.skipif(hub_http.TRANSPORT != "requests", reason="0.x line only")
def test_urllib3_offers_read1():
    import urllib3
    assert callable(getattr(urllib3.response.HTTPResponse, "read1", None))
