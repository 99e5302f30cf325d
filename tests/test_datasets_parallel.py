"""CodeContests shards converted on several processes: the same bytes and the same counts for any number
of processes, one process per shard, and a shard's error surfaces as in one process."""

from __future__ import annotations

import shutil

import pytest

from reconciler.datasets.transforms import to_alpaca
from reconciler.errors import TransformError
from reconciler.hashing import sha256_file
from tests.fixtures.datasets import build

PARAMS = {"dataset": "codecontests", "max_tokens": 600}


def test_output_is_byte_identical_for_any_number_of_processes(tmp_path, ds_cc_shards, ds_tokenizer, monkeypatch):
    results = {}
    for workers in (1, 2, 3):
        monkeypatch.setenv("RECONCILE_WORKERS", str(workers))
        out = tmp_path / f"w{workers}.jsonl"
        info = build(to_alpaca, {"data": ds_cc_shards, "tokenizer": ds_tokenizer}, PARAMS, out)
        results[workers] = (sha256_file(out), info)
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".reconcile-tmp-")], "no shard file left"
    assert results[1][1]["rows_written"] > 0
    assert results[1] == results[2] == results[3]


def test_a_bad_shard_fails_the_conversion_as_in_one_process(tmp_path, ds_cc_shards, ds_tokenizer, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(ds_cc_shards, data)
    bad = sorted(data.iterdir())[1]
    bad.write_bytes(b"not parquet at all")
    messages = {}
    for workers in (1, 2):
        monkeypatch.setenv("RECONCILE_WORKERS", str(workers))
        with pytest.raises(TransformError) as info:
            build(to_alpaca, {"data": data, "tokenizer": ds_tokenizer}, PARAMS, tmp_path / f"out{workers}.jsonl")
        messages[workers] = (info.value.message, info.value.where)
        assert not (tmp_path / f"out{workers}.jsonl").exists()
    assert messages[1] == messages[2] and bad.name in messages[1][0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".reconcile-tmp-")]


def test_workers_setting_must_be_a_number(tmp_path, ds_cc_shards, ds_tokenizer, monkeypatch):
    monkeypatch.setenv("RECONCILE_WORKERS", "many")
    with pytest.raises(TransformError, match="RECONCILE_WORKERS"):
        build(to_alpaca, {"data": ds_cc_shards, "tokenizer": ds_tokenizer}, PARAMS, tmp_path / "out.jsonl")
