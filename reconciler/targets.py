"""Targets: which artifacts a command acts on (`plan`, `apply`, `graph`, `check` take paths or globs).

Like `terraform apply -target` or `dvc repro STAGE`, acting on a target includes what it needs
upstream; nothing downstream of it is touched.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace

from .errors import LockError
from .spec import Lock


def select(lock: Lock, targets: list[str]) -> list[str]:
    """Artifacts matching any target (a path, a folder prefix or a glob); all when no target is given."""
    if not targets:
        return list(lock.artifacts)
    out = []
    for p in lock.artifacts:
        for t in targets:
            t = t.rstrip("/")
            if p == t or p.startswith(t + "/") or fnmatch.fnmatchcase(p, t):
                out.append(p)
                break
    if not out:
        close = difflib.get_close_matches(targets[0], list(lock.artifacts), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LockError(f"no artifact matches {' '.join(targets)}{hint}", where="targets",
                        fix="give a path, folder prefix or quoted glob of artifacts in the lock "
                            "(`reconcile graph` lists them)")
    return out


def with_upstream(lock: Lock, paths: list[str]) -> list[str]:
    """`paths` and every artifact they are built from, transitively, in dependency order."""
    wanted = set()
    stack = list(paths)
    while stack:
        p = stack.pop()
        if p not in wanted:
            wanted.add(p)
            stack.extend(lock.artifacts[p].input_paths())
    return [p for p in lock.artifacts if p in wanted]


def restrict(lock: Lock, targets: list[str] | None) -> Lock:
    """The lock cut down to the targets and their upstream (the whole lock without targets)."""
    if not targets:
        return lock
    keep = with_upstream(lock, select(lock, targets))
    return replace(lock, artifacts={p: lock.artifacts[p] for p in keep})
