"""The root lock: an advisory file lock under the root that keeps two applies (or an apply and
`gc --yes`) apart. Correctness never depends on it (every write is atomic); it keeps two
processes from doing the same work and lets `gc` know temp files are not in use.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import BusyError
from .layout import root_lock_path, root_owner_path, state_dir
from .publish import write_bytes_atomic


class RootLock:
    """Hold the root lock for a `with` block; BusyError (naming the holder) after `wait` seconds."""

    def __init__(self, root: Path, wait: float):
        self.root = root
        self.wait = wait
        self._lock = FileLock(str(root_lock_path(root)))

    def __enter__(self) -> RootLock:
        state_dir(self.root).mkdir(parents=True, exist_ok=True)
        owner_file = root_owner_path(self.root)
        try:
            self._lock.acquire(timeout=self.wait)
        except Timeout:
            try:
                owner = json.loads(owner_file.read_text())
            except (OSError, ValueError):
                owner = {}
            raise BusyError(f"another apply holds the storage root (pid {owner.get('pid', '?')}, "
                            f"host {owner.get('host', '?')}, since {owner.get('since', '?')})",
                            where=str(self.root),
                            fix="wait for it to finish, or pass --wait SECONDS to queue behind it") from None
        owner = {"pid": os.getpid(), "host": platform.node(),
                 "since": datetime.now(UTC).isoformat(timespec="seconds")}
        write_bytes_atomic(owner_file, json.dumps(owner).encode(), where=owner_file.name)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
