"""The root `reconcile` command group, its global options and the one place errors become exit codes.

Exit codes: `errors.ExitCode` is the one map; `EXIT_HELP` below renders it for `--help`.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import ExitCode, Interrupted, LockError, ReconcileError, ResourceError, exit_code_for, redact

DEBUG = os.environ.get("RECONCILE_DEBUG") == "1"
# The file system refused a write outside any one artifact (a read-only or full root, no permission):
# one ResourceError naming the path, exit 1.
_RESOURCE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


# Import names whose PyPI distribution is named otherwise (for the fix of a missing package).
_PIP_NAMES = {"re2": "google-re2", "yaml": "pyyaml", "ruamel": "ruamel.yaml"}


def _pip_name(module: str) -> str:
    top = module.split(".")[0]
    return _PIP_NAMES.get(top, top)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


EXIT_HELP = """\b
Exit codes:
  0    success; nothing to do; plan --detailed-exitcode: no changes
  1    storage is wrong: missing, drifted, stale or unpinned pins, a failed fetch, build or check;
       under plan --detailed-exitcode: any error (invalid lock, bad option)
  2    the lock or the command line is wrong; plan --detailed-exitcode: changes pending
  130  interrupted (Ctrl-C); nothing half-written is published
"""


class Ctx:
    """Global options, resolved lazily so `--help` never reads a lock."""

    def __init__(self, lock: str, root: str | None, remote: str | None = None):
        self.lock_path = Path(lock)
        self.root_override = root
        self.remote_url = remote  # --remote / RECONCILE_REMOTE (the lock's `remote.url` otherwise)

    def load(self):
        """The validated lock and its storage root (refused when the root is a file, or holds the lock
        file at an artifact's path)."""
        from ..lockfile import check_not_lock_file, load_lock, resolve_root
        lock = load_lock(self.lock_path)
        root = resolve_root(self.lock_path, lock, self.root_override)
        if root.exists() and not root.is_dir():
            raise LockError("the storage root is a file, not a folder", where=str(root),
                            fix="pass --root FOLDER (or set RECONCILE_ROOT / the lock's `root`) to a folder")
        check_not_lock_file(lock, root, self.lock_path)
        return lock, root


def _detailed(ctx) -> bool:
    """True when this invocation is `plan --detailed-exitcode` (errors then exit 1, never 2)."""
    return "--detailed-exitcode" in ctx.args or ctx.meta.get("detailed_exitcode", False)


class ReconcileGroup(click.Group):
    """Turns every ReconcileError into one rendered message and its mapped exit code."""

    def invoke(self, ctx):
        detailed = _detailed(ctx)
        try:
            return super().invoke(ctx)
        except Interrupted as e:
            click.echo(e.message, err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except ReconcileError as e:
            click.secho(f"error: {e.render()}", fg="red", err=True)
            sys.exit(ExitCode.FAILED if detailed else exit_code_for(e))
        except BrokenPipeError:  # `reconcile gc | head`: the reader left; exit quietly, like `yes | head`
            _quiet_stdout()
            sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a tool killed by the pipe
        except OSError as e:
            if e.errno not in _RESOURCE_ERRNOS:
                raise
            where = e.filename or None
            # No file name: the write that failed was our own output (stdout redirected to a full disk, a
            # closed or read-only descriptor), not the storage root.
            fix = ("make the storage root writable (or point --root at a writable folder), free space if the "
                   "disk is full, then re-run") if where else (
                   "the command's own output could not be written: free space where stdout/stderr go "
                   "(or redirect them elsewhere), then re-run")
            err = ResourceError(f"cannot write: {e.strerror}", where=where, fix=fix)
            click.secho(f"error: {err.render()}", fg="red", err=True)
            sys.exit(ExitCode.FAILED if detailed else exit_code_for(err))
        except ModuleNotFoundError as e:  # a declared dependency the environment lacks (`pip install --no-deps`)
            if DEBUG or not e.name or e.name.split(".")[0] in ("reconciler", "reconcile_testing"):
                raise
            err = ResourceError(f"the Python package {e.name!r} is not installed in {sys.prefix}",
                                fix=f"install it (`pip install {_pip_name(e.name)}`), or reinstall reconcile "
                                    "without --no-deps so pip installs every package it declares")
            click.secho(f"error: {err.render()}", fg="red", err=True)
            sys.exit(ExitCode.FAILED if detailed else exit_code_for(err))
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was published; re-run to continue", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except click.UsageError as e:
            if not detailed:
                raise
            e.show()
            sys.exit(ExitCode.FAILED)  # `plan --detailed-exitcode` keeps 2 for "changes pending"
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug, not a user error: one line, traceback only on request
            if DEBUG:
                raise
            click.secho(f"internal error: {type(e).__name__}: {redact(str(e))} "
                        "(set RECONCILE_DEBUG=1 for the traceback)",
                        fg="red", err=True)
            sys.exit(ExitCode.FAILED)


class _EchoWarnings(logging.Handler):
    """Library warnings (e.g. a rebuilt stat cache) as one stderr line each."""

    def emit(self, record: logging.LogRecord) -> None:
        click.secho(record.getMessage(), fg="yellow", err=True)


def _show_library_warnings() -> None:
    log = logging.getLogger("reconciler")
    if not any(isinstance(h, _EchoWarnings) for h in log.handlers):
        log.addHandler(_EchoWarnings(logging.WARNING))
    log.propagate = False


@click.group(cls=ReconcileGroup, epilog=EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--lock", "lock", default="storage.lock.yaml", show_default=True, envvar="RECONCILE_LOCK",
              help="The lock file (env RECONCILE_LOCK).")
@click.option("--root", default=None, envvar="RECONCILE_ROOT",
              help="Storage root (env RECONCILE_ROOT; overrides the lock's `root`).")
@click.option("--remote", default=None, envvar="RECONCILE_REMOTE", metavar="URL",
              help="Shared cache (env RECONCILE_REMOTE; s3://BUCKET/PREFIX, file:///path); overrides the lock's "
                   "`remote.url`.")
@click.option("--no-color", is_flag=True, help="No ANSI colours (also when NO_COLOR is set).")
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(ctx, lock, root, remote, no_color):
    """Declarative storage for ML assets: lock -> plan -> apply -> check."""
    _show_library_warnings()
    if no_color or os.environ.get("NO_COLOR"):  # https://no-color.org: any non-empty value
        ctx.color = False
    ctx.obj = Ctx(lock, root, remote)


def complete_artifacts(ctx, param, incomplete: str):
    """Shell completion for TARGETS: artifact paths (and their folders) from the lock."""
    from click.shell_completion import CompletionItem
    try:
        from ..lockfile import load_lock
        root = ctx.find_root()
        lock = load_lock(root.params.get("lock") or os.environ.get("RECONCILE_LOCK") or "storage.lock.yaml")
    except Exception:  # completion must never fail the shell
        return []
    found = set()
    for path in lock.artifacts:
        if path.startswith(incomplete):
            rest = path[len(incomplete):]
            cut = rest.find("/")
            found.add(path if cut < 0 else incomplete + rest[:cut + 1])  # complete a folder at a time
    return [CompletionItem(p) for p in sorted(found)]
