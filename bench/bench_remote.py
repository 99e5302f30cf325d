"""Remote (issue 15): push and pull of a 1 GiB artifact through a moto S3 server vs the raw client, and
N concurrent appliers on an empty remote.

moto is slow, so only ratios mean anything: each pair runs ours and the baseline with the same client
(obstore), the same server and the same part/chunk sizes, in fresh child processes (the figure is the
operation itself, measured inside the child: imports and start-up excluded), alternating A B A B.
- push: `remote.sync.push` (verify against the pin via the stat cache, upload hashing as it reads,
  action-cache entry, manifest) vs `obstore.put(path)` of the same file; the blob is deleted before each.
- pull: `remote.sync.pull` into a fresh root (the publish path: hash while writing, compare, fsync,
  rename) vs `obstore.get` streamed into a file + fsync. Client CPU (user+sys of the child during the
  operation, every thread) per GiB pulled is its own row.
- N appliers: 4 `reconcile apply` processes at once on an empty prefix; each build must run exactly once.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from _util import GIB, MB, Row, fmt_s, python, verdict, write_random_file

PAIRS = 5
PULL_GOAL, PUSH_GOAL, CPU_GOAL = 0.8, 0.8, 2.5  # ratios vs raw; client CPU s per GiB pulled
BUCKET = "bench"

_SERVER = """
import sys
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print("http://%s:%d" % s.get_host_and_port(), flush=True)
sys.stdin.read()
"""

_CHILD = """
import json, os, resource, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
import obstore
from reconciler.lockfile import load_lock
from reconciler.remote.store import PART_SIZE, READ_CHUNK, Remote
lock = load_lock(args["lock"])
remote = Remote(args["url"])
remote.probe()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
mode = args["mode"]
if mode == "push":
    from reconciler.remote.sync import push
    push(lock, Path(args["root"]), remote)
elif mode == "raw_put":
    obstore.put(remote.store, args["key"], Path(args["file"]), chunk_size=PART_SIZE, max_concurrency=8)
elif mode == "pull":
    from reconciler.remote.sync import pull
    pull(lock, Path(args["root"]), remote, [])
elif mode == "raw_get":
    with open(args["file"], "wb", buffering=0) as f:
        for chunk in obstore.get(remote.store, args["key"]).stream(min_chunk_size=READ_CHUNK):
            f.write(chunk)
        os.fsync(f.fileno())
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu() - c0}))
"""


def _env(endpoint: str) -> dict:
    return dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", RECONCILE_NO_HF_CACHE="1")


def _child(env: dict, **args) -> dict:
    p = subprocess.run([python(), "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, env=env,
                       timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"bench child {args['mode']} failed: {p.stderr.strip()[-800:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _lock(path: Path, url: str, sha: str, size: int, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('version: 1\nstorage_version: "1"\nroot: storage\n'
                    f"remote: {{url: {url}}}\n"
                    f"sources:\n  m: {{repo: bench/none, type: model, revision: \"{'0' * 40}\"}}\n"
                    f"artifacts:\n  big.bin:\n    fetch: {{source: m, path: big.bin}}\n"
                    f"    sha256: {sha}\n    size: {size}\n" + extra)
    return path


def _ratio_rows(label: str, pairs: list[tuple[dict, dict]], nbytes: int, what: str, base: str, goal: float) -> Row:
    """Throughput ratio per pair (baseline time / our time); median and min-max."""
    ratios = [b["wall"] / a["wall"] for a, b in pairs]
    med = statistics.median(ratios)
    ours = statistics.median(a["wall"] for a, _ in pairs)
    theirs = statistics.median(b["wall"] for _, b in pairs)
    return Row(label, what, f"{fmt_s(ours)} ({nbytes / MB / ours:,.0f} MB/s)",
               f"{base} {fmt_s(theirs)} ({nbytes / MB / theirs:,.0f} MB/s)",
               f"{med:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})", f">= {goal}x", verdict(med >= goal),
               {"pairs": pairs, "ratios": ratios})


def _concurrent(s3, env: dict, work: Path, n: int = 4) -> Row:
    """n `reconcile apply` processes at once on an empty prefix: builds per artifact (must be 1 each)."""
    from reconciler.hashing import sha256_file
    from reconciler.provenance import read_provenance
    from reconciler.remote.layout import blob_key
    prefix = f"appliers-{uuid.uuid4().hex[:8]}"
    project = work / "appliers"
    src = write_random_file(work / "appliers-src.bin", 64 << 20, seed=16)
    sha = sha256_file(src)
    # the input is already on the remote (a pinned blob, as after a push), so every node restores it; the two
    # builds over it are recipes nobody has built
    s3.upload_file(str(src), BUCKET, f"{prefix}/{blob_key(sha)}")
    extra = ("  copy.bin:\n    build: {transform: copy, inputs: {src: big.bin}}\n"
             f"  meta.json:\n    build: {{transform: write_json, params: {{data: {{run: {uuid.uuid4().hex}}}}}}}\n")
    _lock(project / "storage.lock.yaml", f"s3://{BUCKET}/{prefix}", sha, 64 << 20, extra)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([python(), "-c", "from reconciler.cli import main; main()", "--root", f"node-{i}",
                               "apply"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(n)]
    outs = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    took = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"an applier failed: {[o[1][-400:] for o in outs]}")
    built = {a: sum((read_provenance(project / f"node-{i}", a) or {}).get("origin") == "built" for i in range(n))
             for a in ("copy.bin", "meta.json")}
    ok = all(v == 1 for v in built.values())
    return Row(f"remote: {n} concurrent `reconcile apply`, empty remote (64 MiB input restored by each)",
               "builds per artifact (2 recipes nobody built)",
               ", ".join(f"{a} built {v}x" for a, v in built.items()) + f"; all {n} exit 0",
               f"{n} nodes in {fmt_s(took)}", "", "exactly 1 build each", verdict(ok),
               {"built": built, "codes": codes, "seconds": took})


def run(work: Path, quick: bool) -> list[Row]:
    """The remote rows (quick: 64 MiB, 2 pairs)."""
    import boto3
    size = (64 << 20) if quick else GIB
    pairs = 2 if quick else PAIRS
    work.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([python(), "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        endpoint = server.stdout.readline().strip()
        env = _env(endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench")
        s3.create_bucket(Bucket=BUCKET)
        url = f"s3://{BUCKET}/team"
        node_a = work / "node-a"
        big = write_random_file(node_a / "storage" / "big.bin", size, seed=15)
        from reconciler.hashing import sha256_file
        from reconciler.remote.layout import blob_key
        sha = sha256_file(big)
        lock = _lock(node_a / "storage.lock.yaml", url, sha, size)
        key = f"team/{blob_key(sha)}"
        push_pairs, pull_pairs = [], []
        _child(env, mode="push", lock=str(lock), url=url, root=str(node_a / "storage"))  # warms the stat cache
        for i in range(pairs):
            s3.delete_object(Bucket=BUCKET, Key=key)
            a = _child(env, mode="push", lock=str(lock), url=url, root=str(node_a / "storage"))
            b = _child(env, mode="raw_put", lock=str(lock), url=url, key=f"raw/put-{i}", file=str(big))
            s3.delete_object(Bucket=BUCKET, Key=f"team/raw/put-{i}")
            push_pairs.append((a, b))
        _child(env, mode="push", lock=str(lock), url=url, root=str(node_a / "storage"))  # blob + manifest in place
        for i in range(pairs):
            root_b = work / f"node-b{i}" / "storage"
            a = _child(env, mode="pull", lock=str(lock), url=url, root=str(root_b))
            raw = work / f"raw-{i}.bin"
            b = _child(env, mode="raw_get", lock=str(lock), url=url, key=blob_key(sha), file=str(raw))
            pull_pairs.append((a, b))
            raw.unlink()
            for p in sorted(root_b.parent.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        label = f"remote: 1 artifact of {size / GIB:.2f} GiB via moto S3 (obstore both sides)"
        cpu = [a["cpu"] / (size / GIB) for a, _ in pull_pairs]
        raw_cpu = [b["cpu"] / (size / GIB) for _, b in pull_pairs]
        rows = [
            _ratio_rows(label, pull_pairs, size, "pull (verify, fsync, rename) vs raw GET + write + fsync",
                        "raw GET", PULL_GOAL),
            _ratio_rows(label, push_pairs, size, "push (verify, hash-guarded upload, manifest) vs raw upload",
                        "raw put", PUSH_GOAL),
            Row(label, "client CPU per GiB pulled (user+sys, all threads, hashing included)",
                f"{statistics.median(cpu):.2f} s/GiB (min {min(cpu):.2f}, max {max(cpu):.2f})",
                f"raw GET {statistics.median(raw_cpu):.2f} s/GiB", "", f"<= {CPU_GOAL} s/GiB",
                verdict(statistics.median(cpu) <= CPU_GOAL), {"cpu_s_per_gib": cpu, "raw": raw_cpu}),
            _concurrent(s3, env, work),
        ]
        return rows
    finally:
        server.stdin.close()
        server.wait(timeout=60)


if __name__ == "__main__":
    out = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench-out/work/remote"), "--quick" in sys.argv)
    for r in out:
        print(r)
