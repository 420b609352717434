"""Tune's trials in the engine's progress display, and ``fit`` with this run's verbosity and
callbacks (also for an experiment Tune restores with the run config of the run that made it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune import Callback

from whichmodel.cluster import interrupts
from whichmodel.cluster.quiet import tune_verbose
from whichmodel.core.progress import StageProgress


class TrialProgress(Callback):
    """A Tune callback that counts finished trials into the engine's progress display; the
    trials an earlier run finished (a restored experiment) are not counted. Pickled with the
    experiment's run config, it keeps only its stage, unit and nesting (``StageProgress``'s
    ``nested``: a part of a stage that has a display of its own)."""

    def __init__(self, stage: str, total: int, unit: str = "trials", nested: bool = False) -> None:
        self.stage, self.total, self.unit, self.nested = stage, total, unit, nested
        self.display: StageProgress | None = None

    def __getstate__(self) -> dict:
        return {
            "stage": self.stage,
            "total": 0,
            "unit": self.unit,
            "nested": self.nested,
            "display": None,
        }

    def _open(self, trials: Sequence[Any]) -> StageProgress:
        if self.display is None:
            finished = sum(1 for t in trials if t.status == "TERMINATED")
            left = max(self.total - finished, 0)
            self.display = StageProgress(self.stage, left, self.unit, nested=self.nested)
        return self.display

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trials).update(1)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trials).update(1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.display is not None:
            self.display.close()


def fit(
    tuner: Any,
    progress: TrialProgress,
    callbacks: Sequence[Any] = (),
    stop: tuple[str, str, str] | None = None,
) -> Any:
    """``tuner.fit()`` with this run's verbosity and callbacks (the progress display, tracking),
    also for a restored experiment, whose run config (verbosity and callbacks of the run that
    created it) Tune reloads from its directory. ``stop``: (stage, unit, key) of
    ``interrupts.tune_fit``, which stops the fit on Ctrl-C/SIGTERM as Tune's own Ctrl-C does."""
    config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    if config is not None:
        config.verbose = tune_verbose()
        config.callbacks = [progress, *callbacks]
    try:
        return interrupts.tune_fit(tuner, *stop) if stop else tuner.fit()
    finally:
        progress.close()
