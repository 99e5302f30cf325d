"""Operations commands: docs, diff, gc.

Parse, call the library (`reconciler.docs`, `.diff`, `.gc`), render; no logic here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import ExitCode


@click.command()
@click.option("--check", "check_only", is_flag=True, help="Exit 1 if the file on disk is not what the lock renders.")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to write (default: <root>/README.md).")
@click.option("--with-provenance", is_flag=True,
              help="Add what the transforms reported (machine-local); default out: <root>/.reconcile/README.provenance.md.")
@click.pass_obj
def docs(obj, check_only, out, with_provenance):
    """Render the storage README from the lock (deterministic: commit it, check it in CI)."""
    from .. import docs as d
    lock, root = obj.load()
    text = d.render_readme(lock, obj.lock_path.name)
    if with_provenance:
        text += d.render_provenance(lock, root)
    path = Path(out) if out else d.default_out(root, with_provenance)
    if check_only:
        diff = d.stale_diff(path, text)
        if diff is None:
            click.echo(f"{path} is current.")
            return
        click.echo("\n".join(diff))
        click.echo(f"{path} is out of date: run `reconcile docs` and commit it.", err=True)
        sys.exit(ExitCode.FAILED)
    wrote = d.write_docs(path, text, make_parent=not out)
    click.echo(f"wrote {path}" if wrote else f"{path} is current.")


@click.command("diff")
@click.argument("old_lock", type=click.Path(dir_okay=False))
@click.argument("new_lock", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the full structured diff as JSON.")
@click.option("--max-chars", default=60_000, show_default=True, type=click.IntRange(min=500),
              help="Truncate the Markdown past this many characters (with a note).")
def diff_cmd(old_lock, new_lock, as_json, max_chars):
    """What changing OLD_LOCK into NEW_LOCK does: changes, downstream rebuilds, bytes to download."""
    from ..diff import diff_locks, render_markdown
    from ..lockfile import load_lock
    d = diff_locks(load_lock(old_lock), load_lock(new_lock))
    if as_json:
        click.echo(json.dumps(d, indent=2, sort_keys=True))
    else:
        click.echo(render_markdown(d, max_chars), nl=False)


def _gc_rows(items, style: str) -> None:
    from ..units import human_bytes
    width = max((len(i.path) for i in items), default=0)
    for i in items:
        click.echo(f"  {click.style(i.kind.ljust(10), fg=style)}  {human_bytes(i.size):>9}  "
                   f"{i.path.ljust(width)}  {i.reason}")


@click.command()
@click.option("--yes", is_flag=True, help="Delete what is listed (never while an apply holds the root).")
@click.pass_obj
def gc(obj, yes):
    """List (and with --yes delete) what under the storage root the lock does not own."""
    from ..gc import collect, remove
    from ..units import human_bytes
    lock, root = obj.load()
    report = collect(lock, root, obj.lock_path)
    _gc_rows(report.items, "yellow")
    if report.kept:
        click.echo("Kept:")
        _gc_rows(report.kept, "cyan")
    click.echo(f"gc: {len(report.items)} item(s), {human_bytes(report.total_bytes)} reclaimable under {root}.")
    for why in report.refused:
        click.echo(f"Not a storage folder: {why}; `gc --yes` will delete nothing here.")
    if not yes:
        if report.items and not report.refused:
            click.echo("Nothing deleted: re-run with --yes to delete them.")
        return
    done = remove(lock, root, obj.lock_path)
    click.echo(f"Deleted {len(done.items)} item(s), {human_bytes(done.total_bytes)} freed.")
