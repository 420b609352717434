"""Run directories a command writes into (``search --out``, ``benchmark``/``demo --out``,
``finetune --out``, ``analyze --out``): checked before any work, owned, and written by one
command at a time.

- ``check_writable``: a path a command will write can be written — it is not below a file, not
  a file itself, and its nearest existing folder is writable (a read-only filesystem is named).
- ``check_run_directory``: the same, and the ``.whichmodel-output`` rule on the whole folder: a
  non-empty folder that holds neither the marker nor a whichmodel output folder (an earlier
  version marked only those) is a user's folder, refused unless ``--force``; and a folder
  another command is writing is refused at once, naming it.
- ``owned_run_directory``: create the folder, mark it, and hold ``.whichmodel-lock``
  (``fcntl.flock``) while the block runs. The kernel drops the lock when its process dies, so a
  killed run never blocks the next one; the file only says who held it last. A folder the
  block replaces whole (``analyze --out``, ``replaced=True``) gets its lock file removed at the
  end; a command that opened a lock file its holder has removed takes the one there now.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from pyarrow import fs as pafs

from whichmodel.core.errors import UserError
from whichmodel.core.outputs import MARKER, current_command, forced, write_marker

LOCK = ".whichmodel-lock"


def check_writable(path: str | Path, what: str) -> None:
    """``UserError`` (one line naming ``path``) when a command could not create or write the
    folder ``path``: a file at it or above it, or no write access to its nearest existing
    folder (a read-only filesystem, or permissions). Writes nothing."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if probe == path and not path.is_dir():
        raise UserError(f"{what} {path}: exists and is not a directory")
    if not probe.is_dir():
        raise UserError(f"{what} {path}: cannot be created below {probe}, which is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "read-only filesystem" if _read_only(probe) else "no write permission"
        where = "" if probe == path else f" in {probe}"
        raise UserError(f"{what} {path}: cannot write{where} ({why})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _owned(names: list[str], has_marker) -> bool:
    """Whether a folder's entries show a whichmodel run directory: the marker, or (before the
    whole run directory was marked) a direct subfolder carrying it."""
    return MARKER in names or any(has_marker(n) for n in names)


def check_run_directory(path: str | Path, what: str = "--out", force: bool = False) -> None:
    """``check_writable``, then refuse a non-empty folder that is not a whichmodel run directory
    (unless ``force`` or ``--force``) and one that another live command is writing."""
    path = Path(path).expanduser().absolute()
    check_writable(path, what)
    if not path.is_dir():
        return
    names = [p.name for p in path.iterdir()]
    if names and not (force or forced()) and not _owned(names, lambda n: _marked(path / n)):
        raise UserError(
            f"{what} {path}: not empty and not a previous whichmodel output (no {MARKER}); "
            "pass --force to write into it, or choose another directory"
        )
    if LOCK in names:
        _probe_lock(path, what)  # held by someone else: refused here, before any work


def _marked(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def check_remote_run(uri: str, what: str = "--out", force: bool = False) -> None:
    """The marker rule for a run directory at a URI (listed through pyarrow, nothing written)."""
    try:
        fs, remote = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(remote)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type != pafs.FileType.Directory:
            raise UserError(f"{what} {uri}: exists and is not a directory")
        entries = fs.get_file_info(pafs.FileSelector(remote))
        names = [e.base_name for e in entries]
        marked = {
            e.base_name
            for e in entries
            if e.type == pafs.FileType.Directory
            and fs.get_file_info(f"{e.path}/{MARKER}").type == pafs.FileType.File
        }
    except (ValueError, OSError) as exc:  # ArrowInvalid (unknown scheme) is a ValueError
        raise UserError(f"{what} {uri}: cannot list it: {' '.join(str(exc).split())}") from None
    if names and not (force or forced()) and not _owned(names, marked.__contains__):
        raise UserError(
            f"{what} {uri}: not empty and not a previous whichmodel output (no {MARKER}); "
            "pass --force to write into it, or choose another directory"
        )


@contextlib.contextmanager
def owned_run_directory(
    path: str | Path, what: str = "--out", replaced: bool = False
) -> Iterator[Path]:
    """Create ``path``, give it the marker (if it has none) and hold its lock for the block;
    ``check_run_directory`` (or ``check_replaceable``) must have passed. A second command on the
    same folder, in this process or another, gets a ``UserError`` naming the holder. A folder
    this call created is removed again when the block fails before writing anything into it
    (a marker this call wrote, too). ``replaced``: the block replaces ``path`` whole
    (``atomic_directory``, as ``analyze --out`` does), so the lock file is removed when the block
    ends and nothing of the lock is left in the folder, whether the block succeeds or fails."""
    path = Path(path).expanduser().absolute()
    top = path  # the topmost folder this call creates (None: it existed)
    while not top.parent.exists():
        top = top.parent
    created = None if path.exists() else top
    path.mkdir(parents=True, exist_ok=True)
    marked = False
    try:
        with _locked(path, what, remove=replaced):
            if not (path / MARKER).is_file():
                write_marker(path)
                marked = True
            yield path
    except BaseException:
        with contextlib.suppress(OSError):
            left = {p.name for p in path.iterdir()}
            if created is not None and left <= {MARKER, LOCK}:
                shutil.rmtree(created, ignore_errors=True)  # a refusal inside leaves nothing
            elif marked and (replaced or left <= {MARKER, LOCK}):
                (path / MARKER).unlink()  # the folder as it was (a --force'd one too)
        raise


@contextlib.contextmanager
def _locked(path: Path, what: str, remove: bool = False) -> Iterator[None]:
    """Hold ``path/.whichmodel-lock`` (non-blocking ``flock``) and record the holder in it;
    with ``remove``, delete the file (if it is still the one held) before letting it go."""
    lock = path / LOCK
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise UserError(f"{what} {path}: {holder(path)}") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # its holder removed it after we opened it: take the one there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record().encode(), 0)
        try:
            yield
        finally:
            if remove and _same_file(fd, lock):  # not a newer command's file (after a swap)
                with contextlib.suppress(OSError):
                    lock.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` now."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _probe_lock(path: Path, what: str) -> None:
    """``UserError`` naming the holder when ``path``'s lock is held now (nothing written)."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except FileNotFoundError:  # its holder removed it meanwhile
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise UserError(f"{what} {path}: {holder(path)}") from None
    finally:
        os.close(fd)


def _holder_record() -> str:
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = _command()
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "since": stamp, "command": command}
    )


def _command() -> str:
    """The holder's command: the CLI's (``whichmodel search``), else the Python program's."""
    command = current_command()
    if command:
        return command
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if program == "whichmodel":
        return " ".join(["whichmodel", *sys.argv[1:2]])
    return f"python {program}".rstrip()


def holder(path: str | Path) -> str:
    """The refusal text naming who holds ``path``'s lock (pid, host, since when, command)."""
    try:
        info = json.loads((Path(path) / LOCK).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    since = f" since {info['since']}" if info.get("since") else ""
    command = f" ({info['command']})" if info.get("command") else ""
    return (
        f"another whichmodel command is writing this run directory: {who}{since}{command}; "
        "wait for it to finish, or choose another directory"
    )
