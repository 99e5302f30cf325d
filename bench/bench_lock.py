"""Lock scale: `load_lock` + `make_plan` on a generated 10,000-artifact lock, pure planner (no disk).

The lock mixes pinned fetch artifacts (from a few pinned sources) with build chains
(`write_json` roots, then `copy` steps reading the previous link). The observed state is
synthetic: every artifact present with its pinned sha256, except every 50th (missing), so the
planner walks every branch it has (ok, fetch, build, and rebuilds downstream). Baseline: a plain
`yaml.safe_load` of the same text, the least any YAML lock reader must do.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import yaml
from _util import Paired, Row, alternate, fmt_s, pairs_for, verdict

GOAL_S = 1.0


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lock_text(n: int, chain: int = 5) -> str:
    """A valid lock of `n` artifacts in the canonical layout (block per artifact, flow inside it):
    half pinned fetches, half build chains of `chain` links (`write_json`, then `copy` steps)."""
    lines = ['version: 1', 'storage_version: "1"', "root: storage", "sources:"]
    for s in range(4):
        lines.append(f"  src{s}: {{repo: org/model-{s}, type: model, revision: {_sha(f'rev{s}')[:40]}}}")
    lines.append("artifacts:")
    n_fetch = n // 2
    for i in range(n_fetch):
        lines += [f"  fetched/src{i % 4}/file-{i:05d}.bin:",
                  f"    fetch: {{source: src{i % 4}, path: weights/file-{i:05d}.bin}}",
                  f"    sha256: {_sha(f'f{i}')}", f"    size: {1000 + i}"]
    for i in range(n - n_fetch):
        c, link = divmod(i, chain)
        path = f"built/chain-{c:05d}/step-{link}.json"
        if link == 0:
            build = f"{{transform: write_json, params: {{data: {{chain: {c}}}}}}}"
        else:
            build = f"{{transform: copy, inputs: {{src: built/chain-{c:05d}/step-{link - 1}.json}}}}"
        lines += [f"  {path}:", f"    build: {build}", f"    sha256: {_sha(path)}"]
    return "\n".join(lines) + "\n"


def synthetic_state(lock) -> dict:
    """Observed state: pinned bytes present everywhere, except every 50th artifact missing."""
    from reconciler.state import Observed
    out = {}
    for i, (path, a) in enumerate(lock.artifacts.items()):
        if i % 50 == 0:
            out[path] = Observed(path, "missing")
        else:
            out[path] = Observed(path, "file", a.size or 100, a.sha256)
    return out


def _load_and_plan(lock_path: Path):
    from reconciler.lockfile import load_lock
    from reconciler.plan import make_plan
    t0 = time.perf_counter()
    lock = load_lock(lock_path)
    t1 = time.perf_counter()
    observed = synthetic_state(lock)  # not timed: stands in for the disk
    t2 = time.perf_counter()
    plan = make_plan(lock, observed)
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, plan


def run(work: Path, quick: bool) -> list[Row]:
    """Time load_lock + make_plan against yaml.safe_load of the same text, alternating (median of pairs)."""
    from reconciler.registry import load_plugins
    load_plugins()  # plug-in imports (torch) are start-up cost, not lock cost
    n = 2_000 if quick else 10_000
    work.mkdir(parents=True, exist_ok=True)
    path = work / "storage.lock.yaml"
    text = lock_text(n)
    path.write_text(text)
    parts: list[tuple[float, float]] = []

    def ours() -> float:
        load_s, plan_s, _ = _load_and_plan(path)
        parts.append((load_s, plan_s))
        return load_s + plan_s

    runs = [ours, lambda: _time_yaml(text, yaml.SafeLoader)]
    if yaml.__with_libyaml__:
        runs.append(lambda: _time_yaml(text, yaml.CSafeLoader))
    samples = alternate(runs, pairs_for(quick))
    p = Paired(samples[0], samples[1])
    load_s, plan_s = min(parts, key=lambda x: abs(sum(x) - p.med_a))  # the split of a median run
    plan = _load_and_plan(path)[2]
    total, yaml_s = p.med_a, p.med_b
    c_yaml_s = statistics.median(samples[2]) if len(samples) > 2 else None
    counts = {k: v for k, v in plan.counts().items() if v}
    data = {"artifacts": n, "lock_bytes": len(text), "load_lock_s": round(load_s, 4), "make_plan_s": round(plan_s, 4),
            "total_s": round(total, 4), "yaml_safe_load_s": round(yaml_s, 4), "plan_counts": counts,
            "yaml_csafeloader_s": round(c_yaml_s, 4) if c_yaml_s else None, "pairs": p.data()}
    label = f"6 lock scale ({n:,} artifacts, {len(text) / 1e6:.1f} MB)"
    rows = [
        Row(label, "load_lock + make_plan (synthetic state)", fmt_s(total), f"yaml.safe_load {fmt_s(yaml_s)}",
            p.cell(), f"< {GOAL_S:.0f} s", verdict(total < GOAL_S), data),
        Row(label, "of which load_lock / make_plan (a median run)", f"{fmt_s(load_s)} / {fmt_s(plan_s)}",
            f"plan: {', '.join(f'{v} {k}' for k, v in counts.items())}"),
    ]
    if c_yaml_s:
        rows.append(Row(label, "YAML parse alone with libyaml (CSafeLoader)", fmt_s(c_yaml_s),
                        f"yaml.safe_load {fmt_s(yaml_s)}", f"{c_yaml_s / yaml_s:.2f}x"))
    return rows


def _time_yaml(text: str, loader) -> float:
    t0 = time.perf_counter()
    yaml.load(text, Loader=loader)  # noqa: S506 - safe loaders only
    return time.perf_counter() - t0
