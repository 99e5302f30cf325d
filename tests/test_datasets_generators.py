"""The miniature upstream generators (reconcile_testing.datasets) and the real MBPP rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reconcile_testing.datasets import (
    CODECONTESTS_SCHEMA,
    load_mbpp_json,
    make_codecontests_parquet,
    make_humaneval_parquet,
    make_mbpp_parquet,
)

from reconciler.datasets.transforms import to_alpaca
from reconciler.registry import CHECKS, load_plugins
from tests.conftest import UPSTREAM
from tests.fixtures.datasets import build, context

HUB_CC_COLUMNS = ["name", "description", "public_tests", "private_tests", "generated_tests", "source", "difficulty",
                  "solutions", "incorrect_solutions", "cf_contest_id", "cf_index", "cf_points", "cf_rating", "cf_tags",
                  "is_description_translated", "untranslated_description", "time_limit", "memory_limit_bytes",
                  "input_file", "output_file"]


def test_codecontests_generator_hub_schema(ds_cc_parquet):
    pf = pq.ParquetFile(ds_cc_parquet)
    schema = pf.schema_arrow
    assert schema.names == HUB_CC_COLUMNS
    assert schema.field("public_tests").type == pa.struct([("input", pa.list_(pa.string())),
                                                           ("output", pa.list_(pa.string()))])
    assert schema.field("solutions").type == pa.struct([("language", pa.list_(pa.int64())),
                                                        ("solution", pa.list_(pa.string()))])
    assert pf.metadata.num_row_groups == 3  # 14 problems, row groups of 5
    rows = pq.read_table(ds_cc_parquet).to_pylist()
    assert any(r["time_limit"] is None for r in rows) and any(r["time_limit"] for r in rows)
    langs = {lang for r in rows for lang in r["solutions"]["language"] + r["incorrect_solutions"]["language"]}
    assert {1, 2, 3, 4} <= langs
    assert any(not r["public_tests"]["input"] for r in rows)


def test_codecontests_generator_is_deterministic(tmp_path):
    a = make_codecontests_parquet(tmp_path / "a.parquet", 6, 4, seed=9, row_group_size=4)
    b = make_codecontests_parquet(tmp_path / "b.parquet", 6, 4, seed=9, row_group_size=2)
    assert pq.read_table(a).equals(pq.read_table(b))  # row-group size does not change the rows
    assert pq.read_table(a).schema.equals(CODECONTESTS_SCHEMA)


def test_mbpp_and_humaneval_generators(tmp_path):
    train = pq.read_table(make_mbpp_parquet(tmp_path / "t.parquet", "train")).to_pylist()
    assert [r["task_id"] for r in train] == list(range(601, 975))
    assert any("\r\n" in r["code"] for r in train) and any("\r\n" not in r["code"] for r in train)
    assert pq.read_schema(tmp_path / "t.parquet").field("task_id").type == pa.int32()
    assert len(pq.read_table(make_mbpp_parquet(tmp_path / "v.parquet", "validation", 7))) == 7
    with pytest.raises(ValueError):
        make_mbpp_parquet(tmp_path / "x.parquet", "dev")
    he = pq.read_table(make_humaneval_parquet(tmp_path / "h.parquet")).to_pylist()
    assert [r["task_id"] for r in he] == [f"HumanEval/{i}" for i in range(164)]


MBPP_REAL = UPSTREAM / "mbpp-full"
REAL_TOKENIZER = UPSTREAM / "multi-token-prediction" / "tokenizer.model"


@pytest.mark.upstream
def test_real_mbpp_rows_convert(tmp_path, ds_tokenizer, ds_root, ds_schemas):
    if not MBPP_REAL.is_dir():
        pytest.skip("../shared/upstream/mbpp-full is absent")
    tokenizer = REAL_TOKENIZER if REAL_TOKENIZER.is_file() else ds_tokenizer
    load_plugins()
    ids = {}
    for split, n in (("train", 374), ("validation", 90), ("test", 500)):
        real = load_mbpp_json(MBPP_REAL / f"{split}.json")
        parquet = make_mbpp_parquet(tmp_path / f"{split}-00000-of-00001.parquet", split, real)
        rel = f"processed/mbpp_real/{split}.jsonl"
        info = build(to_alpaca, {"data": parquet, "tokenizer": tokenizer}, {"dataset": "mbpp"}, ds_root / rel)
        rows = [json.loads(line) for line in (ds_root / rel).read_text(encoding="utf-8").splitlines()]
        assert info["rows_written"] == len(rows) == n
        assert [r["task_id"] for r in rows] == [str(r["task_id"]) for r in real]
        assert all("\r\n" not in r["output"] for r in rows)  # (4 real rows end in a lone \r: kept)
        assert rows[0]["output"] == real[0]["code"].replace("\r\n", "\n")
        CHECKS["jsonl_schema"].fn(ds_root / rel, {"schema": ds_schemas["mbpp"]}, context(ds_root, rel))
        CHECKS["rows"].fn(ds_root / rel, {"count": n, "is_correct": False}, context(ds_root, rel))
        ids[split] = rel
    CHECKS["disjoint"].fn(ds_root / ids["train"], {"splits": list(ids.values()), "key": "task_id"},
                          context(ds_root, ids["train"]))
