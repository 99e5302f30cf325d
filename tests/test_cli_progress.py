"""apply's progress as users meet it: on a terminal (run under a pseudo-terminal, rendered like a
screen), in a pipe (a progress line at least every RECONCILE_PROGRESS_SECONDS), NO_COLOR, and
Ctrl-C (exit 130 with one line on what was left). Downloads come from the session's local hub.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from tests.fixtures.engine import _clean_env, console_script, spawn_cli
from tests.fixtures.hub import MODEL

GOLDEN = Path(__file__).parent / "golden"


def lock_text(commit: str) -> str:
    return f"""version: 1
storage_version: "1"
sources:
  tiny: {{repo: {MODEL}, type: model, revision: {commit}}}
artifacts:
  raw/model.blob:
    fetch: {{source: tiny, path: model.safetensors}}
  raw/shard-00001.bin:
    fetch: {{source: tiny, path: weights/shard-00001.bin}}
  copies/model.blob:
    build: {{transform: copy, inputs: {{src: raw/model.blob}}}}
"""


def run_in_pty(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 120,
               size: tuple[int, int] = (30, 100)) -> tuple[int, str]:
    """Run the console script with stdin/stdout/stderr on a pseudo-terminal of `size` (rows, columns;
    default 30x100, (0, 0) for one nobody sized); (exit code, raw output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    p = subprocess.Popen([*console_script(), *args], cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                         env=env or _clean_env(), close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    os.close(master)
    return p.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def render_screen(raw: str) -> list[str]:
    """What a terminal shows at the end: carriage returns overwrite, ESC[A moves up, ESC[K / ESC[2K erase."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|\r\n|\r|\n|[^\x1b\r\n]+|\x1b", raw):
        if token in ("\n", "\r\n"):
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b["):
            n = int(token[2:-1] or 1) if token[-1] == "A" and token[2:-1].isdigit() else 1
            if token[-1] == "A":
                row = max(0, row - n)
            elif token[-1] == "K":
                lines[row] = lines[row][:col] if token in ("\x1b[K", "\x1b[0K") else ""
            # colours (m) and other sequences do not move text
        elif token != "\x1b":
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [ln.rstrip() for ln in lines if ln.strip()]


def _normal(lines: list[str]) -> str:
    out = []
    for ln in lines:
        ln = re.sub(r"\x1b\[[0-9;]*m", "", ln)
        ln = re.sub(r"@[0-9a-f]{12}", "@<commit>", ln)
        ln = re.sub(r"\|[^|]*\|", "|<bar>|", ln)
        ln = re.sub(r"\[[^\]]*\]$", "[<time, rate>]", ln)
        out.append(ln)
    return "\n".join(out) + "\n"


def test_tty_progress_renders_cleanly(tmp_path, clean_hub):
    (tmp_path / "storage.lock.yaml").write_text(lock_text(clean_hub.commits["model"]))
    code, raw = run_in_pty(["apply", "--jobs", "1", "--no-hf-cache"], tmp_path)
    assert code == 0, raw
    screen = render_screen(raw)
    bar = next(ln for ln in screen if ln.startswith("download:"))
    assert "100%" in bar and "550k/550k" in bar, bar  # the bar ends at 100% of what was downloaded
    if os.environ.get("RECONCILE_REGEN_GOLDEN"):
        (GOLDEN / "apply_tty.txt").write_text(_normal(screen))
    assert _normal(screen) == (GOLDEN / "apply_tty.txt").read_text()
    assert "\x1b[" in raw, "a terminal gets colours and cursor control"


def test_unsized_terminal_still_shows_the_bar(tmp_path, clean_hub):
    """`script` in CI or `docker run -t` from a pipe: a pty that reports 0x0. tqdm drew empty bars."""
    (tmp_path / "storage.lock.yaml").write_text(lock_text(clean_hub.commits["model"]))
    code, raw = run_in_pty(["apply", "--jobs", "1", "--no-hf-cache"], tmp_path, size=(0, 0))
    assert code == 0, raw
    bar = next((ln for ln in render_screen(raw) if ln.startswith("download:")), None)
    assert bar is not None and "100%" in bar and "550k/550k" in bar and len(bar) <= 80, raw


def test_no_color_and_flag_strip_colours_on_a_terminal(tmp_path, clean_hub):
    (tmp_path / "storage.lock.yaml").write_text(lock_text(clean_hub.commits["model"]))
    code, raw = run_in_pty(["plan", "--all"], tmp_path)
    assert code == 0 and "\x1b[36m" in raw, raw  # `fetch` in cyan
    code, raw = run_in_pty(["plan", "--all"], tmp_path, env=_clean_env() | {"NO_COLOR": "1"})
    assert code == 0 and "\x1b[" not in raw, raw
    code, raw = run_in_pty(["--no-color", "check"], tmp_path)
    assert code == 1 and "\x1b[" not in raw and "Failed (3):" in raw, raw


def test_pipe_prints_progress_lines_and_ctrl_c_exits_130(tmp_path, clean_hub, monkeypatch):
    (tmp_path / "storage.lock.yaml").write_text(lock_text(clean_hub.commits["model"]))
    clean_hub.stall(6.0, after=1000, path="model.safetensors")
    monkeypatch.setenv("RECONCILE_PROGRESS_SECONDS", "0.5")
    proc = spawn_cli("apply", "--jobs", "1", "--no-hf-cache", "--connections", "1", cwd=tmp_path)
    # Wait for the stalled GET itself, not a fixed time: on a loaded machine start-up alone took > 2.5 s
    # and the SIGINT landed before apply had planned (no heartbeat, the generic interrupt line).
    deadline = time.monotonic() + 60
    while not clean_hub.requests(method="GET", file="model.safetensors") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.wait().text
        time.sleep(0.05)
    time.sleep(2.5)  # inside the 6 s stall: several heartbeats have gone out
    proc.kill(signal.SIGINT)
    res = proc.wait(60)
    assert res.code == 130, res.text
    beats = [ln for ln in res.err.splitlines() if ln.startswith("progress: ")]
    assert len(beats) >= 2, res.err
    assert "downloaded" in beats[-1] and "action(s) finished" in beats[-1] and "elapsed" in beats[-1]
    last = res.err.strip().splitlines()[-1]
    assert re.fullmatch(r"interrupted: \d of 3 action\(s\) finished, \d left; nothing half-written was published; "
                        r"re-run `reconcile apply` to continue", last), last
    assert "Traceback" not in res.text
    from tests.fixtures.hub import MODEL_FILES
    got = tmp_path / "storage/raw/model.blob"  # the download in flight may finish before the pool stops
    assert not got.exists() or got.read_bytes() == MODEL_FILES["model.safetensors"]
    assert not [f for f in (tmp_path / "storage").rglob("*") if f.name.startswith(".reconcile-tmp")]
