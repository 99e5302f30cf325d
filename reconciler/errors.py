"""One error root for everything `reconcile` reports to a user.

Every error carries *where* (an artifact path or a lock field path) and *fix* (what the
user should do). The CLI renders them in one place and maps classes to exit codes in one
place (`EXIT_CODES`), so no layer below the CLI decides how a failure looks.
"""

from __future__ import annotations

import re
from enum import IntEnum

# `scheme://user:password@host` (or a token alone as the user part): never printed.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]*(?::[^/\s@]*)?@")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (HF_ENDPOINT, proxies, ...)."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


class ExitCode(IntEnum):
    """Every exit status `reconcile` uses (README "Exit codes" and `reconcile --help` print this map)."""

    OK = 0  # success; nothing to do; `plan --detailed-exitcode`: no changes
    FAILED = 1  # the storage or the world is wrong: drift, stale pins, a failed fetch/build/check;
    # also any error under `plan --detailed-exitcode` (like terraform)
    USAGE = 2  # the lock or the command line is wrong (invalid lock, unknown option, bad root)
    PENDING = 2  # `plan --detailed-exitcode` only: changes are pending  # noqa: PIE796 - same value on purpose
    INTERRUPTED = 130  # Ctrl-C (SIGINT), like every shell tool


class ReconcileError(Exception):
    """Root of all user-facing errors: a message, the place it concerns, and the fix."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def render(self) -> str:
        """One human paragraph: `where: message` plus a `fix:` line when known (credentials redacted)."""
        head = f"{self.where}: {self.message}" if self.where else self.message
        return redact(f"{head}\n  fix: {self.fix}" if self.fix else head)

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


class Interrupted(ReconcileError):
    """The user pressed Ctrl-C; the message says what was left undone."""


class BusyError(ReconcileError):
    """Another process holds the root lock."""


class ResourceError(ReconcileError):
    """The machine cannot do it: not enough free disk, out of space while writing."""


def out_of_memory(what: str, nbytes: int = 0) -> ResourceError:
    """The ResourceError for memory the machine refused (ENOMEM, MemoryError, a failed allocation).

    Names the limit in force, an address-space limit (`ulimit -v`, RLIMIT_AS: SLURM jobs often run
    under one) or the machine's RAM + swap, and the fix. Never a hint to re-download: the input is fine.
    """
    import resource

    need = f"{nbytes:,} bytes" if nbytes else "memory"
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        return ResourceError(f"cannot allocate {need} for {what}: the address-space limit (ulimit -v, RLIMIT_AS) "
                             f"is {soft:,} bytes", where=what,
                             fix=f"raise the limit (e.g. `ulimit -v {(soft + max(soft, 2 * nbytes)) // 1024}` or a "
                                 "larger job memory request) and re-run; the input files are fine")
    return ResourceError(f"cannot allocate {need} for {what}: the machine is out of memory (RAM + swap)", where=what,
                         fix="free memory (stop other jobs) or run on a machine with more RAM, then re-run; "
                             "the input files are fine")


def is_out_of_memory(e: BaseException) -> bool:
    """True for the ways an allocation failure surfaces: MemoryError, ENOMEM, torch's allocator errors."""
    import errno

    if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "can't start new thread" in text
                                            or "cannot allocate memory" in text)


class RemoteError(ReconcileError):
    """The remote store refused or could not be reached (credentials, bucket, endpoint, incomplete push)."""


# The one exit-code map (used by the CLI). 2 = the lock or the command is wrong;
# 1 = the storage or the world is wrong (drift, failed fetch/build, failed check).
EXIT_CODES: dict[type[ReconcileError], ExitCode] = {
    LockError: ExitCode.USAGE,
    Interrupted: ExitCode.INTERRUPTED,
    IntegrityError: ExitCode.FAILED,
    SourceError: ExitCode.FAILED,
    TransformError: ExitCode.FAILED,
    CheckFailed: ExitCode.FAILED,
    BusyError: ExitCode.FAILED,
    ResourceError: ExitCode.FAILED,
    RemoteError: ExitCode.FAILED,
    ReconcileError: ExitCode.FAILED,
}


def exit_code_for(err: ReconcileError) -> int:
    """Exit code for an error: the most specific class listed in EXIT_CODES."""
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return ExitCode.FAILED
