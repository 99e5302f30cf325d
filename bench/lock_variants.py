"""The lock reader with and without its two fast paths, each variant in a fresh interpreter.

    .venv/bin/python bench/lock_variants.py storage.lock.yaml 7
    .venv/bin/python bench/lock_variants.py <(python -c 'import sys; sys.path.insert(0, "bench"); \\
        from bench_lock import lock_text; print(lock_text(2000), end="")') 5

Variants: `current` (fastjsonschema pre-check + YAML event builder), `no_events` (the strict
loader builds every document), `no_precheck` (jsonschema validates everything), `neither`.
Prints the CPU time of the first `load_lock` (schema compilation included, what every command
pays) and the best of 3 warm loads, median and range over the rounds (README "How it works").
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

VARIANTS = ("current", "no_events", "no_precheck", "neither")
CHILD = r'''
import json, sys, time
variant, path = sys.argv[1], sys.argv[2]
from reconciler.registry import load_plugins
load_plugins()
import reconciler.lockfile as lf
if variant in ("no_events", "neither"):
    lf._plain_yaml = lambda text: (False, None)
if variant in ("no_precheck", "neither"):
    lf.compile_schema = lambda schema: None
t0 = time.process_time(); lf.load_lock(path); first = time.process_time() - t0
warm = []
for _ in range(3):
    t0 = time.process_time(); lf.load_lock(path); warm.append(time.process_time() - t0)
print(json.dumps([first, min(warm)]))
'''


def _one(variant: str, path: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CHILD, variant, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    path, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    text = open(path).read()  # a process substitution can be read once: hand the children a real file
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        runs = {v: [] for v in VARIANTS}
        for _ in range(rounds):  # alternating: A B C D, A B C D, ...
            for v in VARIANTS:
                runs[v].append(_one(v, f.name))
    for v, rs in runs.items():
        first, warm = [r[0] * 1000 for r in rs], [r[1] * 1000 for r in rs]
        print(f"{v:12s} first load {statistics.median(first):7.1f} ms ({min(first):.1f}-{max(first):.1f}); "
              f"warm {statistics.median(warm):7.1f} ms ({min(warm):.1f}-{max(warm):.1f})")


if __name__ == "__main__":
    main()
