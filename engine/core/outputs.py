"""Writing results so that nothing half-written is ever left behind.

A run's outputs go to a temporary sibling directory that is renamed into place only once every
file is written; on any error the temporary directory is removed and the previous outputs (if
any) stay as they were.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
from pyarrow import fs as pafs

from engine.core.errors import UserError


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


# ------------------------------------------------------------------ run directories at a URI

SUCCESS_MARKER = "_SUCCESS"  # written last into a run directory published to an object store


def is_uri(target: str | Path) -> bool:
    """Whether ``target`` names a filesystem URI (``s3://``, ``gs://``, ``file://`` ...)."""
    return isinstance(target, str) and "://" in target


def staging_dir(uri: str) -> Path:
    """The local working copy of a run directory published at ``uri``:
    ``$WHICHMODEL_CACHE/runs/<digest>`` (default ``~/.cache/whichmodel/runs/<digest>``)."""
    root = os.environ.get("WHICHMODEL_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "whichmodel"
    return base / "runs" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of ``uri``; UserError when pyarrow cannot open it."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # ArrowInvalid (unknown scheme) is a ValueError
        raise UserError(f"{uri}: not a filesystem pyarrow can open: {exc}") from None


@contextlib.contextmanager
def run_directory(target: str | Path) -> Iterator[Path]:
    """A run directory to work in. A local path: that directory (created). A URI (anything
    pyarrow's filesystems open: ``s3://``, ``gs://``, ``hdfs://``, ``file://``): a local staging
    copy (``staging_dir``) that starts from what the URI already holds (so a rerun elsewhere
    reuses it) and is published back when the block succeeds — to a local ``file://`` path by
    copy-then-rename, to an object store by uploading every file and then ``_SUCCESS``, removed
    first, so a reader knows a run directory without it is incomplete. On error nothing is
    published."""
    if not is_uri(target):
        path = Path(target).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return

    uri = str(target)
    fs, remote = _filesystem(uri)
    local = staging_dir(uri)
    local.mkdir(parents=True, exist_ok=True)
    if fs.get_file_info(remote).type == pafs.FileType.Directory:
        pafs.copy_files(remote, str(local), source_filesystem=fs, use_threads=True)
        (local / SUCCESS_MARKER).unlink(missing_ok=True)
    yield local
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_directory(remote) as tmp:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
        return
    marker = f"{remote.rstrip('/')}/{SUCCESS_MARKER}"
    if fs.get_file_info(marker).type == pafs.FileType.File:
        fs.delete_file(marker)
    pafs.copy_files(str(local), remote, destination_filesystem=fs, use_threads=True)
    with fs.open_output_stream(marker) as f:
        f.write(b"")
