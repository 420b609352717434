"""Writing results so that nothing half-written is ever left behind.

A run's outputs go to a temporary sibling directory that is renamed into place only once every
file is written; on any error the temporary directory is removed and the previous outputs (if
any) stay as they were. The swap is atomic where Linux's renameat2(RENAME_EXCHANGE) is
available; elsewhere a crash between its two renames is undone by the next call.

A directory that a command replaces whole holds the marker ``.whichmodel-output``; a non-empty
directory without it (a user's own files) is refused unless ``--force`` (``check_replaceable``).
"""

import contextlib
import contextvars
import ctypes
import datetime
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
from pyarrow import fs as pafs

from whichmodel.core.errors import UserError

MARKER = ".whichmodel-output"  # in every directory a whichmodel command owns and may replace

_FORCE: contextvars.ContextVar[bool] = contextvars.ContextVar("whichmodel_force", default=False)
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "whichmodel_command", default=None
)


@contextlib.contextmanager
def replacing(command: str, force: bool = False) -> Iterator[None]:
    """Within the block, directories replaced by ``atomic_directory`` record ``command`` in their
    marker, and ``force`` lets them replace a non-empty directory that has no marker."""
    tokens = _COMMAND.set(command), _FORCE.set(force)
    try:
        yield
    finally:
        _COMMAND.reset(tokens[0])
        _FORCE.reset(tokens[1])


def forced() -> bool:
    """Whether ``--force`` is in effect (``replacing(..., force=True)``)."""
    return _FORCE.get()


def check_replaceable(target: str | Path, force: bool = False) -> None:
    """Raise ``UserError`` when ``target`` holds something that is not a previous whichmodel
    output (a file, or a non-empty directory without the ``.whichmodel-output`` marker), unless
    ``force`` (or ``replacing(..., force=True)`` around the call). Call it before any work."""
    target = Path(target)
    _recover(target)
    if force or _FORCE.get() or not os.path.lexists(target):
        return
    if not target.is_dir() or target.is_symlink():
        raise UserError(f"{target}: exists and is not a directory; pass --force to replace it")
    if (target / MARKER).is_file() or not any(target.iterdir()):
        return
    raise UserError(
        f"{target}: not empty and not a previous whichmodel output (no {MARKER}); "
        "pass --force to replace it, or choose another directory"
    )


def current_command() -> str | None:
    """The command set by ``replacing`` (``whichmodel search``, ...), if one is running."""
    return _COMMAND.get()


def write_marker(directory: Path) -> None:
    """Write the marker (the command and a UTC timestamp, JSON) into ``directory``."""
    command = _COMMAND.get() or " ".join(["whichmodel", *sys.argv[1:2]])
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (directory / MARKER).write_text(json.dumps({"command": command, "written": stamp}) + "\n")


def current_umask() -> int:
    """The process's umask (read from /proc where Linux has it, so no thread sees it changed)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_created(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode an ordinary ``open``/``mkdir`` would (0666/0777 less the umask):
    ``mkstemp`` and ``mkdtemp`` make 0600/0700, which a file renamed into place would keep."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# renameat2(2) flag: exchange the two paths atomically (Linux >= 3.15, glibc >= 2.28)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2() if sys.platform.startswith("linux") else None


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` (both existing) in one atomic step; False where the
    system cannot (no renameat2, or a filesystem without RENAME_EXCHANGE)."""
    if _RENAMEAT2 is None:
        return False
    src, dst = os.fsencode(a), os.fsencode(b)
    if _RENAMEAT2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _recover(target: Path) -> None:
    """A replacement that died between its two renames left ``target`` missing and the old copy
    aside (``.NAME.old-*/NAME``): put the newest such copy back. Once ``target`` is present,
    leftover aside folders are removed."""
    if not target.parent.is_dir():
        return
    holders = list(target.parent.glob(f".{target.name}.old-*"))
    if not os.path.lexists(target):
        copies = [h / target.name for h in holders if os.path.lexists(h / target.name)]
        if not copies:
            return
        os.rename(max(copies, key=lambda p: p.lstat().st_mtime_ns), target)
    for holder in holders:
        shutil.rmtree(holder, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_directory(new: Path, target: Path) -> None:
    """Put the directory ``new`` at ``target`` (same filesystem) so that ``target`` is never
    missing: an atomic exchange, then the old copy is deleted. Where the system cannot exchange,
    the old copy is renamed aside first; a crash between the two renames is undone by the next
    call on ``target`` (``_recover``)."""
    _recover(target)
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if exchange(new, target):
        _remove(new)  # ``new`` now names the old copy
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)  # put the old copy back at once
        raise
    finally:
        if os.path.lexists(target):
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds.

    ``target`` must be absent, empty or a previous whichmodel output (``check_replaceable``;
    ``force`` replaces anything); the new directory gets the ``.whichmodel-output`` marker. On
    error the temporary directory is removed and ``target`` stays as it was; at no point is
    ``target`` missing once it existed (``replace_directory``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(target, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        as_created(tmp, directory=True)
        yield tmp
        write_marker(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):  # named by the target's path
            name = getattr(exc, "filename", None)
            inside = name is not None and Path(name).is_relative_to(tmp)
            where = target / Path(name).relative_to(tmp) if inside else target
            raise NoSpaceError(where, getattr(exc, "needed", None)) from None
        raise
    try:
        replace_directory(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when the replacement failed


class NoSpaceError(OSError):
    """A write that ran out of disk space (ENOSPC, errno 28), naming the file being written,
    the space it needed where known and what was free; nothing half-written is left."""

    def __init__(self, path: str | Path, needed: int | None = None) -> None:
        self.needed, self.free = needed, _free_bytes(Path(path))
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def __str__(self) -> str:
        known = [f"about {_size(self.needed)} needed"] if self.needed else []
        known += [f"{_size(self.free)} free there"] if self.free is not None else []
        extra = f" ({', '.join(known)})" if known else ""
        return f"no space left on device writing {self.filename}{extra}"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _free_bytes(path: Path) -> int | None:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ENOSPC: an ``OSError`` with errno
    28 (Python, pyarrow) or a message saying so (polars' ComputeError, a Ray task's error)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc) or "[errno 28]" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def no_space_names(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block (any writer's way of saying it) into ``NoSpaceError``
    naming ``path``."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise NoSpaceError(path, needed) from None
        raise


def atomic_file(path: str | Path, write: Callable[[str], None]) -> Path:
    """Create ``path`` by ``write(tmp)`` on a temporary file in its folder, renamed into place
    only when ``write`` succeeds (the temporary file is removed either way). A full disk is a
    ``NoSpaceError`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with no_space_names(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(tmp)
            as_created(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def disk_full_message(exc: BaseException) -> str:
    """The one line a full disk is reported with (``is_disk_full(exc)`` holds)."""
    if isinstance(exc, NoSpaceError):
        return str(exc)
    name = getattr(exc, "filename", None)
    if name:
        return str(NoSpaceError(name))
    return f"no space left on device: {' '.join(str(exc).split())[:300]}"


def atomic_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_table(df: pl.DataFrame, directory: Path, name: str, csv: bool = True) -> None:
    """Write ``name``.parquet (and ``name``.csv) into ``directory`` (a full disk: a
    ``NoSpaceError`` naming the file and the table's in-memory size)."""
    with no_space_names(directory / f"{name}.parquet", df.estimated_size()):
        df.write_parquet(directory / f"{name}.parquet")
    if csv:
        with no_space_names(directory / f"{name}.csv", df.estimated_size()):
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
        # the staging copy started from everything the target held: nothing of it is lost
        with atomic_directory(remote, force=True) as tmp:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
        return
    marker = f"{remote.rstrip('/')}/{SUCCESS_MARKER}"
    if fs.get_file_info(marker).type == pafs.FileType.File:
        fs.delete_file(marker)
    pafs.copy_files(str(local), remote, destination_filesystem=fs, use_threads=True)
    with fs.open_output_stream(marker) as f:
        f.write(b"")
