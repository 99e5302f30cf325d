"""apply reports the bytes each build writes to the reporter (the CLI draws a bar on a TTY)."""

from __future__ import annotations

import yaml

from reconciler.apply import Reporter, apply
from reconciler.lockfile import lock_from_data


def test_build_progress_sees_every_byte_written(tmp_path):
    data = {"version": 1, "storage_version": "1",
            "artifacts": {"a.json": {"build": {"transform": "write_json", "params": {"data": {"x": "y" * 5000}}}},
                          "b.json": {"build": {"transform": "copy", "inputs": {"src": "a.json"}}}}}
    lock = lock_from_data(yaml.safe_load(yaml.safe_dump(data)))
    seen: dict[str, int] = {}

    class Counting(Reporter):
        def build_progress(self, action):
            seen[action.path] = 0

            def tell(n: int) -> None:
                seen[action.path] += n
            return tell

    result = apply(lock, tmp_path / "root", reporter=Counting())
    assert result.ok
    assert seen == {p: (tmp_path / "root" / p).stat().st_size for p in ("a.json", "b.json")}
