"""Peers: reconcile against the tools a user would otherwise pick, on the same 1,000 x 1 MiB files.

* apply vs huggingface_hub `snapshot_download`: 1,000 files from the local hub (its own process),
  8 parallel downloads each; every run from a clean slate (output and cache removed, `os.sync()`).
  Ours verifies each file against its pinned sha256 and fsyncs it; snapshot_download does neither.
* warm `reconcile check` vs `dvc status`, both with their caches warm (nothing hashed).
* cold `reconcile check --deep` (every file rehashed) vs `dvc status` after clearing its state
  (DVC's state db in `core.site_cache_dir` and `.dvc/tmp`: it rehashes every file).

Whole processes, start-up included, page cache warm. dvc and huggingface_hub run from the bench's own
venv (`bench-out/peers-venv`, created on first use with `pip install dvc huggingface_hub`); where it
cannot be created the rows say so and are skipped. Each ratio is the median of per-pair ratios over
alternating pairs after a warm-up pair (`_util.paired`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _util import REPO, Row, fmt_s, paired, pairs_for, python, run_cmd, timed_cmd, verdict, warm

FILES, SIZE = 1000, 1 << 20
REPO_ID = "bench/peers"
GOALS = {"apply": 0.75, "check": 0.5, "deep": 0.4}
PEERS_VENV = REPO / "bench-out" / "peers-venv"


def peers_venv() -> tuple[Path | None, str]:
    """(bin folder of a venv with dvc and huggingface_hub, "") or (None, why not)."""
    bin_ = PEERS_VENV / "bin"
    probe = [str(bin_ / "python"), "-c", "import dvc, huggingface_hub"]
    if (bin_ / "python").exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return bin_, ""
    try:
        run_cmd([sys.executable, "-m", "venv", str(PEERS_VENV)])
        run_cmd([str(bin_ / "pip"), "install", "-q", "dvc", "huggingface_hub"], timeout=1800)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return None, f"peers venv unavailable ({str(e).splitlines()[0][:120]})"
    return bin_, ""


def _lock(path: Path, commit: str, files: dict[str, tuple[str, int]]) -> Path:
    lines = ['version: 1\nstorage_version: "1"\nroot: root\n',
             f"sources:\n  hub: {{repo: {REPO_ID}, type: model, revision: {commit}}}\nartifacts:"]
    for name, (sha, size) in sorted(files.items()):
        lines += [f"  data/{name}:", f"    fetch: {{source: hub, path: {name}}}", f"    sha256: {sha}", f"    size: {size}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_files(work: Path) -> tuple[Path, str, dict[str, tuple[str, int]]]:
    """1,000 distinct random 1 MiB files in a hub store; returns (store, commit, name -> (sha256, size))."""
    import hashlib
    import random

    from reconcile_testing.hub import add_revision
    rng = random.Random(7)
    block = rng.randbytes(SIZE + FILES)
    blobs = {f"f{i:04d}.bin": block[i:i + SIZE] for i in range(FILES)}  # distinct windows of one block
    store = work / "store"
    commit = add_revision(store, REPO_ID, "model", blobs)
    meta = {n: (hashlib.sha256(b).hexdigest(), len(b)) for n, b in blobs.items()}
    warm(list(store.rglob("*.bin")))
    return store, commit, meta


def _clean_timed(cmd: list[str], remove: list[Path], env: dict, cwd: Path | None = None) -> float:
    for p in remove:
        shutil.rmtree(p, ignore_errors=True)
    os.sync()
    return timed_cmd(cmd, env=env, cwd=cwd)


def apply_rows(work: Path, bin_: Path, hub_url: str, lock: Path, commit: str, pairs: int) -> list[Row]:
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HOME=str(work / "hf-home"))
    ours = [python(), "-m", "reconciler", "--lock", str(lock), "apply", "-j", "8", "--no-hf-cache"]  # a real download
    script = (f"from huggingface_hub import snapshot_download; snapshot_download({REPO_ID!r}, revision={commit!r}, "
              f"cache_dir={str(work / 'hf-cache')!r}, max_workers=8)")
    theirs = [str(bin_ / "python"), "-c", script]
    p = paired(lambda: _clean_timed(ours, [lock.parent / "root"], env),
               lambda: _clean_timed(theirs, [work / "hf-cache"], env), pairs)
    got = sorted((work / "hf-cache").rglob("*.bin"))
    if len(got) != FILES:
        raise RuntimeError(f"snapshot_download left {len(got)} files, expected {FILES}")
    label = f"P peers ({FILES:,} x 1 MiB files, page cache warm)"
    return [Row(label, "`reconcile apply -j 8` vs huggingface_hub `snapshot_download(max_workers=8)`, local hub",
                fmt_s(p.med_a), f"snapshot_download {fmt_s(p.med_b)}", p.cell(), f"<= {GOALS['apply']}x",
                verdict(p.ratio <= GOALS["apply"]), p.data())]


def dvc_rows(work: Path, bin_: Path, lock: Path, pairs: int) -> list[Row]:
    root = lock.parent / "root"
    site = work / "dvc-site"
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    dvc = str(bin_ / "dvc")
    run_cmd([dvc, "init", "--no-scm", "-q"], cwd=root, env=env)
    run_cmd([dvc, "config", "core.site_cache_dir", str(site)], cwd=root, env=env)
    run_cmd([dvc, "config", "core.analytics", "false"], cwd=root, env=env)
    run_cmd([dvc, "add", "-q", "data"], cwd=root, env=env)
    warm(sorted((root / "data").iterdir()))
    check = [python(), "-m", "reconciler", "--lock", str(lock), "check"]
    status = [dvc, "status", "-q"]

    def dvc_cold() -> float:
        shutil.rmtree(site, ignore_errors=True)
        shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)
        return timed_cmd(status, cwd=root, env=env)

    warm_p = paired(lambda: timed_cmd(check), lambda: timed_cmd(status, cwd=root, env=env), pairs)
    hashed = run_cmd(check).stdout.strip().splitlines()[-1]
    cold_p = paired(lambda: timed_cmd(check + ["--deep"]), dvc_cold, pairs)
    deep = run_cmd(check + ["--deep"]).stdout.strip().splitlines()[-1]
    label = f"P peers ({FILES:,} x 1 MiB files, page cache warm)"
    return [
        Row(label, f"warm `reconcile check` vs `dvc status` (both caches warm; ours: {hashed})", fmt_s(warm_p.med_a),
            f"dvc status {fmt_s(warm_p.med_b)}", warm_p.cell(), f"<= {GOALS['check']}x",
            verdict(warm_p.ratio <= GOALS["check"] and "0 file(s) hashed" in hashed), warm_p.data()),
        Row(label, f"cold `reconcile check --deep` vs `dvc status` with its state cleared (ours: {deep})",
            fmt_s(cold_p.med_a), f"dvc status {fmt_s(cold_p.med_b)}", cold_p.cell(), f"<= {GOALS['deep']}x",
            verdict(cold_p.ratio <= GOALS["deep"] and f"{FILES} file(s) hashed" in deep), cold_p.data()),
    ]


def run(work: Path, quick: bool, only: str | None = None) -> list[Row]:
    """The three peer rows (or `only` "apply" / "check")."""
    from bench_download import HubProcess
    bin_, why = peers_venv()
    if bin_ is None:
        return [Row("P peers", "skipped", why)]
    work.mkdir(parents=True, exist_ok=True)
    run_cmd([python(), "-m", "compileall", "-q", str(REPO / "reconciler")])  # .pyc as an installed wheel has
    store, commit, meta = make_files(work)
    lock = _lock(work / "peers" / "storage.lock.yaml", commit, meta)
    pairs = pairs_for(quick)
    rows: list[Row] = []
    with HubProcess(store, work / "hub.url") as hub:
        if only in (None, "apply"):
            rows += apply_rows(work, bin_, hub.url, lock, commit, pairs)
        env = dict(os.environ, HF_ENDPOINT=hub.url)
        shutil.rmtree(lock.parent / "root", ignore_errors=True)
        run_cmd([python(), "-m", "reconciler", "--lock", str(lock), "apply", "-j", "8"], env=env)
    if only in (None, "check"):
        rows += dvc_rows(work, bin_, lock, pairs)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    t0 = time.perf_counter()
    for r in run(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench-out" / "work" / "peers", "--quick" in sys.argv):
        print(r.bench, "|", r.figure, "|", r.ours, "|", r.baseline, "|", r.ratio, "|", r.goal, "|", r.met)
    print(f"{time.perf_counter() - t0:.0f} s")
