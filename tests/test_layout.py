"""The state folder has one owner (`reconciler.layout`), and its formats carry versions:
a provenance record of an unknown format is refused with one line; an unknown or corrupt
stat cache is rebuilt with one warning line."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import reconciler
from reconciler import layout
from reconciler.provenance import read_provenance
from tests.fixtures.engine import SMALL_PATHS, run_cli

PACKAGE = Path(reconciler.__file__).parent


def test_no_module_but_layout_spells_a_state_name():
    """`.reconcile`, temp prefixes, `.link`, `partial`, `provenance`, `cache.sqlite`, `apply.lock`: layout only."""
    spelled = re.compile(r"""["']\.reconcile[/"'-]|/\s*["'](partial|provenance)["']|cache\.sqlite|apply\.(lock|owner)|\.link["']""")
    offenders = [f"{p.relative_to(PACKAGE)}:{n}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "layout.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if spelled.search(line)]
    assert offenders == []


def test_temp_and_link_names_round_trip(tmp_path):
    temp = layout.temp_path_for(tmp_path / "w.safetensors")
    link = layout.link_path(tmp_path / "abc")
    assert temp.parent == tmp_path and layout.is_temp_name(temp.name) and layout.is_link_name(link.name)
    assert layout.writer_pid(temp.name) == layout.writer_pid(link.name) and layout.writer_pid(temp.name) > 0
    assert layout.writer_pid("model.safetensors") is None


def test_provenance_of_an_unknown_format_is_refused_with_one_line(small_project):
    root = small_project / "storage"
    path = layout.provenance_path(root, SMALL_PATHS[0])
    rec = json.loads(path.read_text())
    assert rec["format_version"] == layout.PROVENANCE_FORMAT and read_provenance(root, SMALL_PATHS[0]) == rec
    path.write_text(json.dumps(dict(rec, format_version=99)))
    res = run_cli("plan", cwd=small_project)
    assert res.code == 1 and res.err.count("\n") <= 2, res.err
    assert "provenance record format 99 is not one this reconcile reads" in res.err and "fix:" in res.err


def test_provenance_without_a_version_is_format_1(small_project):
    root = small_project / "storage"
    path = layout.provenance_path(root, SMALL_PATHS[0])
    rec = json.loads(path.read_text())
    del rec["format_version"]
    path.write_text(json.dumps(rec))
    assert read_provenance(root, SMALL_PATHS[0])["sha256"] == rec["sha256"]


def _break_corrupt(p: Path) -> None:
    p.write_bytes(b"this is not an sqlite database" * 100)


def _break_future(p: Path) -> None:
    with sqlite3.connect(p) as db:
        db.execute("PRAGMA user_version = 99")


def test_unknown_or_corrupt_stat_cache_is_rebuilt_with_one_warning(small_project):
    cache = layout.cache_path(small_project / "storage")
    for breaks in (_break_corrupt, _break_future):
        breaks(cache)
        res = run_cli("check", cwd=small_project)
        warnings = [line for line in res.err.splitlines() if "stat cache" in line]
        assert len(warnings) == 1 and "rebuilt" in warnings[0], res.err
        assert "3 file(s) hashed" in res.out  # nothing served from the broken cache
        with sqlite3.connect(cache) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == layout.CACHE_FORMAT
        again = run_cli("check", cwd=small_project)
        assert "0 file(s) hashed" in again.out and "stat cache" not in again.err
