"""Plain, immutable data describing a validated lock (produced by `lockfile.load_lock`).

Every other layer consumes these types; none of them parses YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """A Hugging Face repository at a revision (a 40-hex commit once pinned)."""

    name: str
    repo: str
    type: str  # "model" | "dataset"
    revision: str
    gated: bool = False
    licence: str | None = None

    @property
    def pinned(self) -> bool:
        """True when the revision is a full 40-hex commit id."""
        r = self.revision
        return len(r) == 40 and all(c in "0123456789abcdef" for c in r)


@dataclass(frozen=True)
class Fetch:
    """Download one file (`path`) or every file matching `glob` from a source."""

    source: str
    path: str | None = None
    glob: str | None = None


@dataclass(frozen=True)
class Build:
    """Run a registered transform over other artifacts."""

    transform: str
    inputs: Mapping[str, Any] = field(default_factory=dict)  # name -> artifact path | [paths]
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckSpec:
    """A named check with its params, declared on an artifact."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Member:
    """One file of a directory (glob) artifact, pinned by `reconcile lock`."""

    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class Artifact:
    """One expected file (or directory of fetched files) under the root."""

    path: str
    fetch: Fetch | None = None
    build: Build | None = None
    sha256: str | None = None
    size: int | None = None
    dtype: str | None = None
    max_size: int | None = None
    content_digest: str | None = None  # safetensors: serialisation-independent digest of the tensors
    checks: tuple[CheckSpec, ...] = ()
    files: Mapping[str, Member] | None = None  # glob artifacts: relpath -> member pins
    open: str | None = None  # why a pin is deliberately left open
    recipe: str | None = None  # hash of the recipe the pins were made under (see reconciler/pins.py)

    @property
    def is_dir(self) -> bool:
        """True for a glob fetch: a directory whose digest covers its members."""
        return self.fetch is not None and self.fetch.glob is not None

    def input_paths(self) -> list[str]:
        """Every artifact this one is built from, in a stable order."""
        if self.build is None:
            return []
        out: list[str] = []
        for name in sorted(self.build.inputs):
            v = self.build.inputs[name]
            out.extend(v if isinstance(v, list) else [v])
        return out


@dataclass(frozen=True)
class Lock:
    """A validated lock: sources, artifacts in topological order, and where it came from."""

    version: int
    storage_version: str
    root: str
    sources: Mapping[str, Source]
    artifacts: Mapping[str, Artifact]  # insertion order = topological order
    digest: str  # sha256 of the canonical JSON of the lock's data
    raw: Any = None  # the plain data that was validated (for diff/docs)
    remote: str | None = None  # `remote.url`: the team's shared cache (see reconciler/remote/)


@dataclass(frozen=True)
class Observed:
    """One artifact as found on disk, plus what its provenance record says."""

    path: str
    kind: str  # "missing" | "file" | "dir" | "wrong_type"
    size: int | None = None
    sha256: str | None = None
    members: Mapping[str, str] | None = None  # dir artifacts: relpath -> sha256 of present members
    prov_recipe: str | None = None  # recipe hash recorded when it was last produced
    prov_sha256: str | None = None  # sha256 recorded when it was last produced
    prov: Mapping[str, Any] | None = field(default=None, compare=False)

    def as_dict(self) -> dict:
        """Plain data (for digests and JSON)."""
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256,
                "members": dict(self.members) if self.members is not None else None,
                "prov_recipe": self.prov_recipe, "prov_sha256": self.prov_sha256}
