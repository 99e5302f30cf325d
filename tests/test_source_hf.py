"""The Hugging Face source against the local hub: metadata, downloads, resume, faults, clear errors."""

from __future__ import annotations

import shutil
import socket
from collections import namedtuple
from pathlib import Path

import pytest

from reconciler.errors import IntegrityError, ResourceError, SourceError
from reconciler.publish import commit, staged
from reconciler.sources import hf
from reconciler.spec import Source
from tests.fixtures.hub import (
    DATASET,
    DATASET_FILES,
    GATED,
    GATED_FILES,
    GATED_LICENCE,
    GATED_TOKEN,
    MODEL,
    MODEL_FILES,
    sha256,
)

BIG = "model.safetensors"  # 400 kB LFS file
BIG_BYTES = MODEL_FILES[BIG]
MODEL_SRC = Source("tiny", MODEL, "model", "main")


def _fetch(tmp_path: Path, path: str = BIG, source: Source = MODEL_SRC, expected: str | None = None,
           progress=None) -> tuple[hf.RemoteFile, Path]:
    """fetch_file into a staged output under tmp_path/root and publish it like the engine does."""
    final = tmp_path / "root" / Path(path).name
    with staged(final, where=path) as out:
        got = hf.fetch_file(source, path, out, expected_sha256=expected, expected_size=None,
                            partial_dir=tmp_path / "partial", progress=progress)
        commit(out, final, where=path, expected_sha256=expected)
    return got, final


def _partials(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "partial").glob("*")) if (tmp_path / "partial").exists() else []


def test_resolve_revision_returns_the_commit(clean_hub):
    assert hf.resolve_revision(MODEL_SRC) == clean_hub.commits["model"]
    v1 = clean_hub.commits["model_v1"]
    assert hf.resolve_revision(Source("tiny", MODEL, "model", v1)) == v1
    assert hf.resolve_revision(Source("d", DATASET, "dataset", "main")) == clean_hub.commits["dataset"]


def test_remote_file_knows_sha256_and_size_of_lfs_files(clean_hub):
    rf = hf.remote_file(MODEL_SRC, BIG)
    assert rf == hf.RemoteFile(BIG, clean_hub.commits["model"], len(BIG_BYTES), sha256(BIG_BYTES))
    small = hf.remote_file(MODEL_SRC, "config.json")
    assert small.sha256 is None and small.size == len(MODEL_FILES["config.json"])


def test_list_files_matches_a_glob_sorted(clean_hub):
    got = hf.list_files(MODEL_SRC, "weights/*.bin")
    assert [f.path for f in got] == ["weights/shard-00001.bin", "weights/shard-00002.bin"]
    assert all(f.commit == clean_hub.commits["model"] for f in got)
    assert got[0].sha256 == sha256(MODEL_FILES["weights/shard-00001.bin"])
    ds = hf.list_files(Source("d", DATASET, "dataset", "main"), "data/train-*.parquet")
    assert [f.path for f in ds] == sorted(p for p in DATASET_FILES if "/train-" in p)
    assert hf.list_files(MODEL_SRC, "*.nothing") == []


def test_fetch_file_downloads_verifies_and_cleans_up(clean_hub, tmp_path):
    seen = []
    got, final = _fetch(tmp_path, expected=sha256(BIG_BYTES), progress=seen.append)
    assert final.read_bytes() == BIG_BYTES
    assert got == hf.RemoteFile(BIG, clean_hub.commits["model"], len(BIG_BYTES), sha256(BIG_BYTES))
    assert sum(seen) == len(BIG_BYTES)
    assert _partials(tmp_path) == [] and [p.name for p in final.parent.iterdir()] == [BIG]
    gets = clean_hub.requests(method="GET", file=BIG)
    assert len(gets) == 1 and gets[0].range is None
    assert gets[0].url.endswith(f"/resolve/{clean_hub.commits['model']}/{BIG}")  # pinned, not the branch


def test_fetch_file_regular_file_reports_observed_sha256(clean_hub, tmp_path):
    got, final = _fetch(tmp_path, path="config.json")
    assert got.sha256 == sha256(MODEL_FILES["config.json"]) and final.read_bytes() == MODEL_FILES["config.json"]


def test_resume_across_runs_fetches_only_the_rest(clean_hub, tmp_path, monkeypatch):
    half = len(BIG_BYTES) // 2
    clean_hub.cut(half, path=BIG)
    down = []

    def hub_goes_down(n: int) -> None:  # once the cut bytes are in, the hub answers 500: this run gives up
        if not down:
            down.append(clean_hub.fail(5, path=BIG, method="GET"))

    monkeypatch.setenv("RECONCILE_HTTP_RETRIES", "1")
    with pytest.raises(SourceError, match="HTTP 500"):
        _fetch(tmp_path, expected=sha256(BIG_BYTES), progress=hub_goes_down)
    assert not (tmp_path / "root" / BIG).exists()
    [partial] = _partials(tmp_path)
    assert partial.read_bytes() == BIG_BYTES[:half]
    clean_hub.reset()
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES and _partials(tmp_path) == []
    assert [g.range for g in clean_hub.requests(method="GET", file=BIG)] == [f"bytes={half}-"]


def test_dropped_connection_is_resumed_within_the_call(clean_hub, tmp_path):
    clean_hub.cut(100_000, path=BIG)
    clean_hub.cut(50_000, path=BIG)
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES
    ranges = [g.range for g in clean_hub.requests(method="GET", file=BIG)]
    assert ranges == [None, "bytes=100000-", "bytes=150000-"]


def test_corrupt_bytes_never_publish_and_error_says_expected_vs_got(clean_hub, tmp_path):
    clean_hub.corrupt(offset=12345, path=BIG)
    with pytest.raises(IntegrityError) as info:
        _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert f"sha256 mismatch: expected {sha256(BIG_BYTES)}, got " in info.value.message
    bad = bytearray(BIG_BYTES)
    bad[12345] ^= 0xFF
    assert sha256(bytes(bad)) in info.value.message
    assert not (tmp_path / "root" / BIG).exists() and list((tmp_path / "root").iterdir()) == []
    assert _partials(tmp_path) == []  # discarded: the next run starts afresh
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES


def test_upstream_change_is_refused_before_downloading(clean_hub, tmp_path):
    pinned = "ab" * 32
    with pytest.raises(IntegrityError, match=f"upstream changed: lock pins {pinned}, hub serves {sha256(BIG_BYTES)}"):
        _fetch(tmp_path, expected=pinned)
    assert clean_hub.requests(method="GET", file=BIG) == []


def test_server_errors_are_retried(clean_hub, tmp_path):
    clean_hub.fail(2, path=BIG, method="HEAD")
    clean_hub.fail(2, path=BIG, method="GET")
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES
    assert [r.status for r in clean_hub.requests(file=BIG)] == [500, 500, 200, 500, 500, 200]


def test_persistent_server_errors_give_a_source_error(clean_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("RECONCILE_HTTP_RETRIES", "2")
    clean_hub.fail(10, path=BIG, status=503)
    with pytest.raises(SourceError, match="HTTP 503"):
        _fetch(tmp_path)
    assert len(clean_hub.requests(file=BIG)) == 3


def test_stall_times_out_and_resumes(clean_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("RECONCILE_HTTP_TIMEOUT", "0.2")
    clean_hub.stall(1.0, after=200_000, path=BIG)
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES
    ranges = [g.range for g in clean_hub.requests(method="GET", file=BIG)]
    assert ranges[0] is None and len(ranges) == 2 and int(ranges[1][6:-1]) >= 200_000


def test_gated_repo_without_token_explains_licence_and_token(clean_hub, tmp_path):
    src = Source("mtp", GATED, "model", "main", gated=True, licence=GATED_LICENCE)
    with pytest.raises(SourceError) as info:
        _fetch(tmp_path, path="7B/consolidated.pth", source=src)
    text = info.value.render()
    assert GATED in info.value.message and GATED_LICENCE in info.value.message
    assert f"https://huggingface.co/{GATED}" in text and "HF_TOKEN" in text and "hf auth login" in text
    assert info.value.where == "mtp:7B/consolidated.pth"


def test_gated_repo_with_token_downloads(clean_hub, tmp_path, monkeypatch):
    src = Source("mtp", GATED, "model", "main", gated=True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(SourceError, match="not been granted"):
        _fetch(tmp_path, path="7B/params.json", source=src)
    monkeypatch.setenv("HF_TOKEN", GATED_TOKEN)
    got, final = _fetch(tmp_path, path="7B/consolidated.pth", source=src)
    assert final.read_bytes() == GATED_FILES["7B/consolidated.pth"]
    assert {r.token for r in clean_hub.requests(method="GET", file="7B/consolidated.pth")} == {GATED_TOKEN}


@pytest.mark.parametrize("source, path, message", [
    (Source("x", "nobody/nothing", "model", "main"), "a.bin", "model repo nobody/nothing not found"),
    (Source("x", MODEL, "dataset", "main"), BIG, f"dataset repo {MODEL} not found"),
    (Source("x", MODEL, "model", "v9"), BIG, f"revision v9 not found in {MODEL}"),
    (Source("x", MODEL, "model", "main"), "nope.bin", f"file nope.bin not found in {MODEL} at main"),
])
def test_not_found_errors_are_clear(clean_hub, tmp_path, source, path, message):
    with pytest.raises(SourceError, match=message) as info:
        _fetch(tmp_path, path=path, source=source)
    assert info.value.fix
    with pytest.raises(SourceError, match=message.split(" at ")[0]):
        hf.remote_file(source, path)


def test_wrong_revision_in_resolve_and_list(clean_hub):
    src = Source("x", MODEL, "model", "no-such-branch")
    for call in (lambda: hf.resolve_revision(src), lambda: hf.list_files(src, "*")):
        with pytest.raises(SourceError, match="revision no-such-branch not found"):
            call()


def test_offline_mode_fails_fast_without_network(clean_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (lambda: _fetch(tmp_path), lambda: hf.resolve_revision(MODEL_SRC),
                 lambda: hf.list_files(MODEL_SRC, "*"), lambda: hf.remote_file(MODEL_SRC, BIG)):
        with pytest.raises(SourceError, match="offline mode"):
            call()
    assert clean_hub.log() == []


def test_connection_refused_is_a_source_error(clean_hub, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RECONCILE_HTTP_RETRIES", "1")
    with pytest.raises(SourceError, match=f"cannot connect to http://127.0.0.1:{port}") as info:
        _fetch(tmp_path)
    assert "HF_ENDPOINT" in info.value.fix


def test_not_enough_disk_space_is_a_resource_error(clean_hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(ResourceError, match=f"{BIG}: needs {len(BIG_BYTES)} bytes, 1000 free") as info:
        _fetch(tmp_path)
    assert info.value.where == f"tiny:{BIG}"
    assert clean_hub.requests(method="GET", file=BIG) == []


def test_resume_without_hard_links_keeps_a_mirror_partial(clean_hub, tmp_path, monkeypatch):
    def no_links(src, dst):  # as across filesystems: partial_dir and the root on different devices
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(hf.os, "link", no_links)
    half = len(BIG_BYTES) // 2
    clean_hub.cut(half, path=BIG)
    with pytest.raises(KeyboardInterrupt):  # the run is interrupted once the cut bytes are in
        _fetch(tmp_path, expected=sha256(BIG_BYTES), progress=lambda n: (_ for _ in ()).throw(KeyboardInterrupt()))
    [partial] = _partials(tmp_path)
    assert partial.read_bytes() == BIG_BYTES[:half]
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES and _partials(tmp_path) == []
    assert clean_hub.requests(method="GET", file=BIG)[-1].range == f"bytes={half}-"


def test_size_pin_differing_from_the_hub_is_an_upstream_change(clean_hub, tmp_path):
    final = tmp_path / "root" / BIG
    with pytest.raises(IntegrityError, match=f"lock pins 5 bytes, hub serves {len(BIG_BYTES)} bytes"):
        with staged(final, where=BIG) as out:
            hf.fetch_file(MODEL_SRC, BIG, out, expected_sha256=None, expected_size=5, partial_dir=tmp_path / "p")


def test_complete_partial_from_a_killed_run_needs_no_download(clean_hub, tmp_path):
    def killed(n: int) -> None:  # the run dies right after the last byte arrived, before verifying
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        _fetch(tmp_path, expected=sha256(BIG_BYTES), progress=killed)
    [partial] = _partials(tmp_path)
    assert partial.read_bytes() == BIG_BYTES
    clean_hub.reset()
    _, final = _fetch(tmp_path, expected=sha256(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES and _partials(tmp_path) == []
    assert clean_hub.requests(method="GET", file=BIG) == [] and len(clean_hub.requests(method="HEAD", file=BIG)) == 1


def _fetch_pinned(tmp_path: Path, commit_sha: str, sha: str, size: int) -> Path:
    source = Source("tiny", MODEL, "model", commit_sha)
    final = tmp_path / "root" / BIG
    with staged(final, where=BIG) as out:
        hf.fetch_file(source, BIG, out, expected_sha256=sha, expected_size=size, partial_dir=tmp_path / "partial")
        commit(out, final, where=BIG, expected_sha256=sha)
    return final


def test_a_small_file_pinned_at_a_commit_is_fetched_without_a_head(clean_hub, tmp_path):
    final = _fetch_pinned(tmp_path, clean_hub.commits["model"], sha256(BIG_BYTES), len(BIG_BYTES))
    assert final.read_bytes() == BIG_BYTES
    assert [r.method for r in clean_hub.requests(file=BIG)] == ["GET"]


@pytest.mark.parametrize("pin", ["sha256", "size"])
def test_without_a_head_other_bytes_are_still_refused_and_nothing_is_published(clean_hub, tmp_path, pin):
    """A hub that serves other bytes at a commit: found while writing, the file never reaches its final path."""
    sha, size = sha256(BIG_BYTES), len(BIG_BYTES)
    if pin == "sha256":
        sha = "ab" * 32
    else:
        size -= 1  # the body is longer than the pin: cut after one chunk
    with pytest.raises(IntegrityError, match=f"{'sha256' if pin == 'sha256' else 'size'} mismatch"):
        _fetch_pinned(tmp_path, clean_hub.commits["model"], sha, size)
    assert not (tmp_path / "root" / BIG).exists()
    assert _partials(tmp_path) == []


def test_a_big_pinned_file_is_still_checked_before_downloading(clean_hub, tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "PINNED_NO_HEAD_MAX", len(BIG_BYTES) - 1)  # BIG counts as big here
    with pytest.raises(IntegrityError, match="upstream changed"):
        _fetch_pinned(tmp_path, clean_hub.commits["model"], "ab" * 32, len(BIG_BYTES))
    assert clean_hub.requests(method="GET", file=BIG) == []
