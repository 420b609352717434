"""Compare the tables of two run directories, bit for bit, timing columns left out.

Every ``*.parquet`` under ``A/tables`` and ``B/tables`` (same names in both) is read with Polars,
the columns that hold measured times (``seconds``, ``embed_seconds``, ``probe_seconds``,
``full_probe_seconds``, ``probe_share``) are dropped, and the rest must be equal (``equals``:
values, dtypes and row order; NaN equal to NaN). Prints one line per table; exit 1 on a difference.

    .venv/bin/python benchmarks/compare_tables.py RUN_A RUN_B
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

TIMING = ("seconds", "embed_seconds", "probe_seconds", "full_probe_seconds", "probe_share")


def compare(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in (a / "tables").glob("*.parquet"))
    other = sorted(p.name for p in (b / "tables").glob("*.parquet"))
    same = names == other
    if not same:
        print(f"tables differ: {sorted(set(names) ^ set(other))}")
    for name in sorted(set(names) & set(other)):
        x, y = (pl.read_parquet(d / "tables" / name) for d in (a, b))
        x, y = (t.drop([c for c in TIMING if c in t.columns]) for t in (x, y))
        equal = x.equals(y)
        same &= equal
        print(f"{name}: {'equal' if equal else 'DIFFERENT'} ({x.height} rows, {x.width} columns)")
    return same


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
