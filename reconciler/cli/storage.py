"""Storage commands: plan, apply, check, lock, graph. Parse, call the library, render."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import ExitCode, Interrupted, LockError
from .app import complete_artifacts

_ACTION_COLOURS = {"ok": "green", "fetch": "cyan", "build": "blue", "rebuild": "yellow", "blocked": "red"}


def render_plan(plan, show_ok: bool) -> None:
    """Print the plan as a table and its summary line."""
    rows = [a for a in plan.actions if show_ok or a.action != "ok"]
    width = max((len(a.path) for a in rows), default=0)
    for a in rows:
        click.echo(f"  {click.style(a.action.ljust(7), fg=_ACTION_COLOURS[a.action])}  {a.path.ljust(width)}  {a.reason}")
    for u in plan.untracked:
        click.echo(f"  {click.style('untracked', fg='magenta')}  {u}  (not in the lock; left alone)")
    click.echo(plan.summary())


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_artifacts)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--out", type=click.Path(dir_okay=False), help="Save the plan for `apply --plan`.")
@click.option("--all", "show_all", is_flag=True, help="Also list up-to-date artifacts.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 when nothing to do, 2 when changes are pending.")
@click.option("--refresh", is_flag=True, help="Ask the hub for the sizes of unpinned downloads (network).")
@click.pass_obj
def plan(obj, targets, as_json, out, show_all, detailed_exitcode, refresh):
    """Preview what apply would do (offline unless --refresh).

    TARGETS (paths, folder prefixes or quoted globs) limit the plan to them and what they need upstream.
    """
    from ..publish import write_output_file
    from ..state import StatCache
    from ..survey import plan_for, refresh_sizes
    lock, root = obj.load()
    p = plan_for(lock, root, StatCache(root), list(targets))
    if refresh:
        p = refresh_sizes(lock, p)
    if out:
        write_output_file(out, (json.dumps(p.to_json(), indent=2) + "\n").encode())
    if as_json:
        click.echo(json.dumps(p.to_json(), indent=2))
    elif not root.exists() and not show_all:
        click.echo(f"Storage root {root} does not exist: apply will create it (`plan --all` lists every artifact).")
        click.echo(p.summary())
    else:
        render_plan(p, show_all)
    if detailed_exitcode and p.pending():
        sys.exit(ExitCode.PENDING)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_artifacts)
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False),
              help="Apply a plan saved by `plan --out` (refused if the lock or storage changed since).")
@click.option("--keep-going", is_flag=True, help="On a failure, skip only what depends on it.")
@click.option("--jobs", "-j", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--connections", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Connections per large download (parallel Range requests, files of 32 MiB or more).")
@click.option("--wait", default=0.0, show_default=True, type=float,
              help="Seconds to wait for another apply on the same root (and, with a remote, for another node's "
                   "build of an artifact; 0 = as long as that node's lease is alive).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one result per artifact as JSON (reconciler/schemas/apply.schema.json); progress goes to stderr.")
@click.option("--no-hf-cache", is_flag=True,
              help="Do not reuse files from the Hugging Face cache (also: RECONCILE_NO_HF_CACHE=1).")
@click.option("--remote", "remote_url", default=None, metavar="URL",
              help="Shared cache to use first and push to (overrides the lock's `remote.url`, RECONCILE_REMOTE).")
@click.option("--no-push", is_flag=True, help="With a remote: use it, but do not upload what this node produces.")
@click.pass_obj
def apply(obj, targets, plan_file, keep_going, jobs, wait, as_json, connections, no_hf_cache, remote_url,
          no_push):
    """Converge storage to the lock, idempotently (the remote first when one is configured, see README).

    TARGETS (paths, folder prefixes or quoted globs): only they and what they need upstream,
    e.g. `reconcile apply 'models_v2/micro-*'`.
    """
    from ..apply import FROM_ENV
    from ..apply import apply as run_apply
    from ..plan import Plan
    from ..remote import open_remote
    from .progress import CliReporter
    lock, root = obj.load()
    remote = open_remote(lock, remote_url or obj.remote_url)
    node = None
    if remote is not None:
        from ..remote.node import NodeCache
        remote.probe()  # wrong credentials, a missing bucket, an unreachable endpoint: one error, before any work
        node = NodeCache(remote, push=not no_push, wait=wait)
    saved = None
    if plan_file:
        try:
            saved = Plan.from_json(json.loads(Path(plan_file).read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise LockError(f"not a saved plan: {e}", where=plan_file, fix="use a file from `plan --out`") from None
    reporter = CliReporter(to_stderr=as_json)
    try:
        result = run_apply(lock, root, reporter=reporter, saved_plan=saved, keep_going=keep_going, jobs=jobs,
                           wait=wait, connections=connections, hf_cache=None if no_hf_cache else FROM_ENV,
                           targets=list(targets), node=node)
    except KeyboardInterrupt:
        reporter.close(ok=False)
        raise Interrupted(reporter.left()) from None
    reporter.close(ok=result.ok)
    if node is not None and node.push and result.ok:
        from ..remote.sync import push as run_push
        # What this apply covered (the whole lock unless TARGETS), then the lock's manifest when complete.
        report = run_push(lock, root, node.remote, [x.path for x in result.plan.actions] if targets else None)
        click.echo(f"Remote: {node.remote.url}: {len(report.uploaded)} blob(s) uploaded"
                   + (", manifest written." if report.manifest else "."), err=as_json)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        sys.exit(ExitCode.OK if result.ok else ExitCode.FAILED)
    _render_apply(lock, result)
    sys.exit(ExitCode.OK if result.ok else ExitCode.FAILED)


def _render_apply(lock, result) -> None:
    """The human end of apply: errors, the summary, what was skipped and why."""
    if not result.plan.pending():
        click.echo("Nothing to do: storage matches the lock.")
    for err in result.failed.values():
        click.secho(f"error: {err.render()}", fg="red", err=True)
    click.echo(f"Apply: {len(result.done)} done, {len(result.failed)} failed, {len(result.skipped)} skipped.")
    if result.hf_cache_bytes:
        from ..units import human_bytes
        click.echo(f"Reused {human_bytes(result.hf_cache_bytes)} ({result.hf_cache_bytes:,} bytes) from the "
                   "Hugging Face cache instead of downloading them.")
    from ..apply import SkipReason
    not_run = [p for p, why in result.skipped.items() if why.reason is SkipReason.STOPPED]
    for path, why in result.skipped.items():
        if why.reason is not SkipReason.STOPPED:
            click.echo(f"  skipped  {path}  ({why})")
    if not_run:
        click.echo(f"  {len(not_run)} other action(s) not run: apply stops at the first failure "
                   "(--keep-going runs everything that does not depend on it)")
    origins = [got.origin for got in result.produced.values()]
    if origins:  # where the bytes came from: the hub, this node's builds, the remote
        click.echo("Origin: " + ", ".join(f"{origins.count(o)} {o}" for o in sorted(set(origins))) + ".")
    stale = {x.path for x in result.plan.actions if x.stale_pin}
    if any(p in stale for p in result.done):
        click.echo("Outputs replaced stale pins: run `reconcile lock` to re-pin them (check fails until then).")
    elif result.done and any(lock.artifacts[p].sha256 is None for p in result.done):
        click.echo("Some outputs are unpinned: run `reconcile lock` to pin them.")


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_artifacts)
@click.option("--deep", is_flag=True, help="Rehash every file and rerun every check, ignoring the caches.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (reconciler/schemas/check.schema.json).")
@click.option("--quiet", "-q", is_flag=True, help="Print only what failed (nothing when the gate passes).")
@click.option("--attest", "attest_file", type=click.Path(dir_okay=False),
              help="Also write an attestation record for the training run to FILE (written even on failure).")
@click.option("--remote", "on_remote", is_flag=True,
              help="Check the remote instead: this lock's manifest exists and every blob is there (--deep: hashed).")
@click.pass_obj
def check(obj, targets, deep, as_json, quiet, attest_file, on_remote):
    """Verify storage against the lock: the pre-training gate (exit 1 on any drift).

    TARGETS are artifact paths, folder prefixes or globs (quote globs); none means every artifact.
    """
    if on_remote:
        _check_remote(obj, targets, deep)
    run_check(obj, targets, deep, as_json, quiet, attest_file)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("targets", nargs=-1, shell_complete=complete_artifacts)
@click.option("--deep", is_flag=True, help="Rehash every file and rerun every check, ignoring the caches.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (reconciler/schemas/check.schema.json).")
@click.option("--quiet", "-q", is_flag=True, help="Print only what failed (nothing when the gate passes).")
@click.pass_obj
def attest(obj, file, targets, deep, as_json, quiet):
    """Same as `check --attest FILE`: the gate, plus an attestation record (written even on failure)."""
    run_check(obj, targets, deep, as_json, quiet, file)


def run_check(obj, targets, deep: bool, as_json: bool, quiet: bool, attest_file: str | None) -> None:
    """`check` and `attest`, one path: run the gate, write the attestation if asked, render, exit."""
    from ..verify import check as run_gate
    lock, root = obj.load()
    report = run_gate(lock, root, list(targets), deep=deep)
    if attest_file:
        from ..attest import attest as make_record
        from ..attest import write_attestation
        write_attestation(attest_file, make_record(lock, root, report, obj.lock_path))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render_check(report, quiet)
        if attest_file and not quiet:
            click.echo(f"Attestation written to {attest_file}.")
    sys.exit(ExitCode.OK if report.ok else ExitCode.FAILED)


def render_check(report, quiet: bool = False) -> None:
    """Every verdict, the count line, then the list of what failed (only that list with --quiet)."""
    bad = [a for a in report.artifacts if a.status != "ok"]
    if not quiet:
        for a in report.artifacts:
            colour = "green" if a.status == "ok" else "red"
            passed = [c["check"] for c in a.checks if c["ok"]]
            extra = f"; checks passed: {', '.join(passed)}" if passed and a.status == "ok" else ""
            click.echo(f"  {click.style(a.status.ljust(10), fg=colour)}  {a.path}  {a.detail}{extra}")
        tier = "deep" if report.deep else "fast"
        click.echo(f"Check ({tier}): {len(report.artifacts) - len(bad)} ok, {len(bad)} not ok; "
                   f"{report.hashed} file(s) hashed.")
    if bad:
        click.secho(f"Failed ({len(bad)}):", fg="red")
        for a in bad:
            click.echo(f"  {a.status:<10}  {a.path}")
        fixes = sorted({_fix_of(a) for a in bad})
        for f in fixes:
            click.echo(f"fix: {f}")


def _fix_of(a) -> str:
    """The one command that repairs a verdict (the detail line carries the specifics)."""
    return {"missing": "reconcile apply", "drifted": "reconcile apply",
            "stale": "reconcile apply && reconcile lock", "unpinned": "reconcile lock (after reconcile apply)",
            "wrong_type": "move away what sits at the artifact's path, then reconcile apply",
            }.get(a.status, "see each artifact's failed check above; repair the inputs, then reconcile apply")


def _check_remote(obj, targets, deep) -> None:
    """`check --remote`: the manifest for this lock exists and every blob is present (deep: hashed)."""
    from ..remote import open_remote
    from ..remote.sync import check_remote as run
    from ..verify import select as select_targets
    lock, _ = obj.load()
    remote = open_remote(lock, obj.remote_url, required=True)
    paths = select_targets(lock, list(targets)) if targets else []
    rows = run(lock, remote, paths, deep=deep)
    for r in rows:
        click.echo(f"  {click.style(('ok' if r.ok else 'missing').ljust(10), fg='green' if r.ok else 'red')}  "
                   f"{r.path}  {r.detail}")
    bad = sum(not r.ok for r in rows)
    click.echo(f"Check remote ({'deep' if deep else 'fast'}) {remote.url}: {len(rows) - bad} ok, {bad} not ok.")
    sys.exit(1 if bad else 0)


@click.command("lock")
@click.option("--check", "check_only", is_flag=True,
              help="Exit non-zero if the lock is invalid, not canonical, or has unpinned values.")
@click.option("--allow-open", is_flag=True, help="With --check: accept unpinned values that declare an `open:` reason.")
@click.option("--resolve", is_flag=True, help="Ask the hub: pin branch revisions, LFS sha256 and sizes.")
@click.pass_obj
def lock_cmd(obj, check_only, allow_open, resolve):
    """Pin open values from what apply produced (trust on first use) and keep the lock canonical."""
    from .. import lockedit
    from ..pins import FIX, stale_pins
    from ..provenance import read_provenance
    lock, root = obj.load()
    if check_only:
        problems = lockedit.canonical_problems(obj.lock_path)
        pins = lockedit.open_pins(lock)
        stale = stale_pins(lock, lambda p: read_provenance(root, p))
        for p in problems:
            click.echo(f"not canonical: {p} (run `reconcile lock` to rewrite it)")
        for p in pins:
            click.echo(f"unpinned: {p.where}" + (f"  (open: {p.reason})" if p.reason else "  (no reason declared)"))
        _render_stale(stale.values())
        bad_pins = [p for p in pins if not (allow_open and p.reason)]
        click.echo(f"Lock: valid, {'not ' if problems else ''}canonical, {len(pins)} unpinned value(s)"
                   + (f", {len(stale)} stale pin(s)." if stale else "."))
        sys.exit(ExitCode.FAILED if problems or bad_pins or stale else ExitCode.OK)
    if resolve:
        changes, still = lockedit.resolve_from_hub(obj.lock_path, lock), []
    else:
        result = lockedit.pin_from_state(obj.lock_path, lock, root)
        changes, still = result.changes, result.still_stale
    for c in changes:
        click.echo(f"pinned  {c}")
    click.echo(f"Lock: {len(changes)} value(s) pinned." if changes else "Lock: nothing to pin.")
    if still:
        _render_stale(still, hint=f"not re-pinned: storage does not hold their new bytes yet; fix: {FIX}")
        sys.exit(ExitCode.FAILED)


def _render_stale(stale, hint: str | None = None) -> None:
    """One line per pin made under another recipe, then the fix."""
    from ..pins import FIX
    stale = list(stale)
    for s in stale:
        click.echo(f"stale: artifacts.{json.dumps(s.path)}: pinned under another recipe ({s.reason})")
    if stale:
        click.echo(hint or f"fix: {FIX} (re-pins sha256, size, content_digest and recipe together)")


@click.command()
@click.argument("targets", nargs=-1, shell_complete=complete_artifacts)
@click.option("--format", "fmt", type=click.Choice(["text", "dot"]), default="text", show_default=True)
@click.pass_obj
def graph(obj, targets, fmt):
    """Print the artifact DAG (inputs first); with TARGETS, only they and their upstream."""
    from ..targets import restrict
    lock, _ = obj.load()
    lock = restrict(lock, list(targets))
    if fmt == "dot":
        click.echo("digraph reconcile {\n  rankdir=LR;")
        for p, a in lock.artifacts.items():
            label = f"fetch {lock.sources[a.fetch.source].repo}" if a.fetch else f"build {a.build.transform}"
            click.echo(f'  "{p}" [label="{p}\\n{label}"];')
            for i in a.input_paths():
                click.echo(f'  "{i}" -> "{p}";')
        click.echo("}")
        return
    for p, a in lock.artifacts.items():
        how = (f"fetch {lock.sources[a.fetch.source].repo}:{a.fetch.path or a.fetch.glob}" if a.fetch
               else f"build {a.build.transform}")
        click.echo(f"{p}  <- {how}")
        for i in a.input_paths():
            click.echo(f"    <- {i}")
