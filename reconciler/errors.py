"""One error root for everything `reconcile` reports to a user.

Every error carries *where* (an artifact path or a lock field path) and *fix* (what the
user should do). The CLI renders them in one place and maps classes to exit codes in one
place (`EXIT_CODES`), so no layer below the CLI decides how a failure looks.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Root of all user-facing errors: a message, the place it concerns, and the fix."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def render(self) -> str:
        """One human paragraph: `where: message` plus a `fix:` line when known."""
        head = f"{self.where}: {self.message}" if self.where else self.message
        return f"{head}\n  fix: {self.fix}" if self.fix else head

    def __str__(self) -> str:
        return self.render()


class LockError(ReconcileError):
    """The lock file (or the command line) is wrong: malformed, invalid, unsafe, stale plan."""


class IntegrityError(ReconcileError):
    """Bytes are not what the lock pins (download, build or on-disk drift)."""


class SourceError(ReconcileError):
    """A source could not deliver: hub errors, gated repos, offline mode, network faults."""


class TransformError(ReconcileError):
    """A transform refused its inputs or failed while building."""


class CheckFailed(ReconcileError):
    """Raised by a check function when the artifact does not satisfy it."""


class BusyError(ReconcileError):
    """Another process holds the root lock."""


class ResourceError(ReconcileError):
    """The machine cannot do it: not enough free disk, out of space while writing."""


# The one exit-code map (used by the CLI). 2 = the lock or the command is wrong;
# 1 = the storage or the world is wrong (drift, failed fetch/build, failed check).
EXIT_CODES: dict[type[ReconcileError], int] = {
    LockError: 2,
    IntegrityError: 1,
    SourceError: 1,
    TransformError: 1,
    CheckFailed: 1,
    BusyError: 1,
    ResourceError: 1,
    ReconcileError: 1,
}


def exit_code_for(err: ReconcileError) -> int:
    """Exit code for an error: the most specific class listed in EXIT_CODES."""
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
