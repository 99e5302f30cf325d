"""`make demo`: build a miniature WMTP storage through the real download path, offline.

1. generate miniature upstream repos into a local stand-in hub (127.0.0.1, free port);
2. `reconcile plan`, `apply` (real huggingface_hub client, gated repo with a token),
   `lock` (pin on first use), `check` (every declared check), `apply` again (nothing to do),
   `docs`, and `check --attest`.
The hub runs in this process; each step is the real CLI in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _env(hub_url: str, hf_home: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    from upstream import DEMO_TOKEN
    env.update({"HF_ENDPOINT": hub_url, "HF_TOKEN": DEMO_TOKEN, "HF_HOME": hf_home,
                "HF_HUB_DISABLE_TELEMETRY": "1"})
    return env


def _step(title: str, args: list[str], env: dict, cwd: Path, ok_codes=(0,)) -> None:
    print(f"\n$ reconcile {' '.join(args)}    # {title}", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run([sys.executable, "-m", "reconciler", *args], env=env, cwd=cwd).returncode
    print(f"  (exit {rc}, {time.monotonic() - t0:.1f} s)", flush=True)
    if rc not in ok_codes:
        sys.exit(f"demo failed at: reconcile {' '.join(args)} (exit {rc})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo-out"), help="fresh folder for the demo (replaced)")
    out = ap.parse_args().out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from reconcile_testing.hub import LocalHub
    from upstream import build_store
    print(f"Generating miniature upstream repos in {out / 'hub-store'} ...", flush=True)
    commits = build_store(out / "hub-store")
    for repo, commit in commits.items():
        print(f"  {repo}@{commit[:12]}")
    shutil.copy(HERE / "storage.lock.yaml", out / "storage.lock.yaml")
    with LocalHub(out / "hub-store") as hub, tempfile.TemporaryDirectory() as hf_home:
        print(f"Local hub: {hub.url}")
        env = _env(hub.url, hf_home)
        _step("preview: everything missing", ["plan"], env, out)
        _step("converge: download from the hub, convert, derive", ["apply", "--jobs", "4"], env, out)
        _step("pin what apply produced (trust on first use)", ["lock"], env, out)
        _step("the lock is now complete and canonical", ["lock", "--check"], env, out)
        _step("the pre-training gate: bytes + every declared check", ["check"], env, out)
        _step("idempotent: nothing to do", ["apply"], env, out)
        _step("storage README from the lock", ["docs"], env, out)
        _step("fast re-check through the stat cache, with an attestation", ["check", "--attest", "attestation.json"],
              env, out)
    print(f"\nDemo storage: {out / 'storage'}\nLock (pinned): {out / 'storage.lock.yaml'}")


if __name__ == "__main__":
    main()
