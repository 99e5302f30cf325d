"""The `reconcile` command line: parse, call the library, render. No logic lives here.

Each command module defines plain click commands; this module is the one place they are
registered on the root group, so no command module imports another (no cycle).
"""

from __future__ import annotations

import gc
import os
import sys
import threading

from . import info, ops, remote, storage
from .app import main

for _cmd in (storage.plan, storage.apply, storage.check, storage.lock_cmd, storage.graph,
             storage.attest, ops.docs, ops.diff_cmd, ops.gc, info.transforms, info.show,
             remote.push, remote.pull):
    main.add_command(_cmd)



def run() -> None:
    """The `reconcile` executable: run the CLI, then leave without tearing the interpreter down.

    Why: after torch was imported, interpreter teardown costs 0.5-0.6 s (measured here: `python -c
    "import torch"` 1.77-2.20 s wall, 1.18-1.29 s when it ends with `os._exit`), about 15% of a
    3.2 GB conversion. Nothing the command wrote waits for teardown: published files, provenance and
    the lock are fsynced and closed, the stat cache is committed. Only stdio buffers are left, and
    they are flushed here. When anything else is still running (a non-daemon thread, a worker
    process) the normal exit runs instead, which waits for it as before.
    """
    _tune_process()
    try:
        main(prog_name="reconcile")
        code = 0
    except SystemExit as e:
        code = e.code
    if not isinstance(code, int):  # click passes None for success; a string is a message for stderr
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (BrokenPipeError) included
        sys.exit(code)  # let the normal exit report or swallow it as it always did
    if _only_main_left():
        os._exit(code)
    sys.exit(code)


def _tune_process() -> None:
    """Process settings for a short-lived command that may import torch (measured on the 2-core VM,
    `python -c "import torch"` ending in `os._exit`, three runs each: 0.80-0.99 s user CPU and 0.99-1.16 s
    wall with both, 1.08-1.31 s user and 1.18-1.44 s wall without).

    - The collector's first threshold at 100,000 allocations instead of 700: imports build objects
      that live for the whole process, and collecting them again and again was 2.3% of a 3.2 GB
      conversion's CPU samples. Cyclic garbage is still collected, just in bigger batches.
    - OpenBLAS without worker threads, unless the user set it: reconcile does no linear algebra,
      but numpy's OpenBLAS starts a thread per core that spins at start-up (2% of the samples).
    """
    gc.set_threshold(100_000, 50, 100)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _only_main_left() -> bool:
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    mp = sys.modules.get("multiprocessing")
    return not others and not (mp is not None and mp.active_children())


__all__ = ["main", "run"]
