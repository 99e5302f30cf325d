"""The one byte formatter: every size a user reads (plan, diff, docs, gc) is written the same way."""

from __future__ import annotations


def human_bytes(n: int | None) -> str:
    """`1.5 GB` style (decimal units, like the hub); `?` when unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # unreachable: the loop returns at TB
