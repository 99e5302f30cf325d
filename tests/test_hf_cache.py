"""apply reuses the Hugging Face cache: a cache filled by the real huggingface_hub client from the local
hub, then the hub stopped; bad cache bytes are never published; another filesystem gets a copy."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from huggingface_hub import hf_hub_download, snapshot_download
from reconcile_testing.hub import LocalHub, add_revision

from reconciler.sources.hf_cache import HfCache, default_cache_dir
from tests.fixtures.engine import run_cli

MODEL, DATA = "acme/cached-model", "acme/cached-data"
MODEL_FILES = {
    "model.bin": random.Random(11).randbytes(300_000),  # LFS: its blob is named by its sha256
    "config.json": b'{"dim": 64}\n',  # a git blob: named by its git sha1
    "shards/a.bin": random.Random(12).randbytes(50_000),
    "shards/b.bin": random.Random(13).randbytes(60_000),
}
DATA_FILES = {"data/test.parquet": random.Random(14).randbytes(40_000)}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A hub of its own, a Hugging Face cache filled from it by the real client, and a lock over both repos.

    Returns (hub, cache dir, project dir holding storage.lock.yaml); HF_HUB_CACHE points at the cache.
    """
    store = tmp_path / "hub-store"
    mc = add_revision(store, MODEL, "model", MODEL_FILES)
    dc = add_revision(store, DATA, "dataset", DATA_FILES)
    cache = tmp_path / "hf-cache"
    hub = LocalHub(store).start()
    hf_hub_download(MODEL, "model.bin", revision=mc, cache_dir=cache, endpoint=hub.url)
    hf_hub_download(MODEL, "config.json", revision=mc, cache_dir=cache, endpoint=hub.url)
    snapshot_download(MODEL, revision=mc, cache_dir=cache, endpoint=hub.url, allow_patterns=["shards/*"])
    snapshot_download(DATA, repo_type="dataset", revision=dc, cache_dir=cache, endpoint=hub.url)
    hub.reset()
    lock = {"version": 1, "storage_version": "1",
            "sources": {"m": {"repo": MODEL, "type": "model", "revision": mc},
                        "d": {"repo": DATA, "type": "dataset", "revision": dc}},
            "artifacts": {
                "raw/model.bin": {"fetch": {"source": "m", "path": "model.bin"},
                                          "sha256": _sha(MODEL_FILES["model.bin"])},
                "raw/config.json": {"fetch": {"source": "m", "path": "config.json"}},  # unpinned
                "raw/shards": {"fetch": {"source": "m", "glob": "shards/*.bin"},
                               "files": {n: {"sha256": _sha(MODEL_FILES[f"shards/{n}"])} for n in ("a.bin", "b.bin")}},
                "data/test.parquet": {"fetch": {"source": "d", "path": "data/test.parquet"},
                                      "sha256": _sha(DATA_FILES["data/test.parquet"])}}}
    project = tmp_path / "project"
    project.mkdir()
    (project / "storage.lock.yaml").write_text(yaml.safe_dump(lock))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("RECONCILE_NO_HF_CACHE", raising=False)
    yield hub, cache, project
    hub.stop()


def _origins(res) -> dict[str, str]:
    assert res.code == 0, res.text
    return {r["path"]: r["origin"] for r in res.json()["artifacts"]}


def _checks_pass(project: Path) -> bool:
    """Pin what apply produced (trust on first use, the PR loop), then the gate."""
    return run_cli("lock", cwd=project).code == 0 and run_cli("check", cwd=project).code == 0


def _blob(cache: Path, data: bytes) -> Path:
    """The cache blob holding `data` (found by content: the test does not trust names either)."""
    [blob] = [p for p in cache.glob("*/blobs/*") if p.read_bytes() == data]
    return blob


def test_apply_converges_from_the_cache_alone_with_the_hub_stopped(cached, monkeypatch):
    hub, cache, project = cached
    hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline + a warm cache converges without network
    res = run_cli("apply", "--json", cwd=project)
    assert set(_origins(res).values()) == {"hf-cache"}
    assert hub.log() == []  # not one request reached the hub
    root = project / "storage"
    blob = _blob(cache, MODEL_FILES["model.bin"])
    published = root / "raw" / "model.bin"
    assert published.read_bytes() == MODEL_FILES["model.bin"]
    assert published.stat().st_ino == blob.stat().st_ino  # same filesystem: a hard link, no bytes copied
    assert (root / "raw" / "config.json").read_bytes() == MODEL_FILES["config.json"]
    assert (root / "raw" / "shards" / "b.bin").read_bytes() == MODEL_FILES["shards/b.bin"]
    human = run_cli("apply", cwd=project)
    assert human.code == 0 and "Nothing to do" in human.out
    assert _checks_pass(project)


def test_offline_a_file_the_cache_lacks_fails_alone_with_the_offline_error(cached, monkeypatch):
    hub, cache, project = cached
    _blob(cache, DATA_FILES["data/test.parquet"]).unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = run_cli("apply", "--json", "--keep-going", cwd=project)
    assert res.code == 1
    rows = {r["path"]: r for r in res.json()["artifacts"]}
    assert rows["data/test.parquet"]["status"] == "failed" and "HF_HUB_OFFLINE" in rows["data/test.parquet"]["detail"]
    assert {rows[p]["origin"] for p in rows if p != "data/test.parquet"} == {"hf-cache"}
    assert hub.log() == []


def test_human_output_says_how_many_bytes_were_reused(cached):
    _, _, project = cached
    res = run_cli("apply", cwd=project)
    assert res.code == 0, res.text
    total = sum(len(b) for b in (*MODEL_FILES.values(), *DATA_FILES.values()))
    assert f"({total:,} bytes) from the Hugging Face cache" in res.out
    assert "from the Hugging Face cache (hard link)" in res.out


def test_a_cache_blob_with_one_flipped_byte_is_not_published_but_downloaded(cached):
    hub, cache, project = cached
    for data in (MODEL_FILES["model.bin"], MODEL_FILES["config.json"]):  # pinned; unpinned (git sha1)
        blob = _blob(cache, data)
        with open(blob, "r+b") as f:
            f.seek(len(data) // 2)
            f.write(bytes([data[len(data) // 2] ^ 0x01]))
    res = run_cli("apply", "--json", cwd=project)
    origins = _origins(res)
    assert origins["raw/model.bin"] == origins["raw/config.json"] == "hub"
    assert origins["raw/shards"] == origins["data/test.parquet"] == "hf-cache"
    assert {r.file for r in hub.requests(method="GET")} == {"model.bin", "config.json"}
    assert res.err.count("does not match") == 2  # each skipped blob is reported
    root = project / "storage"
    assert (root / "raw" / "model.bin").read_bytes() == MODEL_FILES["model.bin"]
    assert (root / "raw" / "config.json").read_bytes() == MODEL_FILES["config.json"]
    assert _checks_pass(project)


@pytest.fixture
def other_fs(tmp_path):
    """A folder on another filesystem than tmp_path: a tmpfs mounted for the test when we may (root),
    else /dev/shm when it is one."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode == 0
    if mounted:
        yield mnt
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        return
    shm = Path("/dev/shm") / f"reconcile-test-{uuid.uuid4().hex[:8]}"
    try:
        shm.mkdir()
    except OSError:
        pytest.skip("cannot mount a tmpfs (not root) and /dev/shm is not writable")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("cannot mount a tmpfs (not root) and /dev/shm is on the same filesystem")
    yield shm
    subprocess.run(["rm", "-rf", str(shm)], check=False)


def test_a_cache_on_another_filesystem_is_copied_not_linked(cached, other_fs, monkeypatch):
    _, cache, project = cached
    moved = other_fs / "hub"
    subprocess.run(["cp", "-a", str(cache), str(moved)], check=True)  # keeps the snapshot symlinks relative
    assert moved.stat().st_dev != project.stat().st_dev
    monkeypatch.setenv("HF_HUB_CACHE", str(moved))
    res = run_cli("apply", "--json", cwd=project)
    assert set(_origins(res).values()) == {"hf-cache"}
    published = project / "storage" / "raw" / "model.bin"
    assert published.read_bytes() == MODEL_FILES["model.bin"] and published.stat().st_nlink == 1
    assert "(copy)" in res.err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_reuse_can_be_turned_off(cached, monkeypatch, how):
    hub, _, project = cached
    if how == "env":
        monkeypatch.setenv("RECONCILE_NO_HF_CACHE", "1")
    res = run_cli("apply", "--json", *(["--no-hf-cache"] if how == "flag" else []), cwd=project)
    assert set(_origins(res).values()) == {"hub"}
    assert len(hub.requests(method="GET")) == 5


def test_a_pinned_blob_in_another_repos_folder_counts(cached):
    _, cache, project = cached
    data = MODEL_FILES["model.bin"]
    blob = _blob(cache, data)
    mirror = cache / "models--someone--mirror" / "blobs"
    mirror.mkdir(parents=True)
    blob.rename(mirror / blob.name)  # only a mirror repo's folder holds these bytes now
    res = run_cli("apply", "--json", cwd=project)
    assert _origins(res)["raw/model.bin"] == "hf-cache"
    assert (project / "storage" / "raw" / "model.bin").stat().st_ino == (mirror / blob.name).stat().st_ino


def test_a_snapshot_entry_pointing_outside_the_blobs_is_ignored(cached, tmp_path):
    _, cache, project = cached
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(MODEL_FILES["config.json"])
    [entry] = cache.glob("models--*/snapshots/*/config.json")
    entry.unlink()
    entry.symlink_to(outside)
    res = run_cli("apply", "--json", cwd=project)
    assert _origins(res)["raw/config.json"] == "hub"


@pytest.mark.parametrize("env, expected", [
    ({"HF_HUB_CACHE": "/c/hub", "HF_HOME": "/h"}, "/c/hub"),
    ({"HF_HOME": "/h"}, "/h/hub"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
    ({}, "~/.cache/huggingface/hub"),
])
def test_the_cache_folder_follows_huggingface_hub_settings(monkeypatch, env, expected):
    for var in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert default_cache_dir() == Path(expected).expanduser()


def test_no_cache_folder_or_the_switch_means_no_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "absent"))
    assert HfCache.from_env() is None
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert HfCache.from_env() is not None
    monkeypatch.setenv("RECONCILE_NO_HF_CACHE", "1")
    assert HfCache.from_env() is None
