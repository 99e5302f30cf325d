"""Dataset checks: jsonl_schema, rows, stats_consistent, disjoint (splits and small subsets)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from reconciler.errors import CheckFailed
from reconciler.registry import CHECKS, load_plugins
from tests.fixtures.datasets import context


def run_check(name, root, artifact, params):
    load_plugins()
    return CHECKS[name].fn(root / artifact, params, context(root, artifact))


def copy_tree(src_root, dst_root, rels):
    for rel in rels:
        (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_root / rel, dst_root / rel)


def edit_line(path, n, edit):
    """Apply `edit(row)` to line n (from 1) of a JSONL file."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    row = json.loads(lines[n - 1])
    edit(row)
    lines[n - 1] = json.dumps(row, ensure_ascii=False) + "\n"
    path.write_text("".join(lines), encoding="utf-8")


def test_schema_passes_for_every_built_split(ds_root, ds_cc_jsonl, ds_mbpp_jsonl, ds_humaneval_jsonl, ds_schemas):
    for rel in ds_cc_jsonl[0].values():
        assert "rows valid" in run_check("jsonl_schema", ds_root, rel, {"schema": ds_schemas["codecontests"]})
    for rel in ds_mbpp_jsonl.values():
        run_check("jsonl_schema", ds_root, rel, {"schema": ds_schemas["mbpp"]})
    run_check("jsonl_schema", ds_root, ds_humaneval_jsonl, {"schema": ds_schemas["humaneval"]})


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.update(is_correct="yes"), "field is_correct"),
    (lambda r: r["metadata"].pop("language"), "field metadata:"),
    (lambda r: r.update(task_id=r["task_id"].replace("_correct_", "_incorrect_")), "field task_id"),
    (lambda r: r.update(extra=1), "field <row>"),
])
def test_schema_violation_names_line_and_field(tmp_path, ds_root, ds_cc_jsonl, ds_schemas, edit, field):
    rel = ds_cc_jsonl[0]["train"]
    copy_tree(ds_root, tmp_path, [rel, ds_schemas["codecontests"]])
    edit_line(tmp_path / rel, 3, edit)
    with pytest.raises(CheckFailed, match=r"^line 3: " + field):
        run_check("jsonl_schema", tmp_path, rel, {"schema": ds_schemas["codecontests"]})


def test_schema_check_on_non_json_line(tmp_path, ds_schemas, ds_root, ds_mbpp_jsonl):
    copy_tree(ds_root, tmp_path, [ds_schemas["mbpp"]])
    good = (ds_root / ds_mbpp_jsonl["test"]).read_bytes().splitlines(keepends=True)[0]
    (tmp_path / "x.jsonl").write_bytes(good + b'{broken\n')
    with pytest.raises(CheckFailed, match="line 2: is not JSON"):
        run_check("jsonl_schema", tmp_path, "x.jsonl", {"schema": ds_schemas["mbpp"]})


def test_rows_counts_flags_and_ids(tmp_path, ds_root, ds_cc_jsonl, ds_mbpp_jsonl):
    cc, infos = ds_cc_jsonl[0]["train"], ds_cc_jsonl[1]["train"]
    n = infos["rows_written"]
    assert run_check("rows", ds_root, cc, {"count": n, "is_correct": True}) == f"{n} rows"
    with pytest.raises(CheckFailed, match=f"{n} rows, expected {n + 1}"):
        run_check("rows", ds_root, cc, {"count": n + 1})
    with pytest.raises(CheckFailed, match="line 1: field is_correct: present"):
        run_check("rows", ds_root, cc, {"is_correct": False})
    with pytest.raises(CheckFailed, match="line 1: field is_correct: missing"):
        run_check("rows", ds_root, ds_mbpp_jsonl["validation"], {"count": 90, "is_correct": True})
    copy_tree(ds_root, tmp_path, [cc])
    first = json.loads((tmp_path / cc).read_text(encoding="utf-8").splitlines()[0])["task_id"]
    edit_line(tmp_path / cc, 5, lambda r: r.update(task_id=first))
    with pytest.raises(CheckFailed, match=re.escape(f"line 5: task_id {first!r} repeats line 1")):
        run_check("rows", tmp_path, cc, {})
    assert run_check("rows", tmp_path, cc, {"unique_task_ids": False}) == f"{n} rows"


def test_stats_consistent(tmp_path, ds_root, ds_cc_jsonl, ds_tokenizer):
    from reconciler.datasets.alpaca_stats import alpaca_stats
    from tests.fixtures.datasets import build

    rels = list(ds_cc_jsonl[0].values())
    copy_tree(ds_root, tmp_path, rels)
    build(alpaca_stats, {"data": [tmp_path / r for r in rels], "tokenizer": ds_tokenizer}, {},
          tmp_path / "stats/summary.json")
    assert run_check("stats_consistent", tmp_path, "stats/summary.json", {"data": rels}) == "2 splits agree"
    edit_line(tmp_path / rels[0], 2, lambda r: r.update(is_correct=not r["is_correct"]))
    with pytest.raises(CheckFailed, match="split 'train': summary says (in)?correct = "):
        run_check("stats_consistent", tmp_path, "stats/summary.json", {"data": rels})
    with pytest.raises(CheckFailed, match="split 'test'"):
        (tmp_path / "processed/codecontests/test.jsonl").write_text("", encoding="utf-8")
        run_check("stats_consistent", tmp_path, "stats/summary.json", {"data": ["processed/codecontests/test.jsonl"]})


def test_disjoint_splits(tmp_path, ds_root, ds_cc_jsonl, ds_mbpp_jsonl):
    train, valid = ds_cc_jsonl[0]["train"], ds_cc_jsonl[0]["valid"]
    assert "disjoint" in run_check("disjoint", ds_root, valid, {"splits": [train], "key": "name"})
    mbpp = list(ds_mbpp_jsonl.values())
    run_check("disjoint", ds_root, mbpp[0], {"splits": mbpp, "key": "task_id"})
    # Leak one train problem into valid under a fresh solution number.
    copy_tree(ds_root, tmp_path, [train, valid])
    leaked = json.loads((tmp_path / train).read_text(encoding="utf-8").splitlines()[0])
    problem = leaked["task_id"].rsplit("_", 2)[0]
    leaked["task_id"] = f"{problem}_correct_99"
    with open(tmp_path / valid, "a", encoding="utf-8") as f:
        f.write(json.dumps(leaked, ensure_ascii=False) + "\n")
    with pytest.raises(CheckFailed) as e:
        run_check("disjoint", tmp_path, valid, {"splits": [train], "key": "name"})
    assert e.value.message == f"problem {problem!r} appears in both {valid} and {train}"
    # With key task_id the distinct solution numbers hide the leak: `name` is the CodeContests key.
    run_check("disjoint", tmp_path, valid, {"splits": [train], "key": "task_id"})


def test_disjoint_subset_of(tmp_path, ds_root, ds_cc_jsonl):
    from reconciler.datasets.alpaca_sample import alpaca_sample
    from tests.fixtures.datasets import build

    train, valid = ds_cc_jsonl[0]["train"], ds_cc_jsonl[0]["valid"]
    copy_tree(ds_root, tmp_path, [train, valid])
    small = "datasets_local_small/codecontests_small/train.jsonl"
    build(alpaca_sample, {"data": tmp_path / train}, {"n": 10, "seed": 1}, tmp_path / small)
    params = {"splits": [train, valid], "key": "name", "subset_of": train}
    assert run_check("disjoint", tmp_path, small, params) == f"10 rows drawn from {train} only"
    with pytest.raises(CheckFailed, match=f"is not a row of {valid}"):
        run_check("disjoint", tmp_path, small, {**params, "subset_of": valid})
    # A train row that also sits in valid: the subset draws from a problem of another split.
    row = (tmp_path / small).read_text(encoding="utf-8").splitlines()[0]
    with open(tmp_path / valid, "a", encoding="utf-8") as f:
        f.write(row + "\n")
    with pytest.raises(CheckFailed, match=re.escape(f"appears in both {small} (subset of {train}) and {valid}")):
        run_check("disjoint", tmp_path, small, params)


def test_schema_check_in_parallel_names_the_global_line(tmp_path, ds_root, ds_cc_jsonl, ds_schemas, monkeypatch):
    import reconciler.datasets.checks as checks

    rel = ds_cc_jsonl[0]["train"]
    copy_tree(ds_root, tmp_path, [rel, ds_schemas["codecontests"]])
    monkeypatch.setattr(checks, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(checks.os, "cpu_count", lambda: 2)  # 8 byte ranges, 2 processes
    n = ds_cc_jsonl[1]["train"]["rows_written"]
    assert run_check("jsonl_schema", tmp_path, rel, {"schema": ds_schemas["codecontests"]}).startswith(f"{n} rows")
    edit_line(tmp_path / rel, 41, lambda r: r["metadata"].update(difficulty=-2))
    with pytest.raises(CheckFailed, match=r"^line 41: field metadata/difficulty: -2 is less than the minimum of -1"):
        run_check("jsonl_schema", tmp_path, rel, {"schema": ds_schemas["codecontests"]})
