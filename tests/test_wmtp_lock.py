"""The project's own WMTP v2.0.0 lock: complete, canonical, every open pin declared, docs current."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.errors import LockError
from reconciler.lockfile import load_lock, lock_from_data

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "storage.lock.yaml"
MODELS = ("meta-llama-mtp", "ref-sheared-llama-2.7b", "micro-mtp", "micro-ref")
DATASETS = ("codecontests", "mbpp", "humaneval")
RELEASE_DATE = yaml.safe_load(LOCK.read_text())["releases"][0]["date"]


def _cli(*args, cwd: Path):
    import os
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args))
    finally:
        os.chdir(old)


@pytest.fixture
def fresh(tmp_path):
    """The committed lock and storage README in an empty folder, as on a fresh clone."""
    shutil.copy(LOCK, tmp_path / "storage.lock.yaml")
    (tmp_path / "storage").mkdir()
    shutil.copy(ROOT / "storage" / "README.md", tmp_path / "storage" / "README.md")
    return tmp_path


def test_plan_lists_every_layout_folder_offline(fresh):
    r = _cli("plan", "--json", cwd=fresh)
    assert r.exit_code == 0, r.output
    paths = {a["path"] for a in yaml.safe_load(r.output)["actions"]}
    for m in MODELS:
        for part in ("safetensors/model.safetensors", "safetensors/SHA256SUMS", "tokenizer/tokenizer.model",
                     "tokenizer/tokenizer_config.json", "metadata.json"):
            assert f"models_v2/{m}/{part}" in paths
        assert any(p.startswith(f"models_v2/{m}/configs/") for p in paths)
    for d in DATASETS:
        assert any(p.startswith(f"datasets_v2/{d}/raw/") for p in paths)
        assert f"datasets_v2/{d}/processed/schema.json" in paths
        assert f"datasets_v2/{d}/stats/{RELEASE_DATE}_summary.json" in paths
        assert any(p.startswith(f"datasets_local_small/{d}_small/") for p in paths)
    assert any(p.startswith("models_v2/meta-llama-mtp/raw/") for p in paths)


def test_lock_check_reports_exactly_the_declared_open_pins(fresh):
    lock = load_lock(fresh / "storage.lock.yaml")
    declared = {p for p, a in lock.artifacts.items() if a.open} | {
        n for n, s in lock.raw["sources"].items() if s.get("open")}
    r = _cli("lock", "--check", cwd=fresh)
    assert r.exit_code == 1  # open pins remain until the first download
    reported = set(re.findall(r'^unpinned: (?:artifacts|sources)\."([^"]+)"', r.output, re.M))
    assert reported == declared
    assert "no reason declared" not in r.output and "not canonical" not in r.output
    assert _cli("lock", "--check", "--allow-open", cwd=fresh).exit_code == 0


def test_known_upstream_values_are_pinned():
    lock = load_lock(LOCK)
    tok = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
    for m in MODELS:
        assert lock.artifacts[f"models_v2/{m}/tokenizer/tokenizer.model"].sha256 == tok
    assert lock.artifacts["models_v2/meta-llama-mtp/raw/7B_1T_4/params.json"].sha256.startswith("da72c269")
    shard = lock.artifacts["models_v2/ref-sheared-llama-2.7b/raw/pytorch_model-00001-of-00002.bin"]
    assert shard.sha256.startswith("ee766e67")
    assert lock.sources["meta-mtp"].gated


def test_docs_are_current_on_a_fresh_clone(fresh):
    r = _cli("docs", "--check", cwd=fresh)
    assert r.exit_code == 0, r.output


def test_a_micro_size_bound_that_cannot_hold_is_refused():
    data = yaml.safe_load(LOCK.read_text())
    data["artifacts"]["models_v2/micro-mtp/safetensors/model.safetensors"]["max_size"] = 50_000_000
    with pytest.raises(LockError) as e:
        lock_from_data(data)
    assert "92.8 MB" in str(e.value) and "max_size" in str(e.value)


def test_plan_json_follows_its_schema(fresh):
    import json

    import jsonschema

    from reconciler.lockfile import load_schema
    r = _cli("plan", "--json", cwd=fresh)
    jsonschema.validate(json.loads(r.output), load_schema("plan.schema.json"))


def _diff(old: dict, new: dict) -> dict:
    from reconciler.diff import diff_locks
    return diff_locks(lock_from_data(old), lock_from_data(new))


def test_a_revision_change_cascades_to_the_micro_models_and_datasets():
    old = yaml.safe_load(LOCK.read_text())
    new = yaml.safe_load(LOCK.read_text())
    new["sources"]["meta-mtp"]["revision"] = "1" * 40
    rebuilt = {e["path"] for e in _diff(old, new)["rebuilt"]}
    assert {"models_v2/meta-llama-mtp/safetensors/model.safetensors", "models_v2/micro-mtp/safetensors/model.safetensors",
            "models_v2/micro-mtp/safetensors/SHA256SUMS", "models_v2/micro-mtp/metadata.json"} <= rebuilt
    new["sources"]["code-contests"]["revision"] = "2" * 40
    rebuilt = {e["path"] for e in _diff(old, new)["rebuilt"]}
    assert {"datasets_v2/codecontests/processed/train.jsonl", f"datasets_v2/codecontests/stats/{RELEASE_DATE}_summary.json",
            "datasets_local_small/codecontests_small/train.jsonl"} <= rebuilt


def test_stats_files_are_named_by_the_release_date_of_the_lock():
    lock = load_lock(LOCK)
    stats = sorted(p for p in lock.artifacts if "/stats/" in p)
    assert stats == [f"datasets_v2/{d}/stats/{RELEASE_DATE}_summary.json" for d in sorted(DATASETS)]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", RELEASE_DATE)


def test_metadata_names_a_lock_source_and_a_release_date_field_is_required_for_it():
    from reconciler.pins import lock_facts
    lock = load_lock(LOCK)
    for m in MODELS:
        a = lock.artifacts[f"models_v2/{m}/metadata.json"]
        assert a.build.params["source"] in lock.sources
        facts = lock_facts(lock, a, {a.build.params["source"]: "c" * 40})
        assert facts["release_date"] == RELEASE_DATE and facts["source"]["commit"] == "c" * 40


def test_storage_readme_has_the_version_history_the_v1_differences_and_a_faq():
    text = (ROOT / "storage" / "README.md").read_text()
    for section in ("## Version history", "## Differences from the v1 scripts", "## FAQ"):
        assert section in text
    assert f"| 2.0.0 | {RELEASE_DATE} |" in text and "How do I add a model?" in text


# Sizes from ../shared/FORMATS.md: the 7B_1T_4 params.json and Sheared-LLaMA-2.7B's config.json.
BIG = {"models_v2/meta-llama-mtp/safetensors/model.safetensors":
       ("mtp", {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000, "multiple_of": 256,
                "ffn_dim_multiplier": 1.0, "norm_eps": 1e-05, "rope_theta": 10000.0, "n_future_tokens": 4}),
       "models_v2/ref-sheared-llama-2.7b/safetensors/model.safetensors":
       ("llama", {"hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 32, "num_attention_heads": 20,
                  "num_key_value_heads": 20, "vocab_size": 32000, "rms_norm_eps": 1e-05})}


@pytest.mark.parametrize("path", sorted(BIG))
def test_the_big_models_declare_a_loads_check_that_admits_their_size(path):
    from reconciler.models.checkpoint_layout import n_params
    from reconciler.models.nets import expected_shapes
    lock = load_lock(LOCK)
    loads = [c.params for c in lock.artifacts[path].checks if c.name == "loads"]
    arch, config = BIG[path]
    assert loads and loads[0]["arch"] == arch
    n = n_params(expected_shapes(arch, config))
    # 2,701,560,320 = the index total_size 10,806,249,472 B / 4, less 32 x 64 inv_freq buffers
    assert n in (6_738_415_616, 2_701_560_320) and loads[0]["max_params"] >= n  # refused below, run above
