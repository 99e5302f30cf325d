"""Operations commands: docs, diff, gc, attest (no network: fetch artifacts are never applied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.diff import diff_locks, render_markdown
from reconciler.gc import collect
from reconciler.layout import TMP_PREFIX, provenance_path
from reconciler.lockfile import lock_from_data
from reconciler.provenance import write_provenance
from reconciler.rootlock import RootLock

REV_A, REV_B = "1" * 40, "2" * 40
SHA = "a" * 64

# A multi-level DAG: fetch -> copy -> copy of copy -> copy of that; a fetch of another source;
# and a build-only branch (write_json -> copy) that no source change touches.
DAG = {
    "version": 1, "storage_version": "1", "root": "storage",
    "sources": {
        "up": {"repo": "org/model", "type": "model", "revision": REV_A, "gated": True},
        "other": {"repo": "org/data", "type": "dataset", "revision": REV_A},
    },
    "artifacts": {
        "raw/w.bin": {"fetch": {"source": "up", "path": "w.bin"}, "sha256": SHA, "size": 3_000_000},
        "raw/t.json": {"fetch": {"source": "up", "path": "t.json"}, "size": 500},
        "raw/d.parquet": {"fetch": {"source": "other", "path": "d.parquet"}, "size": 7},
        "mid/w1.bin": {"build": {"transform": "copy", "inputs": {"src": "raw/w.bin"}}},
        "mid/w2.bin": {"build": {"transform": "copy", "inputs": {"src": "mid/w1.bin"}}},
        "top/w3.bin": {"build": {"transform": "copy", "inputs": {"src": "mid/w2.bin"}}},
        "top/t.json": {"build": {"transform": "copy", "inputs": {"src": "raw/t.json"}}},
        "d2.parquet": {"build": {"transform": "copy", "inputs": {"src": "raw/d.parquet"}}},
        "cfg/x.json": {"build": {"transform": "write_json", "params": {"data": {"a": 1}}}},
        "cfg/y.json": {"build": {"transform": "copy", "inputs": {"src": "cfg/x.json"}}},
    },
}

BUILD_ONLY = {
    "version": 1, "storage_version": "1", "root": "storage",
    "artifacts": {
        "cfg/x.json": {"build": {"transform": "write_json", "params": {"data": {"a": 1}}}},
        "cfg/y.json": {"build": {"transform": "copy", "inputs": {"src": "cfg/x.json"}}},
        "out/z.json": {"build": {"transform": "copy", "inputs": {"src": "cfg/y.json"}}},
    },
}


def _with(data: dict, **changes) -> dict:
    """A deep copy of lock data with source revisions replaced (`up=REV_B`)."""
    out = json.loads(json.dumps(data))
    for name, rev in changes.items():
        out["sources"][name]["revision"] = rev
    return out


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def built(tmp_path):
    """A build-only lock applied and pinned offline: (lock path, storage root)."""
    lock = _write(tmp_path / "storage.lock.yaml", BUILD_ONLY)
    for cmd in (["apply"], ["lock"]):
        assert _cli("--lock", str(lock), *cmd).exit_code == 0
    return lock, tmp_path / "storage"


# -- diff ------------------------------------------------------------------------------------------
def test_a_source_revision_change_cascades_to_every_downstream_artifact():
    new = _with(DAG, up=REV_B)
    new["artifacts"]["raw/w.bin"]["sha256"] = "c" * 64  # the new revision serves new bytes
    d = diff_locks(lock_from_data(DAG), lock_from_data(new))
    assert {e["path"] for e in d["changed"]} == {"raw/w.bin", "raw/t.json"}
    assert all("source.revision" in {c["field"] for c in e["changes"]} for e in d["changed"])
    chains = {e["path"]: e["chain"] for e in d["rebuilt"]}
    assert chains == {"mid/w1.bin": ["raw/w.bin", "mid/w1.bin"],
                      "mid/w2.bin": ["raw/w.bin", "mid/w1.bin", "mid/w2.bin"],
                      "top/w3.bin": ["raw/w.bin", "mid/w1.bin", "mid/w2.bin", "top/w3.bin"],
                      "top/t.json": ["raw/t.json", "top/t.json"]}
    assert d["summary"]["download_bytes"] == 3_000_500
    assert [s["name"] for s in d["sources"]] == ["up"]
    md = render_markdown(d)
    assert "because `raw/w.bin` changed" in md and "raw/w.bin -> mid/w1.bin -> mid/w2.bin -> top/w3.bin" in md
    assert "d2.parquet" not in md and "cfg/y.json" not in md


def test_a_revision_change_under_an_unchanged_pin_rebuilds_nothing_from_that_file():
    d = diff_locks(lock_from_data(DAG), lock_from_data(_with(DAG, up=REV_B)))
    rebuilt = {e["path"] for e in d["rebuilt"]}
    assert "mid/w1.bin" not in rebuilt and "top/t.json" in rebuilt  # w.bin keeps its pinned bytes


def test_pinning_an_open_value_changes_nothing_downstream():
    new = json.loads(json.dumps(DAG))
    new["artifacts"]["raw/t.json"]["sha256"] = SHA
    d = diff_locks(lock_from_data(DAG), lock_from_data(new))
    assert [(e["path"], e["content"]) for e in d["changed"]] == [("raw/t.json", False)]
    assert d["rebuilt"] == [] and d["summary"]["download_bytes"] == 0


def test_params_added_and_removed_artifacts():
    new = json.loads(json.dumps(DAG))
    new["artifacts"]["cfg/x.json"]["build"]["params"]["data"] = {"a": 2}
    del new["artifacts"]["d2.parquet"]
    new["artifacts"]["extra.json"] = {"build": {"transform": "copy", "inputs": {"src": "cfg/y.json"}}}
    d = diff_locks(lock_from_data(DAG), lock_from_data(new))
    assert d["changed"][0]["changes"][0] == {"field": "build.params.data", "old": {"a": 1}, "new": {"a": 2},
                                             "content": True}
    assert [e["path"] for e in d["removed"]] == ["d2.parquet"]
    assert [e["path"] for e in d["added"]] == ["extra.json"]
    assert [e["path"] for e in d["rebuilt"]] == ["cfg/y.json"]


def test_lock_level_and_folder_member_changes_are_reported():
    old = json.loads(json.dumps(DAG))
    old["artifacts"]["raw/shards"] = {"fetch": {"source": "other", "glob": "data/*.parquet"},
                                      "files": {"a.parquet": {"sha256": SHA, "size": 4}}}
    new = json.loads(json.dumps(old))
    new["storage_version"] = "2"
    new["artifacts"]["raw/shards"]["files"]["a.parquet"] = {"sha256": "b" * 64, "size": 5}
    d = diff_locks(lock_from_data(old), lock_from_data(new))
    assert d["lock"] == [{"field": "storage_version", "old": "1", "new": "2"}]
    (e,) = d["changed"]
    assert [c["field"] for c in e["changes"]] == ["files.a.parquet.sha256", "files.a.parquet.size"]
    assert e["content"] and e["download_bytes"] == 5
    assert "| storage_version | `1` -> `2` |" in render_markdown(d)


def _wide_change() -> tuple[dict, dict]:
    old = json.loads(json.dumps(DAG))
    for i in range(400):
        old["artifacts"][f"many/{i:04d}-{'x' * 60}.bin"] = {"build": {"transform": "copy",
                                                                    "inputs": {"src": "mid/w1.bin"}}}
    new = _with(old, up=REV_B)
    new["artifacts"]["raw/w.bin"]["sha256"] = "c" * 64  # the new revision serves new bytes
    return old, new


def test_diff_markdown_is_truncated_with_a_note_past_the_limit(tmp_path):
    old, new = _wide_change()
    a, b = _write(tmp_path / "a.yaml", old), _write(tmp_path / "b.yaml", new)
    full = _cli("diff", str(a), str(b), "--max-chars", "1000000").output
    assert "Truncated" not in full and full.count("| `many/") == 400
    r = _cli("diff", str(a), str(b), "--max-chars", "5000")
    assert r.exit_code == 0 and len(r.output) <= 5000
    rows = [ln for ln in r.output.splitlines() if ln.startswith("| ") and not ln.startswith(("| source ", "| artifact "))]
    total = 1 + 2 + 404  # one source, two changed fetches, 404 rebuilt rows
    shown = len(rows)
    assert 0 < shown < total
    assert f"**Truncated:** {total - shown} entries left out" in r.output


def test_diff_json_is_the_full_structure(tmp_path):
    old, new = _wide_change()
    a, b = _write(tmp_path / "a.yaml", old), _write(tmp_path / "b.yaml", new)
    r = _cli("diff", str(a), str(b), "--json", "--max-chars", "1000")
    d = json.loads(r.output)
    assert set(d) >= {"format_version", "summary", "sources", "added", "removed", "changed", "rebuilt"}
    assert d["summary"] == {"added": 0, "removed": 0, "changed": 2, "rebuilt": 404,
                            "download_bytes": 3_000_500, "download_unknown": 0}
    assert {"path", "because", "via", "chain"} <= set(d["rebuilt"][0])


def test_diff_refuses_an_invalid_lock_with_exit_2(tmp_path):
    a = _write(tmp_path / "a.yaml", DAG)
    bad = json.loads(json.dumps(DAG))
    bad["artifacts"]["mid/w1.bin"]["build"]["inputs"]["src"] = "nope"
    r = _cli("diff", str(a), str(_write(tmp_path / "b.yaml", bad)))
    assert r.exit_code == 2 and "no such artifact" in r.output


# -- gc --------------------------------------------------------------------------------------------
def _litter(root: Path) -> set[str]:
    """Create garbage of every kind; returns the paths gc must list."""
    (root / "models/old").mkdir(parents=True)
    (root / "models/old/w.bin").write_bytes(b"w" * 10)
    (root / "cfg/notes.txt").write_text("mine")
    (root / "stray").mkdir()
    (root / "stray/a.bin").write_bytes(b"a")
    (root / "cfg" / f"{TMP_PREFIX}y.json.999999999.abcdefabcdef").write_bytes(b"t")
    (root / ".reconcile/partial").mkdir(parents=True, exist_ok=True)
    (root / ".reconcile/partial/0123456789abcdef0123456789abcdef").write_bytes(b"p")
    write_provenance(root, "gone.bin", {"sha256": SHA})
    gone = provenance_path(root, "gone.bin").relative_to(root).as_posix()
    return {"models", "cfg/notes.txt", "stray/a.bin", f"cfg/{TMP_PREFIX}y.json.999999999.abcdefabcdef",
            ".reconcile/partial/0123456789abcdef0123456789abcdef", gone}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_gc_lists_exactly_the_unowned_files_and_deletes_nothing_without_yes(built):
    lock, root = built
    expected = _litter(root)
    before = _snapshot(root)
    r = _cli("--lock", str(lock), "gc")
    assert r.exit_code == 0, r.output
    listed = {line.split()[3] for line in r.output.splitlines() if line.startswith("  ")}
    assert listed == expected
    assert "Nothing deleted" in r.output and _snapshot(root) == before


def test_gc_yes_removes_exactly_the_garbage(built):
    lock, root = built
    expected = _litter(root)
    before = _snapshot(root)
    r = _cli("--lock", str(lock), "gc", "--yes")
    assert r.exit_code == 0, r.output
    after = _snapshot(root)
    gone = set(before) - set(after)
    assert gone == {p for p in before if p in expected or p.startswith("models/")}
    # Owned artifacts and state untouched; gc itself takes the root lock, which rewrites its owner record.
    assert all(after[p] == before[p] for p in after if p != ".reconcile/apply.owner")
    assert not (root / "models").exists() and not (root / "stray").exists()
    assert _cli("--lock", str(lock), "check").exit_code == 0


def test_gc_never_follows_a_symlink_out_of_the_root(built, tmp_path):
    lock, root = built
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.bin").write_bytes(b"k")
    (root / "datasets").symlink_to(outside)
    (root / "link.bin").symlink_to(outside / "keep.bin")
    r = _cli("--lock", str(lock), "gc", "--yes")
    assert r.exit_code == 0, r.output
    assert (outside / "keep.bin").read_bytes() == b"k"
    assert (root / "datasets").is_symlink() and (root / "link.bin").is_symlink()
    assert "refused: symlink" in r.output


def test_gc_refuses_to_delete_while_the_root_lock_is_held(built):
    lock, root = built
    expected = _litter(root)
    before = _snapshot(root)
    with RootLock(root, 0):
        r = _cli("--lock", str(lock), "gc", "--yes")
    assert r.exit_code == 1
    assert "nothing was deleted" in r.output and "another apply" in r.output
    assert set(_snapshot(root)) >= set(before)
    assert {i.path for i in collect(lock_from_data(BUILD_ONLY), root).items} == expected


# -- attest ----------------------------------------------------------------------------------------
def test_attestation_names_every_checked_artifact_with_its_sha256(built, tmp_path):
    lock, root = built
    out = tmp_path / "att.json"
    r = _cli("--lock", str(lock), "attest", str(out))
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    pins = {p: a["sha256"] for p, a in yaml.safe_load(lock.read_text())["artifacts"].items()}
    assert {a["path"]: a["sha256"] for a in rec["artifacts"]} == pins
    assert rec["ok"] is True and rec["tier"] == "fast"
    assert rec["lock"]["digest"] == lock_from_data(yaml.safe_load(lock.read_text())).digest
    assert len(rec["lock"]["sha256"]) == 64 and rec["tools"]["python"] and rec["time"].endswith("+00:00")


def test_a_failed_check_still_writes_the_attestation_and_exits_1(built, tmp_path):
    lock, root = built
    (root / "out/z.json").write_text("drift")
    out = tmp_path / "att.json"
    r = _cli("--lock", str(lock), "attest", str(out), "out", "--deep")
    assert r.exit_code == 1
    rec = json.loads(out.read_text())
    assert rec["ok"] is False and rec["tier"] == "deep"
    assert [(a["path"], a["status"]) for a in rec["artifacts"]] == [("out/z.json", "drifted")]


# -- docs ------------------------------------------------------------------------------------------
def test_docs_render_deterministically_and_check_tracks_the_lock(tmp_path):
    lock = _write(tmp_path / "storage.lock.yaml", DAG)
    readme = tmp_path / "storage/README.md"
    assert _cli("--lock", str(lock), "docs", "--check").exit_code == 1  # nothing rendered yet
    assert _cli("--lock", str(lock), "docs").exit_code == 0
    first = readme.read_bytes()
    assert _cli("--lock", str(lock), "docs").exit_code == 0
    assert readme.read_bytes() == first
    assert _cli("--lock", str(lock), "docs", "--check").exit_code == 0
    text = first.decode()
    assert f"{SHA}  raw/w.bin" in text and "https://huggingface.co/org/model" in text
    assert "HF_TOKEN" in text and "built by copy(src=mid/w1.bin)" in text
    _write(lock, _with(DAG, up=REV_B))
    r = _cli("--lock", str(lock), "docs", "--check")
    assert r.exit_code == 1 and f"+| up | [org/model](https://huggingface.co/org/model) | model | `{REV_B}`" in r.output


def test_docs_ignore_provenance_unless_asked(built):
    lock, root = built
    readme = root / "README.md"
    assert _cli("--lock", str(lock), "docs").exit_code == 0
    write_provenance(root, "cfg/y.json", {"sha256": "b" * 64, "info": {"rows_dropped": {"too_long": 3}},
                                          "built_at": "2026-01-01T00:00:00+00:00", "tools": {"x": "1"}})
    assert _cli("--lock", str(lock), "docs", "--check").exit_code == 0
    assert "too_long" not in readme.read_text()
    assert _cli("--lock", str(lock), "docs", "--with-provenance").exit_code == 0
    full = (root / ".reconcile/README.provenance.md").read_text()
    assert "- too_long: 3" in full and "other bytes than the pin" in full
    assert "2026-01-01" not in full and '"x"' not in full
