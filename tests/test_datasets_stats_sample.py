"""alpaca_stats (summary.json) and alpaca_sample (small subsets)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reconciler.datasets.alpaca_sample import alpaca_sample, problem_of, select
from reconciler.datasets.alpaca_stats import alpaca_stats, summarize_lengths
from reconciler.errors import TransformError
from tests.fixtures.datasets import build


def rows_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def ds_summary(ds_root, ds_cc_jsonl, ds_mbpp_jsonl, ds_tokenizer):
    """summary.json over the CodeContests train/valid and MBPP validation splits."""
    rels = [*ds_cc_jsonl[0].values(), ds_mbpp_jsonl["validation"]]
    final = ds_root / "stats" / "summary.json"
    build(alpaca_stats, {"data": [ds_root / r for r in rels], "tokenizer": ds_tokenizer}, {}, final)
    return json.loads(final.read_text(encoding="utf-8"))


def test_nearest_rank_percentiles():
    assert summarize_lengths(np.arange(1, 101)) == {"max": 100, "mean": 50.5, "p50": 50, "p95": 95}
    assert summarize_lengths(np.array([7])) == {"max": 7, "mean": 7.0, "p50": 7, "p95": 7}
    assert summarize_lengths(np.array([], dtype=np.int32))["max"] == 0


def test_summary_counts_and_token_lengths(ds_summary, ds_root, ds_cc_jsonl, ds_sp):
    assert set(ds_summary["splits"]) == {"train", "valid", "validation"}
    rows = rows_of(ds_root / ds_cc_jsonl[0]["train"])
    train = ds_summary["splits"]["train"]
    correct = sum(r["is_correct"] for r in rows)
    assert (train["rows"], train["correct"], train["incorrect"]) == (len(rows), correct, len(rows) - correct)
    assert train["correct_ratio"] == round(correct / len(rows), 6)
    lengths = {f: np.array([len(ds_sp.encode(r[f])) for r in rows]) for f in ("instruction", "input", "output")}
    lengths["total"] = sum(lengths.values())
    for field, arr in lengths.items():
        s = np.sort(arr)
        assert train["tokens"][field] == {"max": int(s[-1]), "mean": round(float(arr.sum()) / arr.size, 3),
                                          "p50": int(s[math.ceil(0.5 * s.size) - 1]),
                                          "p95": int(s[math.ceil(0.95 * s.size) - 1])}
    assert train["tokens"]["total"]["max"] <= 600  # the split was built with max_tokens 600
    mbpp = ds_summary["splits"]["validation"]
    assert mbpp["rows"] == 90 and "correct" not in mbpp and mbpp["tokens"]["input"]["max"] == 0


def test_summary_has_no_date_and_is_reproducible(tmp_path, ds_root, ds_cc_jsonl, ds_tokenizer):
    rels = list(ds_cc_jsonl[0].values())
    for name in ("a.json", "b.json"):
        build(alpaca_stats, {"data": [ds_root / r for r in rels], "tokenizer": ds_tokenizer}, {}, tmp_path / name)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "date" not in (tmp_path / "a.json").read_text() and "time" not in json.loads((tmp_path / "a.json").read_text())


def test_stats_refuses_a_broken_line_and_duplicate_split_names(tmp_path, ds_tokenizer):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.jsonl").write_text('{"task_id": "1"}\nnot json\n', encoding="utf-8")
    with pytest.raises(TransformError, match="train.jsonl line 2 is not JSON"):
        build(alpaca_stats, {"data": [tmp_path / "a" / "train.jsonl"], "tokenizer": ds_tokenizer}, {}, tmp_path / "s.json")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "a" / "train.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TransformError, match="share the split name 'train'"):
        build(alpaca_stats, {"data": [tmp_path / "a" / "train.jsonl", tmp_path / "b" / "train.jsonl"],
                             "tokenizer": ds_tokenizer}, {}, tmp_path / "s.json")


def test_problem_of():
    assert problem_of("1_A. Foo_correct_12") == "1_A. Foo"
    assert problem_of("x_incorrect_0") == "x" and problem_of("HumanEval/3") == "HumanEval/3"


def test_select_spreads_first_then_balances():
    import random

    problems, labels = [], []
    for p in range(30):  # every problem has 5 correct rows; only every third has incorrect ones
        problems += [p] * 5 + [p] * (4 if p % 3 == 0 else 0)
        labels += [1] * 5 + [0] * (4 if p % 3 == 0 else 0)
    problems, labels = np.array(problems, np.int32), np.array(labels, np.int8)
    picks = select(problems, labels, 24, random.Random(0))
    assert len(picks) == 24 == len(set(picks)) and picks == sorted(picks)
    assert len({int(problems[i]) for i in picks}) == 24  # one per problem before any repeats
    assert select(problems, labels, 24, random.Random(0)) == picks
    many = select(problems, labels, 60, random.Random(1))
    correct = int((labels[many] == 1).sum())
    assert len({int(problems[i]) for i in many}) == 30 and correct == 30  # 40 incorrect exist: balanced
    assert select(problems[:0], labels[:0], 5, random.Random(0)) == []


def _sample(tmp_path, src, n, seed, name):
    info = build(alpaca_sample, {"data": src}, {"n": n, "seed": seed}, tmp_path / name)
    return (tmp_path / name).read_bytes(), info


def test_sample_is_deterministic_spread_and_balanced(tmp_path, ds_root, ds_cc_jsonl):
    src = ds_root / ds_cc_jsonl[0]["train"]
    source_lines = src.read_bytes().splitlines(keepends=True)
    a, info = _sample(tmp_path, src, 20, 7, "a.jsonl")
    b, _ = _sample(tmp_path, src, 20, 7, "b.jsonl")
    c, _ = _sample(tmp_path, src, 20, 8, "c.jsonl")
    assert a == b and a != c
    lines = a.splitlines(keepends=True)
    assert len(lines) == 20 == info["rows_written"]
    positions = [source_lines.index(line) for line in lines]
    assert positions == sorted(positions) and positions != list(range(20))  # source order, not the head
    rows = [json.loads(line) for line in lines]
    problems = {problem_of(r["task_id"]) for r in source_lines and map(json.loads, source_lines)}
    picked = [problem_of(r["task_id"]) for r in rows]
    assert len(set(picked)) == min(len(problems), 20) == info["problems"]
    correct = sum(r["is_correct"] for r in rows)
    assert abs(correct - (len(rows) - correct)) <= 1


def test_sample_caps_at_the_file_and_handles_unlabelled_rows(tmp_path, ds_root, ds_mbpp_jsonl, ds_cc_jsonl):
    src = ds_root / ds_mbpp_jsonl["validation"]
    out, info = _sample(tmp_path, src, 10, 0, "m.jsonl")
    assert info["rows_written"] == 10 == info["problems"]
    assert set(out.splitlines()) <= set(src.read_bytes().splitlines())
    valid = ds_root / ds_cc_jsonl[0]["valid"]
    everything, _ = _sample(tmp_path, valid, 10_000, 0, "all.jsonl")
    assert everything == valid.read_bytes()
