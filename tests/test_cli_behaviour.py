"""The CLI behaves like its peers: targets, exit codes CI can tell apart, -h, NO_COLOR, --root,
error messages (did you mean, quote it, file:line), and golden renders of check's failure summary.

Commands run through the real CLI in child processes on small locks of built-in transforms.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.engine import run_cli

GOLDEN = Path(__file__).parent / "golden"

CHAIN = """version: 1
storage_version: "1"
artifacts:
  models/a.json: {build: {transform: write_json, params: {data: {x: 1}}}}
  models/b.json: {build: {transform: copy, inputs: {src: models/a.json}}}
  other/c.json: {build: {transform: write_json, params: {data: {y: 2}}}}
  other/d.json: {build: {transform: copy, inputs: {src: other/c.json}}}
"""


def project(tmp_path: Path, text: str = CHAIN) -> Path:
    (tmp_path / "storage.lock.yaml").write_text(text)
    return tmp_path


def test_apply_target_runs_only_its_closure(tmp_path):
    p = project(tmp_path)
    plan = run_cli("plan", "--all", "models/b.json", cwd=p)
    assert plan.code == 0 and "models/a.json" in plan.out and "other/" not in plan.out, plan.text
    res = run_cli("apply", "models/b*", cwd=p)
    assert res.code == 0 and "Apply: 2 done" in res.out, res.text
    root = p / "storage"
    assert (root / "models/a.json").is_file() and (root / "models/b.json").is_file()
    assert not (root / "other").exists(), "nothing outside the target's closure ran"
    graph = run_cli("graph", "other/d.json", cwd=p)
    assert graph.out.splitlines() == ["other/c.json  <- build write_json", "other/d.json  <- build copy",
                                      "    <- other/c.json"]
    miss = run_cli("apply", "models/bb.json", cwd=p)
    assert miss.code == 2 and "did you mean 'models/b.json'?" in miss.err


# (command, lock text or None for CHAIN, applied first, expected exit code)
EXIT_TABLE = [
    (["plan", "--detailed-exitcode"], None, False, 2),  # changes pending
    (["plan", "--detailed-exitcode"], None, True, 0),  # no changes
    (["plan", "--detailed-exitcode"], "version: [", False, 1),  # an error is never "changes pending"
    (["plan", "--detailed-exitcode", "--bogus"], None, False, 1),
    (["plan"], "version: [", False, 2),  # invalid lock
    (["plan", "--bogus"], None, False, 2),  # bad option
    (["plan"], None, False, 0),
    (["check"], None, False, 1),  # missing storage
    (["check"], None, True, 1),  # unpinned
    (["lock"], None, True, 0),
    (["apply"], None, False, 0),
    (["--root", "storage.lock.yaml", "plan"], None, False, 2),  # a root that is a file
]


@pytest.mark.parametrize("args,text,applied,code", EXIT_TABLE,
                         ids=[f"{' '.join(a)}{'-applied' if ap else ''}{'-badlock' if t else ''}"
                              for a, t, ap, _ in EXIT_TABLE])
def test_exit_code_table(tmp_path, args, text, applied, code):
    p = project(tmp_path)
    if applied:
        assert run_cli("apply", cwd=p).code == 0
    if text is not None:
        (p / "storage.lock.yaml").write_text(text)
    res = run_cli(*args, cwd=p)
    assert res.code == code, res.text
    assert "Traceback" not in res.text


def test_help_lists_the_exit_codes_and_h_works(tmp_path):
    res = run_cli("-h", cwd=tmp_path)
    assert res.code == 0 and "Exit codes:" in res.out and "130" in res.out
    for cmd in ("plan", "apply", "check", "lock", "graph", "show", "transforms"):
        sub = run_cli(cmd, "-h", cwd=tmp_path)
        assert sub.code == 0 and "Usage: reconcile" in sub.out, (cmd, sub.text)


def test_root_that_does_not_exist_is_one_line(tmp_path):
    p = project(tmp_path)
    res = run_cli("--root", "nowhere", "plan", cwd=p)
    assert res.code == 0
    assert res.out.splitlines()[0] == "Storage root nowhere does not exist: apply will create it " \
                                      "(`plan --all` lists every artifact)."
    assert len(res.out.splitlines()) == 2 and not (p / "nowhere").exists()


def test_root_that_is_a_file_is_a_clear_error(tmp_path):
    p = project(tmp_path)
    (p / "afile").write_text("x")
    res = run_cli("--root", "afile", "check", cwd=p)
    assert res.code == 2 and "the storage root is a file, not a folder" in res.err and "internal" not in res.err


BAD = [
    ("transform: write_json", "transform: write_jsn", "unknown transform 'write_jsn' (did you mean 'write_json'?)"),
    ("params: {data: {x: 1}}", "params: {dta: {x: 1}}", "unknown field(s): 'dta' (did you mean 'data'?)"),
    ("storage_version: \"1\"", "storage_version: \"1\"\nsources:\n  hf: {repo: a/b, type: model, revision: 0123456}",
     "is a YAML number where a string is expected: quote it"),
]


@pytest.mark.parametrize("old,new,message", BAD, ids=["transform", "param", "number"])
def test_lock_errors_name_file_line_and_the_fix(tmp_path, old, new, message):
    p = project(tmp_path, CHAIN.replace(old, new, 1))
    res = run_cli("plan", cwd=p)
    assert res.code == 2 and message in res.err, res.err
    assert res.err.startswith("error: storage.lock.yaml:") and "Traceback" not in res.err
    line = int(res.err.split(":")[2])
    assert new.splitlines()[-1].split(":")[0].strip() in (p / "storage.lock.yaml").read_text().splitlines()[line - 1]


def test_unknown_source_and_check_suggest_the_name(tmp_path):
    text = CHAIN.replace('storage_version: "1"', 'storage_version: "1"\nsources:\n  hf: {repo: a/b, type: model, '
                                                  'revision: main}')
    text += "  raw.bin:\n    fetch: {source: hff, path: x}\n"
    res = run_cli("plan", cwd=project(tmp_path, text))
    assert "no such source: 'hff' (did you mean 'hf'?)" in res.err and "storage.lock.yaml:11:" in res.err
    text = CHAIN + "  e.json:\n    build: {transform: write_json, params: {data: 1}}\n    checks: [dtyp]\n"
    res = run_cli("plan", cwd=project(tmp_path, text))
    assert "unknown check 'dtyp' (did you mean 'dtype'?)" in res.err


def test_transforms_and_show(tmp_path):
    p = project(tmp_path)
    res = run_cli("transforms", cwd=p)
    assert res.code == 0 and "write_json" in res.out and "same_sha256" in res.out
    one = run_cli("transforms", "micro_model", cwd=p)
    assert "dim" in one.out and "required" in one.out and "multiple_of" in one.out
    assert run_cli("transforms", "micro_modl", cwd=p).err.count("did you mean 'micro_model'?") == 1
    assert run_cli("apply", cwd=p).code == 0 and run_cli("lock", cwd=p).code == 0
    show = run_cli("show", "models/a.json", cwd=p)
    assert show.code == 0, show.text
    for want in ("recipe: build write_json", "sha256", "recipe  ", "built at", "tools:", "downstream:",
                 "-> models/b.json"):
        assert want in show.out, want


def _normalise(text: str, tmp: Path) -> str:
    import re
    text = text.replace(str(tmp), "<tmp>")
    text = re.sub(r"\d+ file\(s\) hashed", "N file(s) hashed", text)  # depends on the stat cache's timing
    return re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)


def test_check_failure_summary_golden(tmp_path):
    p = project(tmp_path)
    assert run_cli("apply", "models/", cwd=p).code == 0
    assert run_cli("lock", cwd=p).code == 0
    (p / "storage/models/b.json").write_text("{}")
    res = run_cli("check", cwd=p)
    assert res.code == 1
    assert _normalise(res.out, tmp_path) == (GOLDEN / "check_failure_summary.txt").read_text()
    quiet = run_cli("check", "--quiet", cwd=p)
    assert quiet.code == 1
    assert _normalise(quiet.out, tmp_path) == (GOLDEN / "check_failure_summary_quiet.txt").read_text()


def test_shell_completion_completes_artifact_paths(tmp_path):
    import subprocess
    import sys

    from tests.fixtures.engine import _clean_env
    script = Path(sys.executable).with_name("reconcile")  # completion keys on the program name
    if not script.exists():
        pytest.skip("the reconcile console script is not installed next to this interpreter")
    p = project(tmp_path)
    env = _clean_env() | {"_RECONCILE_COMPLETE": "bash_complete", "COMP_WORDS": "reconcile apply mo", "COMP_CWORD": "2"}
    out = subprocess.run([str(script)], cwd=p, env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["plain,models/"]
    env |= {"COMP_WORDS": "reconcile show models/", "COMP_CWORD": "2"}
    out = subprocess.run([str(script)], cwd=p, env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["plain,models/a.json", "plain,models/b.json"]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:http://127.0.0.1:3", "127.0.0.1:8080", "ftp://hub.example"])
def test_a_malformed_hf_endpoint_is_one_error_naming_it(tmp_path, endpoint):
    """huggingface_hub parses HF_ENDPOINT while it is imported; a bad value must not surface as a content failure."""
    import subprocess
    import sys

    (tmp_path / "storage.lock.yaml").write_text(
        'version: 1\nstorage_version: "1"\nroot: storage\nsources:\n'
        f'  s: {{repo: org/model, type: model, revision: "{"a" * 40}"}}\n'
        "artifacts:\n  config.json:\n    fetch: {source: s, path: config.json}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_ENDPOINT": endpoint,
                                                                              "HF_HOME": str(tmp_path / "hf")}
    res = subprocess.run([sys.executable, "-m", "reconciler", "apply"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "HF_ENDPOINT is not an http(s) URL" in res.stderr and "fix: set HF_ENDPOINT" in res.stderr
    assert "Traceback" not in res.stderr and "Port could not be cast" not in res.stdout + res.stderr
    assert not (tmp_path / "storage" / "config.json").exists()
