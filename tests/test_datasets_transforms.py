"""to_alpaca and alpaca_schema: mapping rules, token filter, determinism, hostile input."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from reconcile_testing.datasets import MBPP_SCHEMA, make_mbpp_parquet, write_codecontests_rows

from reconciler.datasets.alpaca_convert import examples_block
from reconciler.datasets.transforms import alpaca_schema, schema_path, to_alpaca
from reconciler.errors import TransformError
from reconciler.hashing import pretty_json_bytes
from tests.fixtures.datasets import build

SOURCES = ["unknown", "codechef", "codeforces", "hackerearth", "codejam", "atcoder", "aizu"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ntok(sp, text: str) -> int:
    return len(sp.encode(text))


def expected_codecontests(parquet, sp, max_tokens):
    """Reference implementation of the documented CodeContests rules, row by row."""
    out = []
    for r in pq.read_table(parquet).to_pylist():
        pairs = [(i, o) for i, o in zip(r["public_tests"]["input"], r["public_tests"]["output"])
                 if i.strip() and o.strip()][:2]
        block = "\n\n".join(f"Input:\n{i.rstrip(chr(13) + chr(10))}\nOutput:\n{o.rstrip(chr(13) + chr(10))}"
                            for i, o in pairs)
        for label, col in (("correct", "solutions"), ("incorrect", "incorrect_solutions")):
            for k, (lang, sol) in enumerate(zip(r[col]["language"], r[col]["solution"])):
                if lang not in (1, 3):
                    continue
                task_id = f"{r['name']}_{label}_{k}"  # v1: k indexes the full list, all languages
                if ntok(sp, r["description"]) + ntok(sp, block) + ntok(sp, sol) > max_tokens or not sol.strip():
                    continue
                out.append({"instruction": r["description"], "input": block, "output": sol, "task_id": task_id,
                            "is_correct": label == "correct",
                            "metadata": {"difficulty": r["difficulty"], "has_tests": bool(pairs),
                                         "language": "python2" if lang == 1 else "python3",
                                         "source": "code_contests", "contest_site": SOURCES[r["source"]]}})
    return out


def test_codecontests_rows_follow_the_rules(ds_root, ds_cc_jsonl, ds_cc_parquet, ds_sp):
    rows = read_jsonl(ds_root / ds_cc_jsonl[0]["train"])
    assert rows == expected_codecontests(ds_cc_parquet, ds_sp, 600)
    assert all(list(r) == ["instruction", "input", "output", "task_id", "is_correct", "metadata"] for r in rows)
    assert {r["metadata"]["language"] for r in rows} == {"python2", "python3"}


def test_codecontests_provenance_counts(ds_root, ds_cc_jsonl, ds_cc_parquet):
    rel, infos = ds_cc_jsonl
    info = infos["train"]
    table = pq.read_table(ds_cc_parquet).to_pylist()
    langs = [lang for r in table for c in ("solutions", "incorrect_solutions") for lang in r[c]["language"]]
    assert info["rows_written"] == len(read_jsonl(ds_root / rel["train"]))
    assert info["rows_dropped"]["wrong_language"] == sum(lang not in (1, 3) for lang in langs)
    assert info["rows_dropped"]["too_long"] > 0  # the fixture holds some over-long solutions
    assert info["rows_written"] + sum(info["rows_dropped"].values()) == len(langs)


def test_tests_block_text():
    inputs = ["1 2\n", "", "4\r\n", "6", "8"]
    outputs = ["3\n", "x", "5\n\n", "7", "9"]
    assert examples_block(inputs, outputs) == "Input:\n1 2\nOutput:\n3\n\nInput:\n4\nOutput:\n5"
    assert examples_block(["  "], ["1"]) == "" and examples_block([], []) == ""


def test_codecontests_edge_rows(tmp_path, ds_tokenizer):
    sols = {"language": [2, 1, 3, 4, 3, 3], "solution": ["cpp", "print 1", "   ", "java", "print(2)", "print(3)"]}
    rows = [{"name": "1_A. Edge", "description": "Add numbers ≤ 10.", "source": 2, "difficulty": 7,
             "public_tests": {"input": ["1 2\n"], "output": ["3\n"]}, "solutions": sols,
             "incorrect_solutions": {"language": [0, 3], "solution": ["?", "print(0)"]}},
            {"name": "2_B. Blank", "description": "  ", "solutions": {"language": [3], "solution": ["x=1"]}},
            {"name": "3_C. NoDifficulty", "description": "d", "difficulty": None, "solutions": {"language": [3], "solution": ["x=1"]}}]
    parquet = write_codecontests_rows(tmp_path / "edge.parquet", rows)
    info = build(to_alpaca, {"data": parquet, "tokenizer": ds_tokenizer}, {"dataset": "codecontests"},
                 tmp_path / "edge.jsonl")
    out = read_jsonl(tmp_path / "edge.jsonl")
    # v1 numbering: k is the index in the full (all-language) list, so C++ / Java / blank leave gaps.
    assert [(r["task_id"], r["metadata"]["language"]) for r in out] == [
        ("1_A. Edge_correct_1", "python2"), ("1_A. Edge_correct_4", "python3"),
        ("1_A. Edge_correct_5", "python3"), ("1_A. Edge_incorrect_1", "python3"),
        ("3_C. NoDifficulty_correct_0", "python3")]
    assert [r["is_correct"] for r in out] == [True, True, True, False, True]
    assert out[-1]["metadata"]["difficulty"] == -1  # v1: -1 when upstream has no difficulty
    # v1 metadata: source is the dataset, the raw difficulty enum; the contest site has its own key.
    assert out[0]["metadata"] == {"difficulty": 7, "has_tests": True, "language": "python2",
                                  "source": "code_contests", "contest_site": "codeforces"}
    assert out[0]["input"] == "Input:\n1 2\nOutput:\n3" and out[0]["instruction"] == "Add numbers ≤ 10."
    assert info["rows_dropped"] == {"too_long": 0, "wrong_language": 3, "empty": 2}
    assert "≤" in (tmp_path / "edge.jsonl").read_text(encoding="utf-8")  # ensure_ascii=False


def test_shard_folder_equals_single_file(tmp_path, ds_root, ds_cc_jsonl, ds_cc_shards, ds_tokenizer):
    build(to_alpaca, {"data": ds_cc_shards, "tokenizer": ds_tokenizer},
          {"dataset": "codecontests", "max_tokens": 600}, tmp_path / "from_shards.jsonl")
    assert (tmp_path / "from_shards.jsonl").read_bytes() == (ds_root / ds_cc_jsonl[0]["train"]).read_bytes()


def test_rebuild_is_byte_identical(tmp_path, ds_root, ds_cc_jsonl, ds_cc_parquet, ds_tokenizer):
    info = build(to_alpaca, {"data": ds_cc_parquet, "tokenizer": ds_tokenizer},
                 {"dataset": "codecontests", "max_tokens": 600}, tmp_path / "again.jsonl")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "again.jsonl") == digest(ds_root / ds_cc_jsonl[0]["train"])
    assert info == ds_cc_jsonl[1]["train"]


def test_mbpp_rows(ds_root, ds_mbpp_jsonl, ds_mbpp_parquets):
    for split, n in (("train", 374), ("validation", 90), ("test", 500)):
        src = pq.read_table(ds_mbpp_parquets[split]).to_pylist()
        rows = read_jsonl(ds_root / ds_mbpp_jsonl[split])
        assert len(rows) == n
        for s, r in zip(src, rows):
            assert r == {"instruction": s["text"], "input": "", "output": s["code"].replace("\r\n", "\n"),
                         "task_id": str(s["task_id"]),
                         "metadata": {"source": "mbpp", "difficulty": None, "has_tests": True,
                                      "test_list": s["test_list"], "test_setup_code": s["test_setup_code"]}}
    assert any("\r\n" in s["code"] for s in pq.read_table(ds_mbpp_parquets["train"]).to_pylist())


def test_humaneval_rows(ds_root, ds_humaneval_jsonl, ds_humaneval_parquet):
    src = pq.read_table(ds_humaneval_parquet).to_pylist()
    rows = read_jsonl(ds_root / ds_humaneval_jsonl)
    assert [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(164)]
    for s, r in zip(src, rows):
        assert (r["instruction"], r["input"], r["output"]) == (s["prompt"], "", s["canonical_solution"])
        assert r["metadata"] == {"source": "humaneval", "difficulty": None, "has_tests": True,
                                 "test": s["test"], "entry_point": s["entry_point"]}


def pad_to(sp, base: str, target: int) -> str:
    """`base` extended until it has exactly `target` tokens (bulk words, then single characters)."""
    text = base
    while ntok(sp, text + " ab" * 8) < target - 4:
        text += " ab" * 8
    while ntok(sp, text) != target:
        n = ntok(sp, text)
        for piece in (" ab", "a", " q", "z", ";", "\n", "1"):
            if n < ntok(sp, text + piece) <= target:
                text += piece
                break
        else:
            raise AssertionError(f"cannot reach {target} tokens from {n}")
    return text


def test_token_filter_boundary_at_default_2048(tmp_path, ds_sp, ds_tokenizer):
    instruction = "Write a function."
    budget = 2048 - ntok(ds_sp, instruction)  # MBPP input is "": zero tokens
    code_keep = pad_to(ds_sp, "def f():", budget)
    code_drop = pad_to(ds_sp, "def g():", budget + 1)
    rows = [{"task_id": 1, "text": instruction, "code": c, "test_list": [], "test_setup_code": "",
             "challenge_test_list": []} for c in (code_keep, code_drop)]
    rows[1]["task_id"] = 2
    parquet = make_mbpp_parquet(tmp_path / "b.parquet", "prompt", rows)
    info = build(to_alpaca, {"data": parquet, "tokenizer": ds_tokenizer}, {"dataset": "mbpp"}, tmp_path / "b.jsonl")
    assert [r["task_id"] for r in read_jsonl(tmp_path / "b.jsonl")] == ["1"]
    assert info["rows_dropped"]["too_long"] == 1
    info = build(to_alpaca, {"data": parquet, "tokenizer": ds_tokenizer}, {"dataset": "mbpp", "max_tokens": 2049},
                 tmp_path / "c.jsonl")
    assert info["rows_written"] == 2


@pytest.mark.parametrize("tokenizer", ["absent-key", "missing-file", "garbage"])
def test_tokenizer_is_required(tmp_path, ds_mbpp_parquets, tokenizer):
    inputs = {"data": ds_mbpp_parquets["validation"]}
    if tokenizer == "missing-file":
        inputs["tokenizer"] = tmp_path / "nope.model"
    elif tokenizer == "garbage":
        inputs["tokenizer"] = tmp_path / "bad.model"
        inputs["tokenizer"].write_bytes(b"not a sentencepiece model")
    with pytest.raises(TransformError) as e:
        build(to_alpaca, inputs, {"dataset": "mbpp"}, tmp_path / "out.jsonl")
    assert e.value.where == "tokenizer"
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_and_mistyped_columns(tmp_path, ds_cc_parquet, ds_tokenizer):
    table = pq.read_table(ds_cc_parquet)
    pq.write_table(table.drop_columns(["solutions"]), tmp_path / "nosol.parquet")
    with pytest.raises(TransformError, match=r"'solutions' is missing from nosol\.parquet"):
        build(to_alpaca, {"data": tmp_path / "nosol.parquet", "tokenizer": ds_tokenizer},
              {"dataset": "codecontests"}, tmp_path / "o.jsonl")
    bad = table.set_column(table.schema.get_field_index("difficulty"), "difficulty",
                           pa.array([str(x) for x in table.column("difficulty").to_pylist()]))
    pq.write_table(bad, tmp_path / "strdiff.parquet")
    with pytest.raises(TransformError, match=r"'difficulty' of strdiff\.parquet has type string, expected integer"):
        build(to_alpaca, {"data": tmp_path / "strdiff.parquet", "tokenizer": ds_tokenizer},
              {"dataset": "codecontests"}, tmp_path / "o.jsonl")
    # The wrong dataset for the file is the same error, naming the first absent column.
    with pytest.raises(TransformError, match="'task_id' is missing"):
        build(to_alpaca, {"data": ds_cc_parquet, "tokenizer": ds_tokenizer}, {"dataset": "mbpp"}, tmp_path / "o.jsonl")


def test_empty_folder_and_not_parquet(tmp_path, ds_tokenizer):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransformError, match="holds no"):
        build(to_alpaca, {"data": tmp_path / "empty", "tokenizer": ds_tokenizer}, {"dataset": "mbpp"},
              tmp_path / "o.jsonl")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(TransformError, match="not a readable parquet"):
        build(to_alpaca, {"data": tmp_path / "x.parquet", "tokenizer": ds_tokenizer}, {"dataset": "mbpp"},
              tmp_path / "o.jsonl")


def _mbpp_rows(n):
    return [{"task_id": i, "text": f"Task number {i}", "code": f"def f{i}(): return {i}", "test_list": ["assert 1"],
             "test_setup_code": "", "challenge_test_list": []} for i in range(n)]


def test_invalid_utf8_in_binary_column(tmp_path, ds_tokenizer):
    table = pa.Table.from_pylist(_mbpp_rows(4), schema=MBPP_SCHEMA)
    texts = pa.array([b"ok", b"fine", b"bad \xff\xfe here", b"ok"], pa.binary())
    pq.write_table(table.set_column(1, "text", texts), tmp_path / "bin.parquet")
    with pytest.raises(TransformError, match=r"bin\.parquet row 2 column 'text': value is not valid UTF-8"):
        build(to_alpaca, {"data": tmp_path / "bin.parquet", "tokenizer": ds_tokenizer}, {"dataset": "mbpp"},
              tmp_path / "o.jsonl")


def test_invalid_utf8_in_crafted_string_column(tmp_path, ds_tokenizer):
    rows = _mbpp_rows(40)
    rows[33]["code"] = "def MARKERX(): pass"
    pq.write_table(pa.Table.from_pylist(rows, schema=MBPP_SCHEMA), tmp_path / "s.parquet",
                   compression="none", use_dictionary=False, write_statistics=False)
    raw = (tmp_path / "s.parquet").read_bytes()
    assert raw.count(b"MARKERX") == 1
    (tmp_path / "s.parquet").write_bytes(raw.replace(b"MARKERX", b"MARK\xc3\x28X"))  # string-typed, bad bytes
    with pytest.raises(TransformError, match=r"row 33 column 'code': value is not valid UTF-8"):
        build(to_alpaca, {"data": tmp_path / "s.parquet", "tokenizer": ds_tokenizer}, {"dataset": "mbpp"},
              tmp_path / "o.jsonl")


@pytest.mark.parametrize("dataset", ["codecontests", "mbpp", "humaneval"])
def test_alpaca_schema_writes_the_canonical_file(tmp_path, dataset):
    build(alpaca_schema, {}, {"dataset": dataset}, tmp_path / "schema.json")
    canonical = schema_path(dataset).read_bytes()
    assert (tmp_path / "schema.json").read_bytes() == canonical == pretty_json_bytes(json.loads(canonical))
    assert json.loads(canonical)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_list_parents_skip_null_lists_backed_by_values():
    from reconciler.datasets.alpaca_io import list_parents

    lang = pa.array([[1, 2], [3, 3], [1]], pa.list_(pa.int64()))
    sol = pa.array([["a", "b"], ["c", "d"], ["e"]], pa.list_(pa.string()))
    st = pa.StructArray.from_arrays([lang, sol], names=["language", "solution"], mask=pa.array([False, True, False]))
    child = pc.struct_field(st, "language")
    assert child.flatten().to_pylist() == [1, 2, 1] and list_parents(child).tolist() == [0, 0, 2]
    assert list_parents(child.slice(1)).tolist() == [1]


def test_null_solution_structs_and_tests(tmp_path, ds_tokenizer):
    rows = [{"name": "5_A. N", "description": "Print one.", "solutions": None, "public_tests": None,
             "incorrect_solutions": {"language": [3], "solution": ["print(2)"]}}]
    parquet = write_codecontests_rows(tmp_path / "n.parquet", rows)
    build(to_alpaca, {"data": parquet, "tokenizer": ds_tokenizer}, {"dataset": "codecontests"}, tmp_path / "n.jsonl")
    (row,) = read_jsonl(tmp_path / "n.jsonl")
    assert (row["task_id"], row["input"], row["metadata"]["has_tests"]) == ("5_A. N_incorrect_0", "", False)
