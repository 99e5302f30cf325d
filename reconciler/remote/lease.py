"""Leases: one node at a time produces a recipe, so N nodes applying at once build each artifact once.

A lease is a small record at `v1/leases/<recipe hash>.json`, created with a conditional write
(`If-None-Match: *`: exactly one creator wins), renewed every ttl/3 with `If-Match` on its ETag, and deleted
when the holder is done. A lease whose `expires` has passed (its holder died) is taken over with `If-Match`
on the stale ETag, so again exactly one node wins. Correctness never depends on a lease: every byte a
node publishes is verified against its pin or its key; a lost lease only costs a duplicate build.
Knob: RECONCILE_LEASE_TTL (seconds, default 60).
"""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid

from . import layout
from .store import Remote


def ttl_seconds() -> float:
    """Lease lifetime without renewal."""
    try:
        return max(1.0, float(os.environ.get("RECONCILE_LEASE_TTL", 60)))
    except ValueError:
        return 60.0


class Lease:
    """A lease on one recipe hash: `acquire()` (non-blocking), then `release()`; renewed in between."""

    def __init__(self, remote: Remote, recipe_hash: str):
        self.remote = remote
        self.key = layout.lease_key(recipe_hash)
        self.owner = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = ttl_seconds()
        self.holder: str | None = None  # who holds it when acquire() failed
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return layout.encode(layout.lease(self.owner, self.ttl, time.time()))

    def acquire(self) -> bool:
        """Try once to take the lease: True when this node now holds it."""
        etag = self.remote.put_record(self.key, self._record(), create=True)
        if etag is None:
            got = self.remote.get_record(self.key)
            if got is None:  # released between our two requests: try the create once more
                etag = self.remote.put_record(self.key, self._record(), create=True)
            else:
                data, stale = got
                rec = layout.decode(data, self.key)
                if float(rec.get("expires", 0)) < time.time() and stale:
                    etag = self.remote.put_record(self.key, self._record(), if_match=stale)  # take over
                else:
                    self.holder = str(rec.get("owner"))
        if etag is None:
            return False
        self._etag = etag
        self._thread = threading.Thread(target=self._renew, name="reconcile-lease", daemon=True)
        self._thread.start()
        return True

    def alive(self) -> bool | None:
        """For a waiter: True while some holder's lease is unexpired, False when expired, None when gone."""
        got = self.remote.get_record(self.key)
        if got is None:
            return None
        rec = layout.decode(got[0], self.key)
        self.holder = str(rec.get("owner"))
        return float(rec.get("expires", 0)) >= time.time()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                etag = self.remote.put_record(self.key, self._record(), if_match=self._etag)
            except Exception:  # a failed renewal is retried at the next tick; the lease may expire meanwhile
                continue
            if etag is None:
                return  # another node took it over: our build goes on, verified like any other
            self._etag = etag

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        got = self.remote.get_record(self.key)
        if got is not None and layout.decode(got[0], self.key).get("owner") == self.owner:
            self.remote.delete(self.key)
