"""The team's shared cache: an S3-compatible object store (or a shared folder) holding verified bytes.

`layout` owns the keys and records (format version 1), `store` the client (obstore), `transfer` one
blob's download/upload, `lease` produce-once coordination, `node` apply's side, `sync` push/pull/check.
"""

from __future__ import annotations

import os

from ..errors import LockError

ENV = "RECONCILE_REMOTE"


def remote_url(lock, override: str | None) -> str | None:
    """The remote to use: --remote, else RECONCILE_REMOTE, else the lock's `remote.url`, else None."""
    return override or os.environ.get(ENV) or getattr(lock, "remote", None)


def open_remote(lock, override: str | None, *, required: bool = False):
    """A `store.Remote` for the configured URL (None when none is configured and not required)."""
    url = remote_url(lock, override)
    if not url:
        if required:
            raise LockError("no remote configured", where="remote.url",
                            fix="add `remote: {url: s3://BUCKET/PREFIX}` to the lock, or pass --remote URL "
                                "(or set RECONCILE_REMOTE)")
        return None
    from .store import Remote
    return Remote(url)
