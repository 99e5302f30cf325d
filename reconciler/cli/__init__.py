"""The `reconcile` command line: parse, call the library, render. No logic lives here.

Each command module defines plain click commands; this module is the one place they are
registered on the root group, so no command module imports another (no cycle).
"""

from __future__ import annotations

from . import info, ops, remote, storage
from .app import main

for _cmd in (storage.plan, storage.apply, storage.check, storage.lock_cmd, storage.graph,
             storage.attest, ops.docs, ops.diff_cmd, ops.gc, info.transforms, info.show,
             remote.push, remote.pull):
    main.add_command(_cmd)

__all__ = ["main"]
