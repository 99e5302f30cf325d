"""reconcile: a declarative reconciler for machine-learning storage.

The Python API (README "Use from Python"): `load_lock`, `plan`, `apply`, `check` and `gate` (the
pre-training gate: raises `GateFailed` unless every targeted artifact is what the lock pins, and
returns the verified paths and sha256s). They load on first use, so `import reconciler` stays
cheap (every CLI command imports this package).

`reconciler.plan` and `reconciler.apply` are these functions even though the submodules
`reconciler/plan.py` and `reconciler/apply.py` share their names (importing a submodule would
normally bind it on the package); reach the modules with `from reconciler.plan import ...` or
`importlib.import_module("reconciler.plan")`.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["GateFailed", "ReconcileError", "Verified", "apply", "check", "gate", "load_lock", "plan"]
_SHADOWED = frozenset({"apply", "plan"})  # API functions named like submodules

if TYPE_CHECKING:
    from .api import GateFailed, Verified, apply, check, gate, load_lock, plan
    from .errors import ReconcileError


def __getattr__(name: str):
    if name == "ReconcileError":
        from .errors import ReconcileError
        return ReconcileError
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'reconciler' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps `plan` / `apply` resolving to the API functions when their submodules are imported."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable through sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
