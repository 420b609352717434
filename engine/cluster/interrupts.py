"""Stopping a command on Ctrl-C or SIGTERM: within seconds, one line, nothing left running.

``handled()`` (the CLI's ``main``) installs handlers for SIGINT and SIGTERM. The first signal:

- outside a Ray Tune experiment, raises ``Interrupted`` (a ``KeyboardInterrupt``) in the main
  thread, so the stage stops where it is (a Ray Data pipeline, a ``ray.get``, ``ray.init``);
- inside one (``tune_fit``), asks Tune to stop as its own Ctrl-C does: unfinished trials stay
  unfinished in the experiment state (a rerun resumes them), then ``Interrupted`` is raised
  when ``fit`` returns, before the stage reads the incomplete results.

``finish`` then closes what the stage left open while Ray is still up (Ray Data's generators),
prints one line and exits, leaving a small reaper to end every process this command started
(captured at the signal, and again then: the local Ray it started — GCS, raylet, workers,
agents — are its descendants) within two seconds,
``interrupted after N of M <units>; run the same command again to resume`` (the stage's
``progress``, else its name). Exit code 130 (SIGINT) or 143 (SIGTERM). A watchdog does the same
at once if that takes longer than ``GRACE_S``; a second signal exits immediately
(``os._exit``, default handlers restored). A signal that lands inside a finaliser (a weakref
callback, a ``__del__``, which Python runs wherever an object dies) raises ``Interrupted``
where Python swallows it and prints a traceback: ``sys.unraisablehook`` drops it silently and
delivers it again to the main thread once the finaliser has returned. Finished work is
already on disk: the embedding store's chunks and partitions, the Tune experiments' state.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 7.0  # the first signal ends the command within this (plus a kill's few ms)


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


@dataclass
class _State:
    active: bool = False
    signum: int | None = None
    in_tune: int = 0
    stage: str = ""
    unit: str = ""
    done: int | None = None
    total: int | None = None
    tree: list = field(default_factory=list)  # psutil.Process of this command's processes
    printed: bool = False
    swallowed: bool = False  # Python swallowed the Interrupted raised in a finaliser
    ours: int = 0  # SIGINTs this module sent itself to deliver the swallowed one again
    finishing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_state = _State()


def progress(stage: str, done: int | None = None, total: int | None = None, unit: str = "") -> None:
    """Where the running stage stands, for the interruption's line (``done`` of ``total``
    ``unit``; the stage name alone where they are unknown)."""
    _state.stage, _state.done, _state.total, _state.unit = stage, done, total, unit


def advance(n: int = 1) -> None:
    """``n`` more units of the running stage done."""
    if _state.done is not None:
        _state.done += n


def requested() -> int | None:
    """The signal that asked the command to stop, if one did."""
    return _state.signum


def check() -> None:
    """Raise ``Interrupted`` if a signal asked the command to stop."""
    if _state.signum is not None:
        _state.swallowed = False  # the stop is on its way: no need to deliver it again
        raise Interrupted(_state.signum)


def message() -> str:
    """The one line printed when the command stops."""
    s = _state
    if s.done is not None and s.total is not None:
        where = f"{s.done:,} of {s.total:,} {s.unit or s.stage}".rstrip()
        if s.unit and s.stage:
            where += f" ({s.stage})"
    else:
        where = s.stage or "the start"
    return f"whichmodel: interrupted after {where}; run the same command again to resume"


def install() -> None:
    """(Re)install the handlers: ``ray.init`` replaces the SIGTERM handler with its own."""
    if _state.active and threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the command as this module says; the caller
    catches ``Interrupted`` and calls ``finish`` after its ``except`` block (so that the
    interrupted frames, and the generators they hold, are gone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    unraisablehook = sys.unraisablehook
    # Tune's own Ctrl-C handler would swallow the signal; ours asks Tune to stop (tune_fit)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    _state.active = True
    install()
    sys.unraisablehook = _swallowed_by(unraisablehook)
    try:
        yield
    finally:
        _state.active = False
        if _state.signum is None:
            for s, h in before.items():
                signal.signal(s, h)
            sys.unraisablehook = unraisablehook


def _handler(signum: int, frame: Any) -> None:
    if _state.ours and _state.signum is not None:  # ours: the swallowed first signal, again
        _state.ours -= 1
        if _state.swallowed and not _state.finishing:
            _state.swallowed = False
            _stop(_state.signum)
        return
    if _state.signum is not None:  # a second signal: stop now
        _restore_defaults()
        _print_once()
        _reap_after_exit(_state.tree, hard=True)
        os._exit(128 + _state.signum)
    _state.signum = signum
    _state.tree = _descendants()
    threading.Thread(target=_watchdog, name="whichmodel-interrupt", daemon=True).start()
    _stop(signum)


def _stop(signum: int) -> None:
    """Stop the running stage: ask Tune's experiment loop to stop, or raise ``Interrupted``."""
    if _state.in_tune and _tune_listening():
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own "stop the experiment" signal
        return
    raise Interrupted(signum)


def _swallowed_by(previous: Any) -> Any:
    """A ``sys.unraisablehook`` that, for the ``Interrupted`` our handler raised inside a
    finaliser (Python ignores exceptions there and prints them), prints nothing and delivers
    the signal to the main thread again, after the finaliser; anything else goes to
    ``previous``."""

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted) and _state.signum is not None:
            _state.swallowed = True
            threading.Thread(target=_redeliver, name="whichmodel-redeliver", daemon=True).start()
            return
        previous(unraisable)

    return hook


def _redeliver() -> None:
    """SIGINT to the main thread (waking a blocking call there), which ``_handler`` takes as
    the first signal again; the watchdog remains if our handler is no longer installed."""
    threading.Event().wait(0.05)  # the finaliser (and the hook) have returned by then
    if _state.swallowed and not _state.finishing and signal.getsignal(signal.SIGINT) is _handler:
        _state.ours += 1
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def _before_tune(signum: int, frame: Any) -> None:
    """SIGUSR1 before Tune's loop installs its handler: nothing to do."""


def _tune_listening() -> bool:
    """Whether Tune's experiment loop is running (its SIGUSR1 handler is installed)."""
    handler = signal.getsignal(signal.SIGUSR1)
    return "signal_interrupt_tune_run" in getattr(handler, "__qualname__", "")


def tune_fit(tuner: Any, stage: str, unit: str, key: str) -> Any:
    """``tuner.fit()``, stopped as Tune stops on Ctrl-C when a signal arrives (unfinished trials
    resume on a rerun); then ``Interrupted``, with the trials that reported ``key`` as the
    stage's progress, before the caller reads the incomplete results."""
    progress(stage)
    check()
    if threading.current_thread() is threading.main_thread():
        # an earlier experiment's handler would look like this one's loop running
        signal.signal(signal.SIGUSR1, _before_tune)
    _state.in_tune += 1
    try:
        results = tuner.fit()
    finally:
        _state.in_tune -= 1
    if _state.signum is not None and len(results):
        done = sum(1 for r in results if key in (r.metrics or {}))
        progress(stage, done, len(results), unit)
    check()
    return results


def finish(signum: int) -> NoReturn:
    """Close what the interrupted stage left (while Ray is up), print the line, end every
    process this command started (the local Ray it started: GCS, raylet, workers, agents) and
    end this process with the exit code.

    Not ``ray.shutdown()``: a Ray Data thread still running (a prefetcher, the streaming
    executor) that touches Ray after it makes Ray's core worker end the process with exit code 1
    (measured); ending the processes, then this one with ``os._exit`` (no finaliser runs after
    Ray is gone, so none can start a new local Ray), leaves nothing behind. A cluster the
    command joined sees its driver gone and frees the driver's actors and objects."""
    _state.finishing = True  # a swallowed signal is not delivered again from here on
    gc.collect()  # Ray Data's iterators close now, with Ray still there
    _print_once()
    _no_new_ray()
    with contextlib.suppress(Exception):
        logging.shutdown()
        sys.stderr.flush()
    _reap_after_exit(_state.tree + _descendants(), hard=False)
    os._exit(128 + signum)


_REAPER = """
import os, signal, sys, time
pids = [int(p) for p in sys.argv[2:]]
def alive(p):
    try:
        os.kill(p, 0)
        return True
    except OSError:
        return False
if sys.argv[1] == "soft":
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    end = time.monotonic() + 1.5
    while time.monotonic() < end and any(alive(p) for p in pids):
        time.sleep(0.05)
for p in pids:
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
"""


def _reap_after_exit(procs: list, hard: bool) -> None:
    """End ``procs`` from a small process of their own, started now, so that this process can
    exit first: killing the local Ray under a live driver makes Ray's core worker end the
    driver with exit code 1 (measured), not the interruption's code."""
    pids = sorted({p.pid for p in procs})
    if not pids:
        return
    import subprocess

    with contextlib.suppress(Exception):
        subprocess.Popen(
            [sys.executable, "-c", _REAPER, "hard" if hard else "soft", *map(str, pids)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _no_new_ray() -> None:
    """Nothing in this process may start a new local Ray any more (Ray's auto-init)."""
    if "ray" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False


def _descendants() -> list:
    """This process's descendants (none before Ray was imported: nothing else starts any)."""
    if "ray" not in sys.modules:
        return []
    try:
        import psutil  # Ray puts its bundled psutil on sys.path

        return psutil.Process().children(recursive=True)
    except Exception:
        return []


def _print_once() -> None:
    with _state.lock:
        if _state.printed:
            return
        _state.printed = True
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os.write(2, (message() + "\n").encode())


def _watchdog() -> None:
    """End the command if the orderly stop takes longer than ``GRACE_S``."""
    threading.Event().wait(GRACE_S)
    _print_once()
    _reap_after_exit(_state.tree + _descendants(), hard=True)
    os._exit(128 + (_state.signum or signal.SIGINT))


def _restore_defaults() -> None:
    for signum in SIGNALS:
        with contextlib.suppress(Exception):
            signal.signal(signum, signal.SIG_DFL)
