"""Answers kept for unchanged inputs: a command with nothing to compute answers from its work or
run directory without loading the engine (no torch, timm, Ray, SciPy, matplotlib).

A command that computed its answer records it (``record``) in ``DIR/.whichmodel-answer.json``
with what it was computed from: the request (its arguments, resolved), the code and the
installed libraries (``code_version``), and every input file and folder it read, each by its
state: a file by (size, mtime_ns), a folder by the sorted (path, size, mtime_ns) of every file
under it, so a file added, removed, rewritten or touched changes it. The states of the inputs
are taken before the command reads them (``Snapshot``); its outputs' states after it wrote them.

``recall`` gives the answer back only if the request, the code version, every input's state and
every output's state are all unchanged; anything else (a missing or unreadable record, a changed
output) is a miss, and the command computes as before. A file rewritten within the same
timestamp step (coarse on most filesystems: milliseconds to 2 s) to the same size would go
unseen, so no answer is kept when an input changed within 2 s before the snapshot (as git
treats "racily clean" files).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from whichmodel.core.names import path_name
from whichmodel.core.outputs import atomic_text
from whichmodel.core.presets import preset_path

RECORD = ".whichmodel-answer.json"
SEARCH_WORK_ROOT = Path("whichmodel-search")  # search's work directories: ROOT/<task>
FORMAT = 1
RACY_NS = 2_000_000_000  # inputs changed within 2 s of the snapshot: no answer kept
_PACKAGES = ("whichmodel", "whichmodel.actors", "whichmodel.pools")


def file_state(path: str | Path) -> list[int] | None:
    """[size, mtime_ns] of a file, None if it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _rows(root: Path) -> list[tuple[str, int, int]] | None:
    """(relative path, size, mtime_ns) of ``root`` (a file) or of every file under it, sorted;
    None if it is missing."""
    if root.is_file():
        return [("", *(file_state(root) or [-1, -1]))]
    if not root.is_dir():
        return None
    rows = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            path = os.path.join(folder, name)
            rows.append((os.path.relpath(path, root), *(file_state(path) or [-1, -1])))
    return sorted(rows)


def tree_state(root: str | Path) -> str | None:
    """sha256 of the sorted (relative path, size, mtime_ns) of every file under ``root``
    (a file: its own); None if it is missing."""
    return _digest(_rows(Path(root)))


def _digest(rows: list[tuple[str, int, int]] | None) -> str | None:
    return None if rows is None else hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """The state of whichmodel's own files (its packages' folders) and of the installed
    libraries (every site-packages folder on the path, whose entries change when a package is
    installed, upgraded or removed), with the Python version."""
    import importlib.util

    roots: list[str] = []
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        roots += list(spec.submodule_search_locations or []) if spec else []
    libs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    libs |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}  # .pth too
    blob = {
        "python": sys.version,
        "code": [tree_state(r) for r in sorted(roots)],
        "libraries": {p: file_state(p) for p in sorted(libs)},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


class Snapshot:
    """What one command's answer is computed from: its request, the code version and the
    states of its inputs, each taken when added (before the command reads it)."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        self.code = code_version()
        self.inputs: dict[str, Any] = {}
        self.racy = False  # an input changed too recently for its mtime to tell a rewrite

    def add(self, paths: Iterable[str | Path]) -> None:
        """Add input files or folders (a folder: every file under it)."""
        recent = time.time_ns() - RACY_NS
        for path in paths:
            key = str(Path(path).resolve())
            rows = _rows(Path(key))
            self.racy |= any(mtime > recent for _, _, mtime in rows or [])
            self.inputs.setdefault(key, _digest(rows))


def _outputs(folder: Path, outputs: Iterable[str | Path]) -> dict[str, Any]:
    return {str(p): tree_state(folder / p) for p in outputs}


def forget(folder: str | Path) -> None:
    """Remove ``folder``'s record (a command about to compute anew)."""
    Path(folder, RECORD).unlink(missing_ok=True)


def record(
    folder: str | Path, snapshot: Snapshot, outputs: Iterable[str | Path], answer: str
) -> None:
    """Keep ``answer`` in ``folder`` with the snapshot it came from and the states of
    ``outputs`` (paths relative to ``folder``, written already)."""
    folder = Path(folder)
    if snapshot.racy:  # a rewrite within the filesystem's timestamp step would go unseen
        return
    doc = {
        "format": FORMAT,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "request": snapshot.request,
        "code": snapshot.code,
        "inputs": snapshot.inputs,
        "outputs": _outputs(folder, outputs),
        "answer": answer,
    }
    atomic_text(folder / RECORD, json.dumps(doc, indent=1))


def recall_owned(folder: Path, request: dict[str, Any]) -> tuple[str, str] | None:
    """``recall`` with ``folder`` locked (``owned_run_directory``) while it is read; None
    without a record (no lock taken)."""
    if not (folder / RECORD).is_file():
        return None
    from whichmodel.core.rundirs import owned_run_directory  # pyarrow: only with a record

    with owned_run_directory(folder):
        return recall(folder, request)


def recall(folder: str | Path, request: dict[str, Any]) -> tuple[str, str] | None:
    """(answer, time it was computed) kept in ``folder`` for ``request``, if the request, the
    code version, every input and every output are unchanged since; else None."""
    folder = Path(folder)
    try:
        doc = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if doc.get("request") != json.loads(json.dumps(request)) or doc.get("code") != code_version():
        return None
    inputs, outputs = doc.get("inputs"), doc.get("outputs")
    if not isinstance(inputs, dict) or not isinstance(outputs, dict) or not outputs:
        return None
    if any(tree_state(path) != state for path, state in inputs.items()):
        return None
    if _outputs(folder, outputs) != outputs:
        return None
    return str(doc["answer"]), str(doc.get("time", ""))


# ---------------------------------------------------------------------------------- requests


def search_request(
    data: str | Path,
    catalogue: str | Path | None,
    pool: str | None,
    budget: int,
    strategy: str,
    preset: str,
    finetune: bool,
    skip_unreadable: bool,
) -> dict[str, Any]:
    """What identifies a ``search`` (the CLI's arguments and the app's, alike)."""
    return {
        "command": "search",
        "data": str(Path(data).expanduser().resolve()),
        "catalogue": None if catalogue is None else str(Path(catalogue).expanduser().resolve()),
        "demo_cache": os.environ.get("WHICHMODEL_CACHE") if catalogue is None else None,
        "pool": pool,
        "budget": budget,
        "strategy": strategy,
        "preset": preset if preset_path(preset) is None else f"{preset_path(preset)}:{preset}",
        "finetune": finetune,
        "skip_unreadable": skip_unreadable,
    }


def search_work_dir(data: str | Path, out: str | Path | None) -> Path:
    """The work directory of a search of DATA: ``out``, else ``whichmodel-search/<task>``."""
    return Path(out or SEARCH_WORK_ROOT / path_name(data)).expanduser().resolve()


def study_request(config_path: str | Path, config_text: str, run: str | Path) -> dict[str, Any]:
    """What identifies a study (``benchmark``, ``demo``): its RUN.toml and run directory."""
    return {
        "command": "study",
        "config": str(Path(config_path).resolve()),
        "text": config_text,
        "run": str(Path(run).resolve()),
    }
