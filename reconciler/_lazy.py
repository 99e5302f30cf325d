"""Modules imported on first use: keeps numpy and pyarrow (~150 ms) out of commands that never touch them.

Every plug-in module is imported at start-up so its transforms and checks register (their names and
params schemas validate the lock), but `reconcile check` of pinned files runs none of them. A module
written `np = lazy_module("numpy")` instead of `import numpy as np` keeps its code unchanged and pays
the import on the first attribute it reads. Measured: `reconcile check` of 1,000 artifacts, 0.56 s ->
(see README, start-up) with `python -X importtime`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class _LazyModule:
    """Stands in for a module until an attribute is read; then copies the module's namespace into
    itself, so later reads are plain attribute hits (no __getattr__ call on hot paths)."""

    def __init__(self, name: str):
        self.__dict__["_lazy_name"] = name

    def _load(self) -> ModuleType:
        mod = importlib.import_module(self.__dict__["_lazy_name"])
        self.__dict__.update(vars(mod))
        return mod

    def __getattr__(self, attr: str):
        # Only called for names not yet copied (before the first load, or a submodule imported later).
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_name']!r}>"


def lazy_module(name: str):
    """A stand-in for `import name` that imports it on first attribute access."""
    return _LazyModule(name)
