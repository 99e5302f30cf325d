"""Lock validation: every refusal names the field and the problem, through the library and the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import LockError
from reconciler.lockfile import load_lock, resolve_root
from reconciler.state import StatCache
from reconciler.survey import plan_for
from tests.fixtures.engine import LOCK_HEAD, cli, run_cli, write_lock

WJ = "{build: {transform: write_json, params: {data: 1}}}"
SRC = "sources:\n  hf: {repo: org/model, type: model, revision: main}\n"


def art(*lines: str, head: str = LOCK_HEAD) -> str:
    """A lock whose `artifacts:` mapping holds the given lines (indented by two spaces)."""
    return head + "artifacts:\n" + "".join(f"  {line}\n" for line in lines)


def _symlink_out(project: Path) -> None:
    outside = project / "outside"
    outside.mkdir()
    (project / "storage").mkdir()
    os.symlink(outside, project / "storage" / "escape")


@dataclass(frozen=True)
class Refusal:
    id: str
    text: str
    where: str  # substring of the error's field path (or file name for YAML errors)
    message: str  # substring of the message
    setup: object = None  # callable(project) run before planning


CASES = [
    Refusal("dotdot", art(f"../x.json: {WJ}"), 'artifacts."../x.json"', "must not contain a `..` segment"),
    Refusal("dotdot-inner", art(f"a/../../x.json: {WJ}"), 'artifacts."a/../../x.json"', "escape the storage root"),
    Refusal("absolute", art(f"/etc/x.json: {WJ}"), 'artifacts."/etc/x.json"', "must be a relative POSIX path"),
    Refusal("double-slash", art(f"a//b.json: {WJ}"), 'artifacts."a//b.json"', "must be normalised (write 'a/b.json')"),
    Refusal("dot-segment", art(f"a/./b.json: {WJ}"), 'artifacts."a/./b.json"', "must be normalised (write 'a/b.json')"),
    Refusal("reserved-state", art(f".reconcile/cache.json: {WJ}"), 'artifacts.".reconcile/cache.json"',
            "`.reconcile/` is reserved"),
    Refusal("symlink-escape", art(f"escape/x.json: {WJ}"), 'artifacts."escape/x.json"',
            "resolves outside the storage root", _symlink_out),
    Refusal("cycle", art("a.json: {build: {transform: copy, inputs: {src: b.json}}}",
                         "b.json: {build: {transform: copy, inputs: {src: a.json}}}"),
            'artifacts."a.json"', "dependency cycle: a.json -> b.json -> a.json"),
    Refusal("self-cycle", art("a.json: {build: {transform: copy, inputs: {src: a.json}}}"),
            'artifacts."a.json"', "dependency cycle: a.json -> a.json"),
    Refusal("unknown-input-artifact", art("a.json: {build: {transform: copy, inputs: {src: nope.json}}}"),
            'artifacts."a.json".build.inputs.src', "no such artifact: 'nope.json'"),
    Refusal("unknown-input-name", art(f"a.json: {WJ}", "b.json: {build: {transform: copy, inputs: {source: a.json}}}"),
            'artifacts."b.json".build.inputs.source', "takes no input 'source'"),
    Refusal("missing-input", art("b.json: {build: {transform: copy}}"),
            'artifacts."b.json".build.inputs', "missing input(s) src"),
    Refusal("wrong-input-shape", art(f"a.json: {WJ}", "b.json: {build: {transform: copy, inputs: {src: [a.json]}}}"),
            'artifacts."b.json".build.inputs.src', "must be one artifact path"),
    Refusal("unknown-transform", art("a.json: {build: {transform: convert_everything}}"),
            'artifacts."a.json".build.transform', "unknown transform 'convert_everything'"),
    Refusal("unknown-param", art("a.json: {build: {transform: write_json, params: {data: 1, indent: 4}}}"),
            'artifacts."a.json".build.params', "unknown field(s): 'indent'"),
    Refusal("missing-param", art("a.json: {build: {transform: write_json, params: {}}}"),
            'artifacts."a.json".build.params', "'data' is a required property"),
    Refusal("unknown-check", art("a.json: {build: {transform: write_json, params: {data: 1}}, checks: [no_such_check]}"),
            'artifacts."a.json".checks[0]', "unknown check 'no_such_check'"),
    Refusal("check-bad-ref", art("a.json: {build: {transform: write_json, params: {data: 1}}, "
                                 "checks: [{same_sha256: {as: ghost.json}}]}"),
            'artifacts."a.json".checks[0].same_sha256.as', "no such artifact: 'ghost.json'"),
    Refusal("missing-top-field", 'version: 1\nartifacts:\n  a.json: ' + WJ + "\n", "(top level)",
            "'storage_version' is a required property"),
    Refusal("missing-source-field", art("a.json: {fetch: {source: hf, path: a.json}}",
                                        head=LOCK_HEAD + "sources:\n  hf: {type: model, revision: main}\n"),
            "sources.hf", "'repo' is a required property"),
    Refusal("wrong-version", art(f"a.json: {WJ}", head='version: 2\nstorage_version: "1"\n'), "version",
            "1 was expected"),
    Refusal("unknown-field", art("a.json: {build: {transform: write_json, params: {data: 1}}, sha: abc}"),
            'artifacts."a.json"', "unknown field(s): 'sha'"),
    Refusal("bad-sha256", art("a.json: {build: {transform: write_json, params: {data: 1}}, sha256: ABC}"),
            'artifacts."a.json".sha256', "does not match"),
    Refusal("fetch-and-build", art("a.json: {fetch: {source: hf, path: a}, build: {transform: write_json}}",
                                   head=LOCK_HEAD + SRC),
            'artifacts."a.json"', "exactly one of `fetch` or `build`"),
    Refusal("unknown-source", art("a.json: {fetch: {source: hf, path: a.json}}"),
            'artifacts."a.json".fetch.source', "no such source: 'hf'"),
    Refusal("file-and-folder", art(f"a: {WJ}", f"a/b.json: {WJ}"), 'artifacts."a/b.json"',
            "'a' is a file but 'a/b.json' needs it to be a folder"),
    Refusal("malformed-yaml", art("a.json: {build: {transform: write_json, params: [}}"), "storage.lock.yaml",
            "line 5, column 52:"),
    Refusal("bad-indent", LOCK_HEAD + "artifacts:\n  a.json:\n    build: x\n   sha256: null\n", "storage.lock.yaml",
            "line 7, column 4:"),
    Refusal("python-tag", art('a.json: !!python/object/apply:os.system ["touch @TMP@/pwned"]'),
            "storage.lock.yaml", "could not determine a constructor for the tag"),
    Refusal("duplicate-key", art(f"a.json: {WJ}", "b.json: {build: {transform: copy, inputs: {src: a.json}}}",
                                 f"a.json: {WJ}"),
            "storage.lock.yaml", "duplicate key 'a.json' at line 7, column 3"),
    Refusal("duplicate-nested-key", art("a.json: {build: {transform: write_json, params: {data: 1, data: 2}}}"),
            "storage.lock.yaml", "duplicate key 'data' at line 5, column 61"),
    Refusal("not-a-mapping", "- just\n- a list\n", "storage.lock.yaml", "must be a YAML mapping"),
    # Found while writing these tests (fixed in lockfile.py): non-JSON YAML values crashed with a traceback.
    Refusal("unhashable-key", art("? [a, b]", f": {WJ}"), "storage.lock.yaml", "found unhashable key"),
    Refusal("number-key", art(f"2024: {WJ}"), "artifacts", "key 2024 (int) is not a string"),
    Refusal("date-value", art("a.json: {build: {transform: write_json, params: {data: 2024-01-31}}}"),
            'artifacts."a.json".build.params.data', "date value"),
    Refusal("alias-cycle", art("a.json: {build: {transform: write_json, params: {data: &x [*x]}}}"),
            "storage.lock.yaml", "alias cycle"),
]
BY_ID = {c.id: c for c in CASES}


def _project(tmp_path: Path, case: Refusal) -> Path:
    project = tmp_path / "project"
    write_lock(project, case.text.replace("@TMP@", str(tmp_path)))
    if case.setup:
        case.setup(project)
    return project


def test_the_cases_break_a_valid_lock(tmp_path):
    """The refusals come from each case's own mistake: the pieces they are built from are valid."""
    lock_path = write_lock(tmp_path, art(f"a.json: {WJ}", "b.json: {build: {transform: copy, inputs: {src: a.json}}}",
                                         "c.json: {fetch: {source: hf, path: c.json}}", head=LOCK_HEAD + SRC))
    lock = load_lock(lock_path)
    assert list(lock.artifacts) == ["a.json", "b.json", "c.json"]
    plan = plan_for(lock, tmp_path / "storage", StatCache(tmp_path / "storage"))
    assert [a.action for a in plan.actions] == ["build", "build", "fetch"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_lock_refusal(case, tmp_path):
    project = _project(tmp_path, case)
    lock_path = project / "storage.lock.yaml"
    with pytest.raises(LockError) as info:
        lock = load_lock(lock_path)
        root = resolve_root(lock_path, lock, None)
        plan_for(lock, root, StatCache(root))
    err = info.value
    assert case.where in (err.where or ""), err.render()
    assert case.message in err.message, err.render()
    assert err.fix, "every refusal says how to fix it"
    assert not (tmp_path / "pwned").exists()
    assert not (project / "storage" / ".reconcile").exists(), "a refused lock must not create state"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_lock_refusal_cli(case, tmp_path):
    """Through the CLI entry point (forked child): exit 2, the rendered error, never a traceback."""
    project = _project(tmp_path, case)
    res = run_cli("plan", cwd=project)
    assert res.code == 2, res.text
    assert "Traceback" not in res.text
    assert res.err.startswith("error: ") and case.message in res.err
    assert "fix:" in res.err
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("case_id", "command"), [("python-tag", "apply"), ("cycle", "check"),
                                                  ("symlink-escape", "apply")])
def test_lock_refusal_console_script(case_id, command, tmp_path):
    """The installed `reconcile` script: exit 2, one rendered error, no traceback, no side effect."""
    case = BY_ID[case_id]
    project = _project(tmp_path, case)
    res = cli(command, cwd=project)
    assert res.code == 2, res.text
    assert "Traceback" not in res.text
    assert case.message in res.err and case.where in res.err
    assert not (tmp_path / "pwned").exists()
    assert not (project / "storage" / ".reconcile").exists()
    assert not (project / "outside" / "x.json").exists()


def test_object_tag_side_effect_never_happens_even_nested(tmp_path):
    """An object-constructing tag anywhere (here inside params) is refused before anything runs."""
    text = art(f'a.json: {{build: {{transform: write_json, params: {{data: !!python/object/apply:os.system '
               f'["touch {tmp_path}/pwned"]}}}}}}')
    with pytest.raises(LockError, match="object-constructing YAML tags are refused"):
        load_lock(write_lock(tmp_path, text))
    assert not (tmp_path / "pwned").exists()


def test_digest_ignores_comments_and_key_order(tmp_path):
    """The lock digest (what a saved plan is tied to) is over the data, not the text."""
    one = load_lock(write_lock(tmp_path, "# hi\n" + art(f"a.json: {WJ}", f"b.json: {WJ}"), "one.yaml"))
    two = load_lock(write_lock(tmp_path, art(f"b.json: {WJ}  # note", f"a.json: {WJ}"), "two.yaml"))
    three = load_lock(write_lock(tmp_path, art(f"a.json: {WJ}", "b.json: {build: {transform: write_json, "
                                                                "params: {data: 2}}}"), "three.yaml"))
    assert one.digest == two.digest != three.digest


def test_artifacts_come_in_dependency_order(tmp_path):
    lock = load_lock(write_lock(tmp_path, art("a.json: {build: {transform: copy, inputs: {src: z.json}}}",
                                              "m.json: {build: {transform: copy, inputs: {src: a.json}}}",
                                              f"z.json: {WJ}")))
    assert list(lock.artifacts) == ["z.json", "a.json", "m.json"]
    assert lock.artifacts["m.json"].input_paths() == ["a.json"]


def test_yaml_merge_keys_are_plain_data_not_refused_tags(tmp_path):
    """Found by these tests (fixed in lockfile.py): `<<: *anchor` was refused as an object-constructing tag."""
    text = art("a.json:\n    build: &wj {transform: write_json, params: {data: 1}}",
               "b.json:\n    build:\n      <<: *wj\n      params: {data: 2}")
    lock_path = write_lock(tmp_path, text)
    lock = load_lock(lock_path)
    assert dict(lock.artifacts["b.json"].build.params) == {"data": 2}
    assert lock.artifacts["b.json"].build.transform == "write_json"
    res = run_cli("lock", "--check", cwd=tmp_path)
    assert res.code == 1 and "Lock: valid, canonical, 2 unpinned value(s)." in res.out, res.text
    with pytest.raises(LockError, match="duplicate key 'params' at line 11, column 7"):
        load_lock(write_lock(tmp_path, text + "      params: {data: 3}\n"))
