"""The local stand-in hub, driven by the real huggingface_hub client."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import get_session
from reconcile_testing.hub import add_revision
from reconcile_testing.hub.repo import git_blob_sha1

from reconciler.sources.hub_http import TRANSIENT_ERRORS, EntryNotFoundError
from tests.fixtures.hub import (
    DATASET,
    DATASET_FILES,
    GATED,
    GATED_FILES,
    GATED_TOKEN,
    MODEL,
    MODEL_FILES,
    MODEL_V1,
    sha256,
)


def _url(hub, path, repo=MODEL, rev="main", repo_type=None):
    return hf_hub_url(repo, path, repo_type=repo_type, revision=rev, endpoint=hub.url)


def test_real_client_downloads_lfs_and_regular_files(clean_hub, tmp_path):
    for path in ("model.safetensors", "config.json", "weights/shard-00002.bin"):
        got = hf_hub_download(MODEL, path, cache_dir=tmp_path, endpoint=clean_hub.url)
        assert open(got, "rb").read() == MODEL_FILES[path]
    got = hf_hub_download(DATASET, "data/test-00000-of-00001.parquet", repo_type="dataset",
                          cache_dir=tmp_path, endpoint=clean_hub.url)
    assert open(got, "rb").read() == DATASET_FILES["data/test-00000-of-00001.parquet"]


def test_metadata_lfs_has_sha256_etag_and_regular_has_blob_sha1(clean_hub):
    lfs = get_hf_file_metadata(_url(clean_hub, "model.safetensors"))
    assert lfs.etag == sha256(MODEL_FILES["model.safetensors"])
    assert lfs.size == len(MODEL_FILES["model.safetensors"])
    assert lfs.commit_hash == clean_hub.commits["model"]
    assert getattr(lfs, "xet_file_data", None) is None  # the field is absent before huggingface_hub 0.32
    small = get_hf_file_metadata(_url(clean_hub, "config.json"))
    assert small.etag == git_blob_sha1(MODEL_FILES["config.json"])
    assert small.size == len(MODEL_FILES["config.json"])


def test_old_commit_still_served_after_branch_moved(clean_hub, tmp_path):
    v1 = clean_hub.commits["model_v1"]
    got = hf_hub_download(MODEL, "config.json", revision=v1, cache_dir=tmp_path, endpoint=clean_hub.url)
    assert open(got, "rb").read() == MODEL_V1["config.json"]
    assert get_hf_file_metadata(_url(clean_hub, "config.json", rev=v1)).commit_hash == v1


def test_range_requests(clean_hub):
    data = MODEL_FILES["model.safetensors"]
    url = _url(clean_hub, "model.safetensors")
    r = get_session().get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert r.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    r = get_session().get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    r = get_session().get(url, headers={"Range": "bytes=-5"})
    assert r.content == data[-5:]
    r = get_session().get(url, headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert not any(k.lower().startswith("x-xet") for k in r.headers)


@pytest.mark.parametrize("kwargs, error", [
    ({"repo_id": "nobody/nothing", "filename": "x.bin"}, RepositoryNotFoundError),
    ({"repo_id": MODEL, "filename": "config.json", "revision": "no-such-branch"}, RevisionNotFoundError),
    ({"repo_id": MODEL, "filename": "config.json", "revision": "0" * 40}, RevisionNotFoundError),
    ({"repo_id": MODEL, "filename": "missing.bin"}, EntryNotFoundError),
    ({"repo_id": GATED, "filename": "7B/params.json"}, GatedRepoError),
    ({"repo_id": GATED, "filename": "7B/params.json", "token": "hf_not_granted"}, GatedRepoError),
])
def test_typed_errors(clean_hub, tmp_path, kwargs, error):
    with pytest.raises(error):
        hf_hub_download(cache_dir=tmp_path, endpoint=clean_hub.url, **kwargs)


def test_gated_repo_with_accepted_token(clean_hub, tmp_path):
    got = hf_hub_download(GATED, "7B/consolidated.pth", token=GATED_TOKEN, cache_dir=tmp_path,
                          endpoint=clean_hub.url)
    assert open(got, "rb").read() == GATED_FILES["7B/consolidated.pth"]
    statuses = {(r.method, r.token, r.status) for r in clean_hub.requests(file="7B/consolidated.pth")}
    assert ("GET", GATED_TOKEN, 200) in statuses


def test_api_repo_info_and_listing(clean_hub):
    api = HfApi(endpoint=clean_hub.url)
    info = api.repo_info(MODEL)
    assert info.sha == clean_hub.commits["model"]
    assert sorted(s.rfilename for s in info.siblings) == sorted(MODEL_FILES)
    assert api.repo_info(MODEL, revision=clean_hub.commits["model_v1"]).sha == clean_hub.commits["model_v1"]
    assert api.list_repo_files(DATASET, repo_type="dataset") == sorted(DATASET_FILES)
    tree = {e.path: e for e in api.list_repo_tree(MODEL, recursive=True)}
    assert tree["model.safetensors"].lfs.sha256 == sha256(MODEL_FILES["model.safetensors"])
    assert tree["config.json"].lfs is None and type(tree["weights"]).__name__ == "RepoFolder"
    sub = [e.path for e in api.list_repo_tree(MODEL, path_in_repo="weights")]
    assert sub == ["weights/shard-00001.bin", "weights/shard-00002.bin"]
    assert api.dataset_info(DATASET).sha == clean_hub.commits["dataset"]
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(MODEL, revision="nope")


def test_add_revision_commit_ids_are_deterministic(clean_hub, tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x00" * 4096)
    store = clean_hub.store.root
    a = add_revision(store, "tests/determinism", "model", {"w.bin": src, "c.json": b"{}"})
    b = add_revision(store, "tests/determinism", "model", {"w.bin": b"\x00" * 4096, "c.json": b"{}"})
    c = add_revision(store, "tests/determinism", "model", {"w.bin": b"\x01", "c.json": b"{}"})
    assert a == b != c and len(a) == 40
    assert HfApi(endpoint=clean_hub.url).repo_info("tests/determinism").sha == c
    with pytest.raises(ValueError):
        add_revision(store, "tests/determinism", "model", {"../escape": b""})


def test_fault_cut_drops_connection_after_n_bytes(clean_hub):
    fault = clean_hub.cut(1000, path="model.safetensors")
    with pytest.raises(TRANSIENT_ERRORS):  # httpx: RemoteProtocolError; requests: ChunkedEncodingError
        get_session().get(_url(clean_hub, "model.safetensors"))
    assert fault.fired == 1 and fault.times == 0
    assert get_session().get(_url(clean_hub, "model.safetensors")).content == MODEL_FILES["model.safetensors"]


def test_fault_corrupt_flips_one_byte(clean_hub):
    clean_hub.corrupt(offset=7, path="model.safetensors")
    body = get_session().get(_url(clean_hub, "model.safetensors")).content
    data = MODEL_FILES["model.safetensors"]
    assert len(body) == len(data) and [i for i in range(len(data)) if body[i] != data[i]] == [7]


def test_fault_fail_answers_500_then_recovers_and_is_logged(clean_hub):
    clean_hub.fail(2, path="config.json", method="GET")
    statuses = [get_session().get(_url(clean_hub, "config.json")).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    get_session().get(_url(clean_hub, "config.json"), headers={"Range": "bytes=3-", "Authorization": "Bearer t"})
    last = clean_hub.requests(method="GET", file="config.json")[-1]
    assert (last.range, last.token, last.status) == ("bytes=3-", "t", 206)


def test_fault_stall_times_out_a_reader_then_is_spent(clean_hub):
    fault = clean_hub.stall(1.0, after=100, path="model.safetensors")
    url = _url(clean_hub, "model.safetensors")
    assert get_session().get(_url(clean_hub, "config.json"), timeout=0.5).status_code == 200  # other path
    with pytest.raises(TRANSIENT_ERRORS):  # httpx: ReadTimeout; requests: ConnectionError(ReadTimeoutError)
        get_session().get(url, timeout=0.2)
    assert fault.fired == 1
    assert get_session().get(url, timeout=5).content == MODEL_FILES["model.safetensors"]


def test_main_serves_a_store_in_the_foreground(clean_hub, tmp_path):
    port_file = tmp_path / "hub.url"
    proc = subprocess.Popen([sys.executable, "-m", "reconcile_testing.hub", "--store", str(clean_hub.store.root),
                             "--port-file", str(port_file)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        url = port_file.read_text().strip()
        meta = get_hf_file_metadata(hf_hub_url(MODEL, "config.json", endpoint=url))
        assert meta.etag == git_blob_sha1(MODEL_FILES["config.json"])
    finally:
        proc.terminate()
        proc.wait(timeout=5)
    assert proc.stdout.read().strip() == url
