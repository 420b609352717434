"""Counting the data path of an in-process command: task loads (every call of a task source in
``whichmodel.tasks.loader.SOURCES``, whoever makes it) and table reads by file name (Polars and
PyArrow readers; embedding-store files counted as one kind each). Used by tests/test_benchmark.py
and benchmarks/bench_data_path.py."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from whichmodel.tasks import loader

STORE_PARTITIONS = "(store partitions)"
SLICE_CHUNKS = "(store slice chunks)"


@dataclass
class DataPath:
    loads: Counter = field(default_factory=Counter)  # task name -> loads
    reads: Counter = field(default_factory=Counter)  # file name -> successful reads

    def tables(self) -> dict[str, int]:
        """Reads of anything but the embedding store's files."""
        return {k: v for k, v in self.reads.items() if k not in (STORE_PARTITIONS, SLICE_CHUNKS)}


def table_name(path: object) -> str:
    text = str(path)
    if "/slices/" in text:
        return SLICE_CHUNKS
    if "model=" in text:
        return STORE_PARTITIONS
    return Path(text).name


@contextlib.contextmanager
def counting() -> Iterator[DataPath]:
    """Count task loads and table reads made in this process while the block runs."""
    seen = DataPath()

    def reader(real):
        def counted(source, *args, **kwargs):
            out = real(source, *args, **kwargs)  # a failed read (no file yet) is no read
            seen.reads[table_name(source)] += 1
            return out

        return counted

    def source(real):
        def counted(spec):
            seen.loads[spec.name] += 1
            return real(spec)

        return counted

    with pytest.MonkeyPatch.context() as mp:
        for kind, real in list(loader.SOURCES.items()):
            mp.setitem(loader.SOURCES, kind, source(real))
        for attr in ("read_parquet", "scan_parquet", "read_csv"):
            mp.setattr(pl, attr, reader(getattr(pl, attr)))
        for attr in ("read_table", "ParquetFile"):
            mp.setattr(pq, attr, reader(getattr(pq, attr)))
        yield seen
