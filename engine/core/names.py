"""Names that become paths: model and task names are used as single path components (the store's
``model=M/task=T/`` partitions, run folders, exported winners), so a name read from a user's file
must not be able to point anywhere else (``../..``, ``/etc``, ``C:``) or hide (``.name``)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from whichmodel.core.errors import UserError

# Every common filesystem limits one component to 255 bytes; leave room for prefixes such as
# ``model=`` and suffixes such as ``.tmp-<pid>``.
MAX_NAME_BYTES = 200


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not safe as one path component, or None if it is."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name.strip():
        return "must be non-empty"
    if "\x00" in name:
        return "must not contain a NUL character"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "must not contain control characters (newline, tab, ...)"
    if "/" in name or "\\" in name:
        return "must not contain '/' or '\\' (it is used as one path component)"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if name.startswith("."):
        return "must not start with '.'"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "must not be an absolute path or start with a drive letter ('C:')"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"must be at most {MAX_NAME_BYTES} bytes in UTF-8"
    return None


def check_name(kind: str, name: Any, where: str) -> str:
    """Return ``name`` if it is safe as one path component; otherwise raise ``UserError`` naming
    ``where`` (the file it came from), the ``kind`` ("model", "task") and the name."""
    problem = name_problem(name)
    if problem is not None:
        raise UserError(f"{where}: {kind} name {name!r}: {problem}")
    return name


def path_name(path: str | Path, kind: str = "task") -> str:
    """A name for the file or folder ``path``: its name (a file's without the suffix) in
    letters, digits, '_', '.', '-' (runs of anything else become '_'), checked by the rule."""
    resolved = Path(path).expanduser().resolve()
    stem = resolved.name if resolved.is_dir() else resolved.stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")[:MAX_NAME_BYTES] or kind
    return check_name(kind, name, str(path))
