"""Shared helpers of the `make bench` benchmarks: rows, timing, child processes, cgroups, machine.

Every benchmark module exposes `run(work: Path, quick: bool) -> list[Row]`; `bench/run.py`
renders all rows as one markdown table. A Row holds display strings plus the raw figures
(`data`) that go into results.json.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
MB = 1e6
GIB = 1 << 30


@dataclass
class Row:
    """One line of the results table: our figure, the baseline's, their ratio and the goal."""

    bench: str
    figure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    met: str = ""  # "yes" | "no" | "" (context row)
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain data for results.json."""
        return asdict(self)


def verdict(ok: bool | None) -> str:
    """`yes` / `no` / `` for a goal check (None: no goal on this row)."""
    return "" if ok is None else ("yes" if ok else "no")


def fmt_s(seconds: float) -> str:
    """Seconds with sensible precision."""
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_mbps(nbytes: int, seconds: float) -> str:
    """Throughput in MB/s (10^6 bytes)."""
    return f"{nbytes / MB / seconds:,.0f} MB/s"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    """Median wall time of `repeats` calls, and every sample."""
    samples = [timed(fn)[0] for _ in range(repeats)]
    return statistics.median(samples), samples


PAIRS = 5  # alternating pairs behind every ratio row (after one warm-up pair); --quick: QUICK_PAIRS
QUICK_PAIRS = 2


@dataclass
class Paired:
    """Wall times of A and B measured as alternating pairs (A B A B ...) after a warm-up pair.

    The ratio is taken per pair (A_i / B_i: both saw the same moment of a noisy machine) and
    reported as its median with the min-max over the pairs."""

    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        """A/B of each pair."""
        return [x / y for x, y in zip(self.a, self.b)]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios."""
        return statistics.median(self.ratios)

    @property
    def med_a(self) -> float:
        return statistics.median(self.a)

    @property
    def med_b(self) -> float:
        return statistics.median(self.b)

    def cell(self, invert: bool = False) -> str:
        """`0.42x (0.38-0.47, 5 pairs)`: median per-pair ratio and its range (B/A when `invert`)."""
        return ratio_cell([1 / r for r in self.ratios] if invert else self.ratios)

    def data(self) -> dict:
        """Raw samples for results.json."""
        return {"a_s": [round(x, 4) for x in self.a], "b_s": [round(x, 4) for x in self.b],
                "ratios": [round(r, 4) for r in self.ratios], "median_ratio": round(self.ratio, 4)}


def ratio_cell(ratios: Sequence[float]) -> str:
    """`0.42x (0.38-0.47, 5 pairs)`: the median of per-pair ratios and their range."""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} pairs)"


def alternate(runs: Sequence[Callable[[], float]], pairs: int = PAIRS, warmup: int = 1) -> list[list[float]]:
    """Run each callable in turn (A B C A B C ...): `warmup` unrecorded rounds, then `pairs` recorded ones.

    Each callable runs once per round and returns its own wall seconds (so set-up such as removing
    the last output stays outside the timed span). Returns one list of samples per callable."""
    for _ in range(warmup):
        for fn in runs:
            fn()
    out: list[list[float]] = [[] for _ in runs]
    for _ in range(pairs):
        for samples, fn in zip(out, runs):
            samples.append(fn())
    return out


def paired(run_a: Callable[[], float], run_b: Callable[[], float], pairs: int = PAIRS, warmup: int = 1) -> Paired:
    """A and B alternately (A B A B ...) after a warm-up pair; see `alternate`."""
    return Paired(*alternate([run_a, run_b], pairs, warmup))


def pairs_for(quick: bool) -> int:
    """Recorded pairs per ratio row."""
    return QUICK_PAIRS if quick else PAIRS


def timed_cmd(cmd: Sequence[str], **kw) -> float:
    """Wall seconds of one command (raising with its stderr when it fails)."""
    t0 = time.perf_counter()
    run_cmd(cmd, **kw)
    return time.perf_counter() - t0


def run_cmd(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, raising with its stderr on failure."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res


@dataclass
class ChildResult:
    """How a child process ended: wall time, exit status (negative = signal), its own peak RSS."""

    seconds: float
    returncode: int
    peak_rss_bytes: int
    stdout: str
    stderr: str


def run_child(cmd: Sequence[str], cgroup: Path | None = None, env: dict | None = None) -> ChildResult:
    """Run `cmd`, optionally inside a memory cgroup (joined before exec), and measure it.

    Peak RSS comes from `wait4`'s rusage of this child (ru_maxrss, KiB on Linux). Caveat: Linux
    carries the parent's RSS high-water mark into the child across fork + exec, so this is
    max(parent RSS at fork, child peak); children that can should report their own VmHWM.
    """
    def join_cgroup() -> None:  # runs in the child between fork and exec
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.perf_counter()
    p = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         preexec_fn=join_cgroup if cgroup is not None else None)
    out, err = _drain(p)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(seconds, p.returncode, usage.ru_maxrss * 1024, out, err)


def _drain(p: subprocess.Popen) -> tuple[str, str]:
    """Read a child's stdout and stderr to the end without reaping it (wait4 does that)."""
    import threading
    chunks: dict[str, bytes] = {}

    def read(name: str, stream) -> None:
        chunks[name] = stream.read()

    threads = [threading.Thread(target=read, args=(n, s)) for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (chunks["out"].decode(errors="replace"), chunks["err"].decode(errors="replace"))


class MemoryCgroup:
    """A cgroup v1 memory group with a hard limit (RAM, and RAM+swap where accounted)."""

    def __init__(self, name: str, limit_bytes: int):
        self.path = CGROUP_ROOT / name
        self.limit = limit_bytes

    def __enter__(self) -> MemoryCgroup:
        if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
            raise OSError(f"no cgroup v1 memory controller at {CGROUP_ROOT}")
        if self.path.exists():
            self.path.rmdir()  # left over from an interrupted run (fails if still in use)
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            memsw.write_text(str(self.limit))
        return self

    def reset_peak(self) -> None:
        """Zero the peak-usage and fail counters before the next child."""
        for name in ("memory.max_usage_in_bytes", "memory.failcnt"):
            try:
                (self.path / name).write_text("0")
            except OSError:
                pass
        self.drop_cache()

    def drop_cache(self) -> None:
        """Uncharge page cache left by the previous child (so each starts from zero usage)."""
        try:
            (self.path / "memory.force_empty").write_text("0")
        except OSError:
            pass

    def peak_bytes(self) -> int:
        """Highest charge (RSS + page cache) since the last reset."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int | None:
        """OOM kills in this group (kernels that report `oom_kill` in memory.oom_control)."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return None

    def __exit__(self, *exc) -> None:
        self.drop_cache()
        for _ in range(50):  # the last child may take a moment to leave the group
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def warm(paths: Sequence[Path]) -> None:
    """Read files once so the next readers find them in the page cache."""
    buf = bytearray(8 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def write_random_file(path: Path, nbytes: int, seed: int = 0) -> Path:
    """A file of incompressible bytes (a 64 MB random block repeated; fast to generate)."""
    import random
    block = random.Random(seed).randbytes(min(nbytes, 64 << 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, len(block))
            f.write(block[:n] if n < len(block) else block)
            left -= n
    return path


def machine() -> dict:
    """CPU model, cores, RAM, free disk under the work dir, python and library versions."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(ram / 1e9, 1),
           "disk_free_gb": round(shutil.disk_usage(REPO).free / 1e9, 1),
           "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}"}
    for mod in ("torch", "safetensors", "yaml", "sentencepiece"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            pass
    try:
        import yaml
        out["libyaml"] = bool(yaml.__with_libyaml__)
    except ImportError:
        pass
    return out


def machine_line(m: dict) -> str:
    """One human line describing the machine."""
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['disk_free_gb']} GB disk free; "
            f"Python {m['python']}, torch {m.get('torch', '-')}, safetensors {m.get('safetensors', '-')}, "
            f"{m['os']}")


def python() -> str:
    """The interpreter running the benchmark (children use the same one)."""
    return sys.executable


def timed_clean(fn: Callable[[], object], dest: Path) -> float:
    """Time `fn()` from a clean slate (nothing dirty to write back, no old output); `dest` must then hold bytes."""
    dest.unlink(missing_ok=True)
    os.sync()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    if not dest.is_file() or dest.stat().st_size == 0:
        raise RuntimeError(f"{dest} is missing or empty after the timed step")
    dest.unlink()
    return seconds
