"""Remote commands: push and pull (the shared cache). Parse, call the library, render."""

from __future__ import annotations

import click

REMOTE_OPTION = click.option("--remote", "remote_url", default=None, metavar="URL",
                             help="Remote store (s3://BUCKET/PREFIX, file:///path); overrides the lock's "
                                  "`remote.url` and RECONCILE_REMOTE.")


@click.command()
@click.argument("targets", nargs=-1)
@REMOTE_OPTION
@click.option("--jobs", "-j", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel uploads.")
@click.pass_obj
def push(obj, targets, remote_url, jobs):
    """Upload verified local artifacts the remote lacks; the lock's manifest last."""
    from ..remote import open_remote
    from ..remote.sync import push as run_push
    from ..verify import select as select_targets
    lock, root = obj.load()
    remote = open_remote(lock, remote_url or obj.remote_url, required=True)
    paths = select_targets(lock, list(targets)) if targets else None
    report = run_push(lock, root, remote, paths, jobs=jobs)
    for p in report.uploaded:
        click.echo(f"  uploaded  {p}")
    click.echo(f"Push: {len(report.uploaded)} blob(s) uploaded, {report.present} already there, "
               f"{report.entries} action-cache entr{'y' if report.entries == 1 else 'ies'} written; "
               + (f"manifest {report.manifest} written." if report.manifest else
                  "no manifest (push without TARGETS marks the lock complete)."))


@click.command()
@click.argument("targets", nargs=-1)
@REMOTE_OPTION
@click.pass_obj
def pull(obj, targets, remote_url):
    """Download pinned artifacts from the remote, verified, through the publish path."""
    from ..remote import open_remote
    from ..remote.sync import pull as run_pull
    from ..verify import select as select_targets
    lock, root = obj.load()
    remote = open_remote(lock, remote_url or obj.remote_url, required=True)
    paths = select_targets(lock, list(targets)) if targets else []
    pulled, ok = run_pull(lock, root, remote, paths)
    for p in pulled:
        click.echo(f"  pulled  {p}")
    click.echo(f"Pull: {len(pulled)} pulled, {len(ok)} already up to date.")

