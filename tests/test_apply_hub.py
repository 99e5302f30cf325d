"""apply + the local hub: interrupted downloads resume on the next apply, bad bytes never land."""

from __future__ import annotations

import hashlib
import random

import pytest
import yaml
from reconcile_testing.hub import add_revision

from reconciler.apply import Reporter, Skip, SkipReason, apply
from reconciler.lockfile import lock_from_data
from reconciler.verify import check

REPO = "acme/resume-model"
BLOB = random.Random(42).randbytes(3_000_000)
SHA = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def resume_repo(clean_hub):
    """A repo holding one 3 MB LFS file, and a lock that fetches it and copies it."""
    commit = add_revision(clean_hub.store.root, REPO, "model", {"weights.bin": BLOB})
    data = {"version": 1, "storage_version": "1",
            "sources": {"m": {"repo": REPO, "type": "model", "revision": commit}},
            "artifacts": {"raw/weights.bin": {"fetch": {"source": "m", "path": "weights.bin"}, "sha256": SHA,
                                              "size": len(BLOB)},
                          "copy/weights.bin": {"build": {"transform": "copy", "inputs": {"src": "raw/weights.bin"}}}}}
    return clean_hub, lock_from_data(yaml.safe_load(yaml.safe_dump(data)))


def test_a_download_cut_at_half_resumes_on_the_next_apply(resume_repo, tmp_path, monkeypatch):
    hub, lock = resume_repo
    half = len(BLOB) // 2
    hub.cut(half, path="weights.bin")

    class HubGoesDown(Reporter):
        """Once bytes arrive, the hub answers 500 to every retry: this apply gives up mid-file."""

        def advance(self, nbytes):
            if not hub.requests(method="GET", file="weights.bin")[1:]:
                hub.fail(10, path="weights.bin", method="GET")

    monkeypatch.setenv("RECONCILE_HTTP_RETRIES", "1")
    first = apply(lock, tmp_path / "root", keep_going=True, reporter=HubGoesDown())
    assert "raw/weights.bin" in first.failed and first.skipped == {"copy/weights.bin": Skip(SkipReason.INPUT_FAILED, "raw/weights.bin")}
    assert not (tmp_path / "root" / "raw" / "weights.bin").exists()  # nothing half-written at the final path
    hub.reset()
    second = apply(lock, tmp_path / "root")
    assert second.ok and set(second.done) == {"raw/weights.bin", "copy/weights.bin"}
    gets = [r.range for r in hub.requests(method="GET", file="weights.bin")]
    assert gets == [f"bytes={half}-"]  # only the rest was fetched
    statuses = {a.path: a.status for a in check(lock, tmp_path / "root").artifacts}
    assert statuses == {"raw/weights.bin": "ok", "copy/weights.bin": "unpinned"}  # the resumed bytes verify


def test_corrupt_bytes_from_the_hub_are_never_published(resume_repo, tmp_path):
    hub, lock = resume_repo
    hub.corrupt(offset=1000, path="weights.bin", times=5)
    result = apply(lock, tmp_path / "root")
    err = result.failed["raw/weights.bin"].render()
    assert "expected" in err and SHA in err
    assert not (tmp_path / "root" / "raw" / "weights.bin").exists()
