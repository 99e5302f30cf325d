"""The read side: observe a root and plan. Used by `reconcile plan`, by apply as its first step
and by the Python API; it never writes an artifact (only the stat cache remembers hashes).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .lockfile import check_root_containment
from .plan import Plan, make_plan
from .spec import Lock
from .state import StatCache, observe, untracked
from .targets import restrict


def plan_for(lock: Lock, root: Path, cache: StatCache, targets: list[str] | None = None) -> Plan:
    """Observe the root and plan: the read-only half of apply, also used by `reconcile plan`.

    With `targets`, only they and what they need upstream are planned (and files of other
    artifacts are not reported as untracked).
    """
    check_root_containment(lock, root)
    part = restrict(lock, targets)
    observed = observe(part, root, cache)
    return make_plan(part, observed, () if targets else tuple(untracked(lock, root)))


def refresh_sizes(lock: Lock, plan: Plan) -> Plan:
    """`plan --refresh`: ask the hub for the sizes of pending fetches the lock does not pin.

    The planner stays offline and pure; this only annotates its actions with facts from the hub.
    """
    from .sources import hf
    actions = []
    for x in plan.actions:
        if x.action == "fetch" and x.download_bytes is None:
            a = lock.artifacts[x.path]
            src = lock.sources[a.fetch.source]
            if a.is_dir:
                size = sum(r.size for r in hf.list_files(src, a.fetch.glob))
            else:
                size = hf.remote_file(src, a.fetch.path).size
            x = replace(x, download_bytes=size)
        actions.append(x)
    return replace(plan, actions=tuple(actions))
