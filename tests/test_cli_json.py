"""`apply --json` and `check --json`: versioned, schema-valid, one result per artifact."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema

from tests.fixtures.engine import run_cli

LOCK = """version: 1
storage_version: "1"
artifacts:
  a.json: {build: {transform: write_json, params: {data: {x: 1}}}}
  b.json: {build: {transform: copy, inputs: {src: a.json}}}
"""


def _schema(name: str) -> dict:
    return json.loads(resources.files("reconciler.schemas").joinpath(name).read_text())


def test_apply_json_has_one_result_per_artifact_with_its_origin(tmp_path):
    (tmp_path / "storage.lock.yaml").write_text(LOCK)
    res = run_cli("apply", "--json", cwd=tmp_path)
    assert res.code == 0, res.text
    out = res.json()  # stdout is only the JSON: progress lines went to stderr
    jsonschema.validate(out, _schema("apply.schema.json"))
    assert out["format_version"] == 1 and out["ok"] is True
    assert [(r["path"], r["status"], r["origin"]) for r in out["artifacts"]] == [
        ("a.json", "done", "built"), ("b.json", "done", "built")]
    assert "done  a.json" in res.err

    again = run_cli("apply", "--json", cwd=tmp_path).json()
    jsonschema.validate(again, _schema("apply.schema.json"))
    assert {r["status"] for r in again["artifacts"]} == {"ok"} and {r["origin"] for r in again["artifacts"]} == {None}
    assert again["summary"] == {"done": 0, "failed": 0, "skipped": 0, "ok": 2}


def test_check_json_is_versioned_and_lists_what_failed(tmp_path):
    (tmp_path / "storage.lock.yaml").write_text(LOCK)
    res = run_cli("check", "--json", cwd=tmp_path)
    assert res.code == 1
    out = res.json()
    jsonschema.validate(out, _schema("check.schema.json"))
    assert out["format_version"] == 1 and out["failed"] == ["a.json", "b.json"]
