"""How `apply` shows its progress: tqdm bars on a terminal, periodic lines in a pipe.

On a TTY, log lines go through `tqdm.write` so they never interleave with a live bar, and
the download bar ends at 100% of what was downloaded. In a pipe (CI logs), there are no
bars; a heartbeat thread prints one line at least every `RECONCILE_PROGRESS_SECONDS`
(default 30) while work is in flight, because CI systems kill jobs that stay silent.
With `--json`, every human line goes to stderr so stdout holds only the JSON.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import click

from ..units import human_bytes

DEFAULT_INTERVAL = 30.0


def heartbeat_interval() -> float:
    """Seconds between progress lines in a pipe (`RECONCILE_PROGRESS_SECONDS`, default 30)."""
    try:
        return max(0.1, float(os.environ.get("RECONCILE_PROGRESS_SECONDS", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _bar_width() -> dict:
    """tqdm's size: follow the terminal, or 80x24 when it reports none.

    A pseudo-terminal nobody sized (`script` in CI, `docker run -t` started from a pipe) reports 0x0;
    tqdm then draws every bar as an empty string (0 columns) or hides it (0 rows): the run looks frozen.
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return {"ncols": 80, "nrows": 24}
    return {"dynamic_ncols": True} if size.columns > 0 and size.lines > 0 else {"ncols": 80, "nrows": 24}


def _elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class CliReporter:
    """Renders apply's callbacks (see `reconciler.apply.Reporter`)."""

    def __init__(self, to_stderr: bool = False, tty: bool | None = None, colour: bool | None = None):
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.to_stderr = to_stderr
        self.colour = colour
        self._lock = threading.Lock()
        self._bar = None  # the download bar (TTY)
        self._build_bar = None
        self._total = 0  # bytes the fetches will download (when known)
        self._downloaded = 0
        self._building: dict[str, int] = {}  # build path -> bytes written so far
        self._started = time.monotonic()
        self.pending = 0
        self.pending_fetches = 0
        self.finished = 0
        self._stop = threading.Event()
        self._beat = None

    # -- lines -------------------------------------------------------------------------------
    def line(self, text: str, colour: str | None = None) -> None:
        """One log line: through tqdm on a TTY (above the bars), plain otherwise."""
        if colour:
            text = click.style(text, fg=colour)
        if self.tty and (self._bar is not None or self._build_bar is not None):
            from tqdm import tqdm
            with self._lock:
                tqdm.write(click.unstyle(text) if self.colour is False else text,
                           file=sys.stderr if self.to_stderr else sys.stdout)
            return
        click.echo(text, err=self.to_stderr, color=self.colour)

    def planned(self, pending: list) -> None:
        """How many actions this run will attempt."""
        self.pending = len(pending)
        self.pending_fetches = sum(x.kind == "fetch" for x in pending)
        if not self.tty and pending:
            self._beat = threading.Thread(target=self._heartbeat, name="reconcile-progress", daemon=True)
            self._beat.start()

    def step(self, action) -> None:
        """An action starts."""
        self.line(f"{action.action:>7}  {action.path}  ({action.reason})")

    def done(self, action, detail) -> None:
        """An action finished."""
        self._close_build_bar(action.path)
        self.finished += 1
        self.line(f"   done  {action.path}  {detail}")

    def failed(self, action, err) -> None:
        """An action failed."""
        self._close_build_bar(action.path)
        self.finished += 1
        self.line(f" FAILED  {action.path}  {err.message}", "red")

    def warning(self, path: str, message: str) -> None:
        """Something that did not fail the artifact but the user should know."""
        self.line(f"warning  {path}  {message}", "yellow")

    # -- bytes -------------------------------------------------------------------------------
    def build_progress(self, action):
        """A callback told the bytes a build writes: a bar on a TTY, a counter in a pipe."""
        with self._lock:
            self._building[action.path] = 0
        bar = None
        if self.tty:
            from tqdm import tqdm
            bar = tqdm(unit="B", unit_scale=True, desc=action.path.rsplit("/", 1)[-1], leave=False,
                       file=sys.stderr, **_bar_width())
            self._build_bar = bar

        def tell(n: int) -> None:
            with self._lock:
                self._building[action.path] = self._building.get(action.path, 0) + n
            if bar is not None:
                bar.update(n)
        return tell

    def _close_build_bar(self, path: str) -> None:
        with self._lock:
            self._building.pop(path, None)
        if self._build_bar is not None:
            self._build_bar.close()
            self._build_bar = None

    def download_total(self, nbytes: int) -> None:
        """Bytes the fetches of this run will download (when known)."""
        self._total = nbytes
        if self.tty and self.pending_fetches:
            from tqdm import tqdm  # total unknown (unpinned sizes): bytes and rate, then 100% of what came
            self._bar = tqdm(total=nbytes or None, unit="B", unit_scale=True, desc="download", leave=True,
                             file=sys.stderr, **_bar_width())

    def advance(self, nbytes: int) -> None:
        """Bytes downloaded (from several threads)."""
        with self._lock:
            self._downloaded += nbytes
            if self._bar is not None:
                self._bar.update(nbytes)

    # -- pipe heartbeat ------------------------------------------------------------------------
    def status_line(self) -> str:
        """What is in flight now, for a log: downloads, builds, actions finished, time."""
        with self._lock:
            parts = []
            if self._total or self._downloaded or self.pending_fetches:
                pct = f" ({100 * self._downloaded / self._total:.0f}%)" if self._total else ""
                parts.append(f"downloaded {human_bytes(self._downloaded)}"
                             + (f" of {human_bytes(self._total)}" if self._total else "") + pct)
            for path, n in self._building.items():
                parts.append(f"building {path}: {human_bytes(n)} written")
        parts.append(f"{self.finished}/{self.pending} action(s) finished")
        return "progress: " + "; ".join(parts) + f"; {_elapsed(time.monotonic() - self._started)} elapsed"

    def _heartbeat(self) -> None:
        interval = heartbeat_interval()
        while not self._stop.wait(interval):
            click.echo(self.status_line(), err=True)

    def left(self) -> str:
        """One line on what an interrupted run left undone."""
        return (f"interrupted: {self.finished} of {self.pending} action(s) finished, "
                f"{max(0, self.pending - self.finished)} left; nothing half-written was published; "
                "re-run `reconcile apply` to continue")

    def close(self, ok: bool = True) -> None:
        """Stop the heartbeat; leave the download bar at 100% of what was downloaded."""
        self._stop.set()
        if self._build_bar is not None:
            self._build_bar.close()
            self._build_bar = None
        if self._bar is not None:
            if ok and self._bar.n:
                self._bar.total = self._bar.n  # files already present were not downloaded
                self._bar.refresh()
            self._bar.close()
            self._bar = None
