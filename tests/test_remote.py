"""The remote (issue 15): nodes sharing one bucket on a real S3 API server (moto), through the real CLI.

Each "node" is its own storage root, and every command runs in its own process (forked CLI).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
import uuid

import pytest
from reconcile_testing.hub import add_revision

from reconciler.provenance import read_provenance
from reconciler.remote import layout
from tests.fixtures.engine import fork_cli, run_cli, temp_files, write_lock

pytestmark = pytest.mark.s3

REPO = "acme/remote-model"
FILES = {"config.json": b'{"dim": 64}\n', "weights/a.bin": random.Random(1).randbytes(300_000),
         "weights/b.bin": random.Random(2).randbytes(200_000), "tokenizer.model": random.Random(3).randbytes(50_000)}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lock_text(commit: str, *, remote: str | None = None, tag: str = "v1") -> str:
    """A fetched file, a fetched folder, and two builds over them (one per `tag`: a recipe nobody built)."""
    head = 'version: 1\nstorage_version: "1"\nroot: storage\n'
    if remote:
        head += f"remote: {{url: {remote}}}\n"
    return head + f"""sources:
  m: {{repo: {REPO}, type: model, revision: {commit}}}
artifacts:
  raw/config.json:
    fetch: {{source: m, path: config.json}}
  raw/tokenizer.model:
    fetch: {{source: m, path: tokenizer.model}}
  raw/weights:
    fetch: {{source: m, glob: "weights/*.bin"}}
  derived/tokenizer.model:
    build: {{transform: copy, inputs: {{src: raw/tokenizer.model}}}}
  derived/meta.json:
    build: {{transform: write_json, params: {{data: {{tag: {tag}}}}}}}
"""


@pytest.fixture
def repo(clean_hub):
    """The hub with the test repo; returns (hub, commit)."""
    return clean_hub, add_revision(clean_hub.store.root, REPO, "model", FILES)


def origins(root, lock) -> dict[str, str]:
    return {p: (read_provenance(root, p) or {}).get("origin") for p in lock}


ARTIFACTS = ("raw/config.json", "raw/tokenizer.model", "raw/weights", "derived/tokenizer.model", "derived/meta.json")


def test_node_b_converges_from_the_remote_alone(repo, s3, tmp_path, monkeypatch):
    hub, commit = repo
    project = tmp_path / "project"
    lock = write_lock(project, lock_text(commit, remote=s3.url()))
    a = run_cli("--root", "node-a", "apply", cwd=project)
    assert a.code == 0, a.text
    assert run_cli("--root", "node-a", "lock", cwd=project).code == 0  # pins everything: a new lock digest
    pushed = run_cli("--root", "node-a", "push", cwd=project)
    assert pushed.code == 0 and "manifest" in pushed.out, pushed.text
    assert any(k.startswith("team/v1/manifests/") for k in s3.keys("team/"))

    hub.reset()
    hub.fail(10_000, status=503)  # the hub is down for node B: any request it made would show in the log
    b = run_cli("--root", "node-b", "apply", "--json", cwd=project)
    assert b.code == 0, b.text
    assert {r["path"]: r["origin"] for r in b.json()["artifacts"]} == dict.fromkeys(ARTIFACTS, "remote")
    assert origins(project / "node-b", ARTIFACTS) == dict.fromkeys(ARTIFACTS, "remote")  # provenance says so too
    assert hub.requests() == []
    check = run_cli("--root", "node-b", "check", cwd=project)
    assert check.code == 0, check.text
    # and the bytes are the hub's bytes
    assert (project / "node-b/raw/weights/a.bin").read_bytes() == FILES["weights/a.bin"]
    # pull on a third node, and check --remote (+ --deep), also with the hub down
    assert run_cli("--root", "node-c", "pull", cwd=project).code == 0
    assert run_cli("--root", "node-c", "check", cwd=project).code == 0
    for deep in ((), ("--deep",)):
        r = run_cli("check", "--remote", *deep, cwd=project)
        assert r.code == 0 and "5 ok, 0 not ok" in r.out, r.text
    assert hub.requests() == []
    assert "remote" in lock.read_text()


def test_four_nodes_build_each_artifact_exactly_once(repo, s3, tmp_path):
    hub, commit = repo
    project = tmp_path / "project"
    write_lock(project, lock_text(commit, remote=s3.url(), tag=uuid.uuid4().hex))  # a recipe nobody built
    procs = [fork_cli("--root", f"node-{i}", "apply", cwd=project) for i in range(4)]
    results = [p.wait(180) for p in procs]
    assert all(r.code == 0 for r in results), [r.text for r in results]
    built = {p: [i for i in range(4) if (read_provenance(project / f"node-{i}", p) or {}).get("origin") == "built"]
             for p in ("derived/tokenizer.model", "derived/meta.json")}
    assert all(len(nodes) == 1 for nodes in built.values()), built  # each transform ran once in total
    fetched = {p: [i for i in range(4) if (read_provenance(project / f"node-{i}", p) or {}).get("origin") == "hub"]
               for p in ("raw/config.json", "raw/tokenizer.model", "raw/weights")}
    assert all(len(nodes) == 1 for nodes in fetched.values()), fetched  # and each download too
    assert len(hub.requests(method="GET", file="tokenizer.model")) == 1
    for p in ARTIFACTS[:2] + ARTIFACTS[3:]:  # all four converged to the same bytes
        assert len({(project / f"node-{i}" / p).read_bytes() for i in range(4)}) == 1
    assert (project / "node-3/derived/tokenizer.model").read_bytes() == FILES["tokenizer.model"]
    assert not s3.keys("team/v1/leases/")  # every lease was released


def _pinned_project(repo, s3, tmp_path):
    """Node A applied, locked and pushed; returns (project, lock text)."""
    _, commit = repo
    project = tmp_path / "project"
    write_lock(project, lock_text(commit, remote=s3.url()))
    assert run_cli("--root", "node-a", "apply", cwd=project).code == 0
    assert run_cli("--root", "node-a", "lock", cwd=project).code == 0
    assert run_cli("--root", "node-a", "push", cwd=project).code == 0
    return project


def test_a_push_killed_before_its_manifest_reads_as_incomplete(repo, s3, tmp_path):
    _, commit = repo
    project = tmp_path / "project"
    big = random.Random(9).randbytes(48 << 20)
    (project / "node-a" / "big").mkdir(parents=True)
    (project / "node-a" / "big" / "blob.bin").write_bytes(big)
    text = lock_text(commit, remote=s3.url()) + (
        "  big/blob.bin:\n    build: {transform: copy, inputs: {src: big/src.bin}}\n"
        "  big/src.bin:\n    build: {transform: write_json, params: {data: {n: 1}}}\n")
    write_lock(project, text)
    assert run_cli("--root", "node-a", "apply", "--no-push", cwd=project).code == 0
    (project / "node-a" / "big" / "blob.bin").write_bytes(big)  # a large local-only artifact to push
    # pin the big file as it is now, so push uploads it
    text = text.replace("  big/blob.bin:\n    build: {transform: copy, inputs: {src: big/src.bin}}\n",
                        f"  big/blob.bin:\n    fetch: {{source: m, path: config.json}}\n    sha256: {sha(big)}\n")
    write_lock(project, text)
    push = fork_cli("--root", "node-a", "push", cwd=project)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and push.poll() is None:
        uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
        if uploads:
            break
        time.sleep(0.005)
    push.kill()
    push.wait()
    assert not [k for k in s3.keys("team/") if "/manifests/" in k], "the push finished before it was killed"
    for args in (("check", "--remote"), ("--root", "node-b", "pull")):
        r = run_cli(*args, cwd=project)
        assert r.code == 1 and "incomplete push" in r.err, r.text
        assert "Traceback" not in r.text
    assert not (project / "node-b" / "raw").exists()  # no partial success
    # the push resumes and completes
    assert run_cli("--root", "node-a", "push", cwd=project).code == 0
    assert run_cli("check", "--remote", cwd=project).code == 0


def test_a_tampered_blob_is_refused_and_nothing_is_published(repo, s3, tmp_path):
    project = _pinned_project(repo, s3, tmp_path)
    key = f"team/{layout.blob_key(sha(FILES['tokenizer.model']))}"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=random.Random(7).randbytes(len(FILES["tokenizer.model"])))
    for cmd in (("pull",), ("apply", "--no-push")):
        r = run_cli("--root", "node-b", *cmd, cwd=project)
        assert r.code == 1, r.text
        assert "raw/tokenizer.model" in r.err and key in r.err and "nothing was published" in r.err, r.text
        assert not (project / "node-b" / "raw" / "tokenizer.model").exists()
        assert temp_files(project / "node-b") == []
    r = run_cli("check", "--remote", "--deep", cwd=project)
    assert r.code == 1 and "hashes to" in r.out


@pytest.mark.parametrize("case", ["wrong credentials", "missing bucket", "unreachable endpoint"])
@pytest.mark.parametrize("cmd", [("pull",), ("push",), ("check", "--remote"), ("apply",)])
def test_remote_faults_are_one_clear_error(case, cmd, s3, moto_with_auth, tmp_path, monkeypatch):
    project = tmp_path / "project"
    url = s3.url()
    if case == "wrong credentials":
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_with_auth)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    elif case == "missing bucket":
        url = "s3://no-such-bucket-here/team"
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        monkeypatch.setenv("RECONCILE_REMOTE_RETRIES", "1")
    write_lock(project, 'version: 1\nstorage_version: "1"\nroot: storage\n'
                        f"remote: {{url: {url}}}\nartifacts:\n  a.json:\n"
                        "    build: {transform: write_json, params: {data: {x: 1}}}\n")
    if cmd == ("push",):  # something to push, applied against a scratch remote
        assert run_cli("--remote", f"file://{tmp_path}/scratch", "apply", "--no-push", cwd=project).code == 0
    r = run_cli(*cmd, cwd=project)
    want = {"wrong credentials": "refused the credentials", "missing bucket": "does not exist",
            "unreachable endpoint": "cannot reach the remote endpoint"}[case]
    assert r.code == 1, r.text
    assert want in r.err and r.err.count("error:") == 1 and "Traceback" not in r.text, r.text
    assert "fix:" in r.err


def test_remote_url_from_flag_and_env_override_the_lock(repo, s3, tmp_path, monkeypatch):
    _, commit = repo
    project = tmp_path / "project"
    write_lock(project, lock_text(commit, remote="s3://elsewhere/never"))
    assert run_cli("--root", "a", "apply", "--remote", s3.url("flag"), cwd=project).code == 0
    assert any(k.startswith("flag/v1/manifests/") for k in s3.keys())
    monkeypatch.setenv("RECONCILE_REMOTE", s3.url("env"))
    assert run_cli("--root", "a", "push", cwd=project).code == 0
    assert any(k.startswith("env/v1/manifests/") for k in s3.keys())


def test_a_shared_folder_remote_works_the_same(repo, tmp_path):
    _, commit = repo
    project = tmp_path / "project"
    shared = tmp_path / "shared"
    write_lock(project, lock_text(commit, remote=f"file://{shared}"))
    assert run_cli("--root", "node-a", "apply", cwd=project).code == 0
    b = run_cli("--root", "node-b", "apply", cwd=project)
    assert b.code == 0 and "Origin: 5 remote." in b.out, b.text
    manifests = list((shared / "v1" / "manifests").iterdir())
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["format"] == layout.FORMAT


# VmHWM, not getrusage: Linux carries ru_maxrss across fork+exec, so a child would report pytest's own peak.
_PULL_AND_REPORT_RSS = """
import sys
from reconciler.cli import main
try:
    main.main(args=sys.argv[1:], prog_name="reconcile")
except SystemExit as e:
    code = e.code
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("maxrss_kb", hwm, file=sys.stderr)
sys.exit(code)
"""


def _blob_in_bucket(s3, tmp_path, size: int) -> tuple[str, int]:
    """Write `size` pseudo-random bytes to the bucket at their blob key (streamed); returns (sha256, size)."""
    src = tmp_path / f"src-{size}"
    h = hashlib.sha256()
    rnd = random.Random(size)
    with open(src, "wb") as f:
        for _ in range(size >> 20):
            chunk = rnd.randbytes(1 << 20)
            h.update(chunk)
            f.write(chunk)
    digest = h.hexdigest()
    s3.client.upload_file(str(src), s3.bucket, f"team/{layout.blob_key(digest)}")
    src.unlink()
    return digest, size


@pytest.mark.slow
def test_pulling_a_large_blob_keeps_memory_flat(s3, tmp_path):
    """Peak RSS of `apply` restoring a 192 MiB blob vs a 96 MiB one: the difference stays far below 96 MiB
    (the 1 GiB figure is in `make bench`). 96 MiB, not less, as the smaller one: its pull must already have
    filled every bounded buffer (the receive queue, the staging file's direct-write blocks); from 48 MiB the
    difference was 32-38 MiB of buffers still filling, with this code and the code before it alike
    (measured 2026-11-30: 3 of 3 runs over 32 MiB at 48 vs 144; at 96 vs 192: +2, +17, -6 MiB)."""
    peaks = {}
    for mib in (96, 192):
        digest, size = _blob_in_bucket(s3, tmp_path, mib << 20)
        project = tmp_path / f"p{mib}"
        write_lock(project, 'version: 1\nstorage_version: "1"\nroot: storage\n'
                            f"remote: {{url: {s3.url()}}}\n"
                            f"sources:\n  m: {{repo: {REPO}, type: model, revision: \"{'0' * 40}\"}}\n"
                            f"artifacts:\n  big.bin:\n    fetch: {{source: m, path: big.bin}}\n"
                            f"    sha256: {digest}\n    size: {size}\n")
        p = subprocess.Popen([sys.executable, "-c", _PULL_AND_REPORT_RSS, "apply", "--no-push"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
        assert hashlib.sha256((project / "storage/big.bin").read_bytes()).hexdigest() == digest
        peaks[mib] = int(err.rsplit("maxrss_kb", 1)[1].split()[0]) * 1024
    grew = peaks[192] - peaks[96]
    assert grew < 32 << 20, f"peak RSS grew by {grew >> 20} MiB for 96 MiB more data: {peaks}"


@pytest.mark.parametrize("partial_ok", [True, False])
def test_a_pull_resumes_from_the_bytes_an_earlier_one_left(partial_ok, s3, tmp_path):
    """A partial file left by a killed pull is continued with a Range GET: good bytes publish, and bad ones
    are caught by the hash (which proves the kept bytes were used, not fetched again)."""
    from reconciler.layout import partial_dir
    from reconciler.remote.node import restore_file
    from reconciler.remote.store import Remote
    from reconciler.state import StatCache
    data = random.Random(5).randbytes(3_000_000)
    digest = sha(data)
    s3.client.put_object(Bucket=s3.bucket, Key=f"team/{layout.blob_key(digest)}", Body=data)
    root = tmp_path / "root"
    kept = bytearray(data[:1_000_000])
    if not partial_ok:
        kept[10] ^= 1
    partial_dir(root).mkdir(parents=True)
    (partial_dir(root) / f"remote-{digest}").write_bytes(kept)
    remote, cache = Remote(s3.url()), StatCache(root)
    if partial_ok:
        got = restore_file(remote, root, "a/blob.bin", digest, len(data), cache)
        assert got.sha256 == digest and (root / "a/blob.bin").read_bytes() == data
    else:
        with pytest.raises(Exception, match="resumed after 1000000 kept bytes"):
            restore_file(remote, root, "a/blob.bin", digest, len(data), cache)
        assert not (root / "a/blob.bin").exists()
    assert not (partial_dir(root) / f"remote-{digest}").exists()  # used once, then gone either way
    assert temp_files(root) == []
