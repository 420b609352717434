"""A quiet terminal: Ray's, Ray Data's and Ray Tune's own reporters off unless ``--verbose``.

By default the engine's progress display (``whichmodel.core.progress``) is the only report of
a long stage: Tune runs with ``verbose=0`` (no trial tables), Ray Data's progress bars and
progress log lines are off, worker logs do not reach the driver (``log_to_driver``), and the
records of the ``ray`` loggers (Tune's advice such as "excessive checkpoint sync" included)
go to a log file in the run directory (``ray_log_file``) instead of the terminal, where only
errors still show. ``set_verbose(True)`` (the CLI's ``-v``) brings all of them back.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.air", "ray.serve")
_state: dict[str, bool] = {"verbose": False, "set_air": False}


def set_verbose(on: bool) -> None:
    """Bring back (``True``) or silence (``False``) Ray's own reporters on the terminal."""
    _state["verbose"] = bool(on)
    if "ray" in sys.modules:
        quiet_ray()


def is_verbose() -> bool:
    return _state["verbose"]


def tune_verbose() -> int:
    """The ``verbose`` of Tune's RunConfig: 0 (no trial tables) unless verbose."""
    return 1 if is_verbose() else 0


def quiet_ray() -> None:
    """Apply the verbosity to Ray's loggers' terminal handlers, Ray Data's progress and Tune's
    output engine (its new engine prints an experiment table even at ``verbose=0``; the legacy
    one, at 0, prints nothing)."""
    if is_verbose():
        if os.environ.get("RAY_AIR_NEW_OUTPUT") == "0" and _state.get("set_air"):
            del os.environ["RAY_AIR_NEW_OUTPUT"]
    elif "RAY_AIR_NEW_OUTPUT" not in os.environ:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        _state["set_air"] = True
    level = logging.INFO if is_verbose() else logging.ERROR
    for name in RAY_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setLevel(level)
    if "ray.data" in sys.modules or "ray" in sys.modules:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = is_verbose()
        ctx.print_on_execution_start = is_verbose()


@contextmanager
def ray_log_file(path: str | Path) -> Iterator[Path]:
    """Within the block, every record of the ``ray`` loggers (INFO and up) is appended to
    ``path`` (the run directory's ``ray.log``), whatever the terminal shows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    # the loggers that do not pass their records up (ray.tune, ray.train, ... reach "ray")
    loggers = [logging.getLogger(n) for n in ("ray", "ray.data")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    quiet_ray()
    try:
        yield path
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
