"""Writing results so that nothing half-written is ever left behind.

A run's outputs go to a temporary sibling directory that is renamed into place only once every
file is written; on any error the temporary directory is removed and the previous outputs (if
any) stay as they were.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Create ``path`` by ``write(tmp)`` on a temporary file in its folder, renamed into place
    only when ``write`` succeeds (the temporary file is removed either way)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_table(df: pl.DataFrame, directory: Path, name: str, csv: bool = True) -> None:
    """Write ``name``.parquet (and ``name``.csv) into ``directory``."""
    df.write_parquet(directory / f"{name}.parquet")
    if csv:
        df.write_csv(directory / f"{name}.csv")
