"""The root `reconcile` command group, its global options and the one place errors become exit codes.

Exit codes (the one map): 0 success / nothing to do; 1 storage is wrong (missing, drifted,
unpinned, a failed fetch, build or check); 2 the lock or the command is wrong. `plan
--detailed-exitcode` uses 2 for "changes pending", like `terraform plan`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import ReconcileError, exit_code_for

DEBUG = os.environ.get("RECONCILE_DEBUG") == "1"


class Ctx:
    """Global options, resolved lazily so `--help` never reads a lock."""

    def __init__(self, lock: str, root: str | None):
        self.lock_path = Path(lock)
        self.root_override = root

    def load(self):
        """The validated lock and its storage root."""
        from ..lockfile import load_lock, resolve_root
        lock = load_lock(self.lock_path)
        return lock, resolve_root(self.lock_path, lock, self.root_override)


class ReconcileGroup(click.Group):
    """Turns every ReconcileError into one rendered message and its mapped exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ReconcileError as e:
            click.secho(f"error: {e.render()}", fg="red", err=True)
            sys.exit(exit_code_for(e))
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was published; re-run to continue", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as e:  # a bug, not a user error: one line, traceback only on request
            if DEBUG:
                raise
            click.secho(f"internal error: {type(e).__name__}: {e} (set RECONCILE_DEBUG=1 for the traceback)",
                        fg="red", err=True)
            sys.exit(1)


@click.group(cls=ReconcileGroup)
@click.option("--lock", "lock", default="storage.lock.yaml", show_default=True, envvar="RECONCILE_LOCK",
              help="The lock file.")
@click.option("--root", default=None, envvar="RECONCILE_ROOT", help="Storage root (overrides the lock's `root`).")
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(ctx, lock, root):
    """Declarative storage for ML assets: lock -> plan -> apply -> check."""
    ctx.obj = Ctx(lock, root)
