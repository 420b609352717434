"""The engine's own progress display for its long stages (embed, probe, progressive,
finetune, halving, the demo's expert pre-training).

On a terminal (stderr is a TTY) a live tqdm bar: stage, done/total, rate, elapsed, ETA. Elsewhere
(CI, a Ray Job's log, a pipe) one line when the stage starts, at most one line per
``LOG_EVERY_S`` while it runs, and one when it ends, in the same format. A stage with nothing to
do shows nothing (its driver line says what was reused). A ``nested`` display (a part of a stage
that has its own, such as a progressive rung's trials) is a bar that goes away when done on a
terminal, and nothing elsewhere: the enclosing stage's lines say where the run is. Units found
done before the display opened (``initial``: reused work) count in done/total but not in the
rate or the ETA.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

LOG_EVERY_S = 30.0
FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"


class StageProgress:
    """Progress of one stage over ``total`` units (``pairs``, ``trials``, ``rungs``, ...), of
    which ``initial`` were done before it opened (reused: not in the rate); ``start`` is when
    the work began (``time.monotonic()``; default now)."""

    def __init__(
        self,
        stage: str,
        total: int,
        unit: str,
        stream: TextIO | None = None,
        live: bool | None = None,
        nested: bool = False,
        initial: int = 0,
        start: float | None = None,
    ) -> None:
        self.stage, self.total, self.unit = stage, max(int(total), 0), unit
        self.initial = min(max(int(initial), 0), self.total)
        self.stream = stream or sys.stderr
        self.live = _isatty(self.stream) if live is None else live
        if nested and not self.live:
            self.total = 0  # off a terminal the enclosing stage's lines are enough
        self.done = self.initial
        self.start = time.monotonic() if start is None else start
        self.last_line = time.monotonic()
        self.bar: tqdm | None = None
        if self.total == 0:
            return
        if self.live:
            self.bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=stage,
                unit=unit.rstrip("s") or unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=not nested,
            )
            self.bar.start_t -= max(time.monotonic() - self.start, 0.0)  # tqdm's clock: time.time
        elif self.initial:
            self._line(f"{stage}: {self.total - self.initial} of {self.total} {unit} to do")
        else:
            self._line(f"{stage}: {self.total} {unit} to do")

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        if self.total == 0 or n <= 0:
            return
        self.done = min(self.done + n, self.total)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= LOG_EVERY_S and self.done < self.total:
            self._line(self.meter())
            self.last_line = now

    def meter(self) -> str:
        """The stage's state as one line (tqdm's meter: done/total, elapsed<ETA, rate)."""
        return tqdm.format_meter(
            self.done,
            self.total,
            time.monotonic() - self.start,
            prefix=self.stage,
            unit=self.unit,
            bar_format=FORMAT,
            initial=self.initial,
        )

    def close(self) -> None:
        """End the display: the bar stays on screen; elsewhere a last line."""
        if self.total == 0:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        else:
            self._line(self.meter())
        self.total = 0

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stage_progress(stage: str, total: int, unit: str) -> StageProgress:
    """The display of a stage over ``total`` ``unit`` (nothing shown when ``total`` is 0)."""
    return StageProgress(stage, total, unit)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
