"""Registries of named transforms and checks: the engine's plug-in points.

A transform is a pure function `fn(inputs, params, out) -> info | None`:
  * `inputs`: input name -> resolved Path (or list of Paths) of other artifacts (read only);
  * `params`: the lock's params, validated against `params_schema` (defaults NOT filled in:
    the function applies its own defaults, so the recipe hash is what the lock says);
  * `out`: a `reconciler.publish.Output` - the only place the transform may write;
  * returns an optional JSON-able dict recorded in the provenance record (e.g. dropped rows).
It raises `TransformError` naming what is wrong with its inputs.

A check is `fn(path, params, ctx) -> str | None`: it raises `CheckFailed(detail)` when the
artifact at `path` does not satisfy it, and may return a short success detail. Params named
in `refs` hold artifact paths (a str or list of str); the lock validator resolves them and
`ctx.path(ref)` gives their location on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

InputPaths = Mapping[str, "Path | list[Path]"]


@dataclass(frozen=True)
class Transform:
    """A registered transform: name, version (part of every recipe hash), schemas, function."""

    name: str
    version: str
    fn: Callable[..., Any]
    params_schema: dict
    inputs: Mapping[str, str]  # input name -> "file" | "list" | "optional-file" | "optional-list"
    doc: str = ""
    # Optional: params -> exact output size in bytes, known before building. Lets the lock
    # refuse a declared `max_size` that the recipe cannot meet (micro models).
    predict_size: Callable[[Mapping[str, Any]], int] | None = None
    # True: the transform also reads facts of the lock (release, its source's commit, input sha256s),
    # passed as params["lock"] and part of its recipe, so a revision or release change rebuilds it.
    reads_lock: bool = False


@dataclass(frozen=True)
class Check:
    """A registered check: name, version (part of its result-cache key), schema, function."""

    name: str
    version: str
    fn: Callable[..., Any]
    params_schema: dict
    refs: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class CheckContext:
    """What a check may know besides its own file: other artifacts and the verification tier."""

    root: Path
    deep: bool
    artifact: str
    lock: Any  # reconciler.lockfile.Lock
    observed_sha256: Callable[[str], str | None] = field(default=lambda p: None)

    def path(self, artifact: str) -> Path:
        """Location on disk of another artifact of the lock."""
        return self.root / artifact

    def sha256(self, artifact: str) -> str | None:
        """Observed sha256 of another artifact (through the stat cache), None if missing."""
        return self.observed_sha256(artifact)


TRANSFORMS: dict[str, Transform] = {}
CHECKS: dict[str, Check] = {}


def transform(name: str, version: str, *, inputs: Mapping[str, str], params_schema: dict | None = None,
              predict_size: Callable[[Mapping[str, Any]], int] | None = None, reads_lock: bool = False):
    """Decorator registering a transform under `name` with its `version` and schemas."""

    def deco(fn):
        TRANSFORMS[name] = Transform(name, version, fn, params_schema or {"type": "object"}, dict(inputs),
                                     _first_line(fn.__doc__), predict_size, reads_lock)
        return fn

    return deco


def check(name: str, version: str, *, params_schema: dict | None = None, refs: tuple[str, ...] = ()):
    """Decorator registering a check under `name` with its `version`, schema and ref params."""

    def deco(fn):
        CHECKS[name] = Check(name, version, fn, params_schema or {"type": "object"}, tuple(refs),
                             _first_line(fn.__doc__))
        return fn

    return deco


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


# Every module that registers built-in transforms or checks, by domain. One explicit list: a
# new plug-in module is one line here, and what runs at start-up is visible in one place.
PLUGIN_MODULES = (
    "reconciler.files.transforms", "reconciler.files.checks",
    "reconciler.models.convert", "reconciler.models.micro", "reconciler.models.model_configs",
    "reconciler.models.tokenizer_files",
    "reconciler.models.tensor_checks", "reconciler.models.model_checks",
    "reconciler.datasets.transforms", "reconciler.datasets.alpaca_stats", "reconciler.datasets.alpaca_sample",
    "reconciler.datasets.checks",
)


def load_plugins() -> None:
    """Import every built-in transform and check module so their registrations run."""
    import importlib

    for name in PLUGIN_MODULES:
        importlib.import_module(name)
