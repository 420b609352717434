"""Reading a user's TOML file: one function, one set of one-line errors naming the file."""

import tomllib
from pathlib import Path
from typing import Any

from whichmodel.core.errors import UserError


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed TOML document at ``path``; ``UserError`` naming the file and ``what`` it
    should be ("catalogue", "tasks", "presets", "config") when it is missing, a directory,
    unreadable or not valid TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: {what} path is a directory, not a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} file: {' '.join(str(exc).split())}") from None
