"""How often one ``whichmodel benchmark`` run loads each task and reads each table back.

Builds the reduced study of tests/test_benchmark.py (three random-init timm models, two
test-written tasks, a tiny preset, progressive linear on two pools) in a temporary folder and
runs the benchmark twice (a first run, then a rerun that computes nothing), counting with
tests/datapath.py: every call of a task source (``whichmodel.tasks.loader.SOURCES``: one task load,
whoever makes it) and every successful Parquet/CSV read (``pl.read_parquet``, ``pl.scan_parquet``,
``pl.read_csv``, ``pq.read_table``, ``pq.ParquetFile``) by file name; the embedding store's
partitions and slice chunks are counted as one kind each (the embeddings, read by design).

    .venv/bin/python benchmarks/bench_data_path.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from datapath import counting  # noqa: E402  (tests/ on the path above)
from test_benchmark import write_world  # noqa: E402

from whichmodel import cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the study here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        run_toml = write_world(root)
        for label in ("first run", "rerun"):
            with counting() as seen, contextlib.redirect_stdout(io.StringIO()):
                rc = cli.main(["benchmark", "--config", str(run_toml)])
            if rc != 0:
                raise SystemExit(f"benchmark failed ({label}): exit {rc}")
            print(f"{label}: task loads {dict(sorted(seen.loads.items()))}")
            print(f"{label}: reads {dict(sorted(seen.reads.items()))}")


if __name__ == "__main__":
    main()
