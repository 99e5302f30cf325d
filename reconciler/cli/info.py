"""Read-only information commands: `reconcile transforms [NAME]` and `reconcile show ARTIFACT`.

Parse, read the registry / lock / provenance, render; no logic here.
"""

from __future__ import annotations

import json

import click

from .app import complete_artifacts


def _schema_params(schema: dict) -> list[str]:
    """One line per param: name, type, whether required, description."""
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out = []
    for name, spec in props.items():
        kind = spec.get("type") or ("one of " + ", ".join(map(json.dumps, spec["enum"])) if "enum" in spec else "any")
        if isinstance(kind, list):
            kind = " | ".join(kind)
        desc = spec.get("description", "")
        out.append(f"    {name:<20} {kind:<16} {'required' if name in required else 'optional':<9} {desc}".rstrip())
    return out


@click.command()
@click.argument("name", required=False)
def transforms(name):
    """List the registered transforms and checks (inputs, one-line description); NAME: its params too."""
    from ..lockfile import did_you_mean
    from ..registry import CHECKS, TRANSFORMS, load_plugins
    load_plugins()
    if name is None:
        click.echo("Transforms (build: {transform: NAME, inputs: {...}, params: {...}}):")
        for t in sorted(TRANSFORMS.values(), key=lambda t: t.name):
            ins = ", ".join(f"{k} ({v})" for k, v in t.inputs.items()) or "no inputs"
            click.echo(f"  {t.name:<22} v{t.version:<3} {ins}")
            if t.doc:
                click.echo(f"  {'':<22}      {t.doc}")
        click.echo("Checks (checks: [NAME or {NAME: {params}}]):")
        for c in sorted(CHECKS.values(), key=lambda c: c.name):
            click.echo(f"  {c.name:<22} v{c.version:<3} {c.doc}")
        click.echo("`reconcile transforms NAME` shows the params of one.")
        return
    item = TRANSFORMS.get(name) or CHECKS.get(name)
    if item is None:
        from ..errors import LockError
        raise LockError(f"no transform or check named {name!r}{did_you_mean(name, set(TRANSFORMS) | set(CHECKS))}",
                        where="NAME", fix="run `reconcile transforms` to list them")
    kind = "transform" if name in TRANSFORMS else "check"
    click.echo(f"{kind} {item.name} v{item.version}: {item.doc}")
    if kind == "transform":
        click.echo("  inputs:" + ("" if item.inputs else " none"))
        for k, v in item.inputs.items():
            click.echo(f"    {k:<20} {v}")
        if item.predict_size is not None:
            click.echo("  output size: known before building (checked against max_size; shown by `reconcile diff`)")
    else:
        refs = ", ".join(item.refs)
        if refs:
            click.echo(f"  params naming other artifacts: {refs}")
    lines = _schema_params(item.params_schema)
    click.echo("  params:" + ("" if lines else " none"))
    for ln in lines:
        click.echo(ln)
    if item.params_schema.get("additionalProperties") is False:
        click.echo("  (no other params are accepted)")


def _pin_lines(a) -> list[str]:
    out = []
    for key in ("sha256", "size", "content_digest", "recipe"):
        value = getattr(a, key)
        out.append(f"  {key:<15} {value if value is not None else '(open)'}")
    if a.files:
        out.append(f"  files           {len(a.files)} pinned")
    if a.open:
        out.append(f"  open            {a.open}")
    return out


@click.command()
@click.argument("artifact", shell_complete=complete_artifacts)
@click.pass_obj
def show(obj, artifact):
    """Print one artifact: recipe, pins, provenance (when, tools, built or downloaded), upstream, downstream."""
    from ..errors import LockError
    from ..lockfile import did_you_mean
    from ..pins import stale_pins
    from ..provenance import read_provenance
    lock, root = obj.load()
    a = lock.artifacts.get(artifact.rstrip("/"))
    if a is None:
        raise LockError(f"no artifact {artifact!r} in the lock{did_you_mean(artifact, lock.artifacts)}",
                        where="ARTIFACT", fix="`reconcile graph` lists the artifacts")
    click.echo(a.path)
    if a.fetch is not None:
        src = lock.sources[a.fetch.source]
        click.echo(f"recipe: fetch {src.repo} ({src.type}) @ {src.revision} : {a.fetch.path or a.fetch.glob}")
    else:
        click.echo(f"recipe: build {a.build.transform}")
        for k, v in sorted(a.build.inputs.items()):
            click.echo(f"  input  {k}: {v}")
        for k, v in sorted(a.build.params.items()):
            click.echo(f"  param  {k}: {json.dumps(v)}")
    click.echo("pins:")
    for ln in _pin_lines(a):
        click.echo(ln)
    prov = read_provenance(root, a.path)
    stale = stale_pins(lock, lambda p: read_provenance(root, p)).get(a.path)
    if stale:
        click.echo(f"  STALE: pinned under another recipe ({stale.reason}): run `reconcile apply && reconcile lock`")
    click.echo("provenance:" + ("" if prov else " none (not produced on this storage yet)"))
    if prov:
        how = "downloaded" if "fetch" in (prov.get("recipe") or {}) else "built"
        click.echo(f"  {how} at {prov.get('built_at', '?')} in {prov.get('duration_s', '?')} s; "
                   f"sha256 {prov.get('sha256')}, {prov.get('size', '?')} bytes")
        if prov.get("commit"):
            click.echo(f"  commit {prov['commit']} (ref {prov.get('ref')})")
        tools = ", ".join(f"{k} {v}" for k, v in sorted((prov.get("tools") or {}).items()))
        click.echo(f"  tools: {tools}")
        click.echo(f"  recipe hash {prov.get('recipe_hash')}")
    ups = a.input_paths()
    downs = [p for p, b in lock.artifacts.items() if a.path in b.input_paths()]
    click.echo("upstream:" + ("" if ups else " none"))
    for p in ups:
        click.echo(f"  <- {p}")
    click.echo("downstream:" + ("" if downs else " none"))
    for p in downs:
        click.echo(f"  -> {p}")
