"""Built-in plug-ins: importing this package imports (and so registers) every module in it.

Discovery instead of a hand-kept import list: a new family is one new module, and two
people adding families never edit the same line.
"""

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")
