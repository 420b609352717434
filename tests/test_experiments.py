"""Resuming a Ray Tune experiment that an interruption left (issue 21: the flaky interrupt test).

A SIGTERM that reaches ``tuner.fit()`` after Tune installed its stop handler but before its loop
created the first trial makes Tune save an experiment state with no trial in it. Tune cannot
restore that state (``TuneController._restore_trials`` reads ``trials[0]``); it logs the failure
and starts the experiment again, but without its search space (``tuner.pkl`` does not keep it):
one trial with an empty config, so the probe trial failed without its ``pair`` and the command
run after the interruption ended with exit 2 before its fine-tune. Real Tune experiments on the
session's real Ray here, stopped as the engine stops them (Tune's own SIGUSR1)."""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray.cloudpickle
from ray import tune

from whichmodel.cluster.experiments import resumable

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import it


def _trainable(config):
    tune.report({"square": config["a"] ** 2})


class _StopAtSetup(tune.Callback):
    """Sends Tune its stop signal before the loop creates any trial (the SIGTERM's window)."""

    def setup(self, **info):
        os.kill(os.getpid(), signal.SIGUSR1)


class _StopAfterFirst(tune.Callback):
    """Sends Tune its stop signal once the first trial finished."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        os.kill(os.getpid(), signal.SIGUSR1)


def _tuner(path, callbacks=()):
    return tune.Tuner(
        _trainable,
        param_space={"a": tune.grid_search([1, 2, 3])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(
            name=path.name, storage_path=str(path.parent), callbacks=list(callbacks), verbose=0
        ),
    )


def _restore(path, trainable=_trainable):
    """``Tuner.restore``, without the stopping callback the run config kept (as the engine's
    ``trials.fit`` sets this run's callbacks)."""
    tuner = tune.Tuner.restore(str(path), trainable=trainable)
    tuner._local_tuner._run_config.callbacks = []
    return tuner


def _squares(results) -> list:
    return sorted(r.metrics["square"] for r in results if r.metrics and "square" in r.metrics)


@pytest.fixture
def usr1(monkeypatch):
    """Tune replaces SIGUSR1's handler (and SIGINT's, unless told not to): put them back."""
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def test_an_experiment_stopped_before_its_first_trial_starts_again(ray_session, tmp_path, usr1):
    path = tmp_path / "exp"
    assert len(_tuner(path, [_StopAtSetup()]).fit()) == 0
    (state,) = path.glob("experiment_state-*.json")
    assert json.loads(state.read_text())["trial_data"] == []  # what the SIGTERM left
    assert tune.Tuner.can_restore(str(path))  # restored as it is (on a copy here), Tune fails
    shutil.copytree(path, tmp_path / "copy")  # to read it and starts again without the grid
    (broken,) = _restore(tmp_path / "copy").fit()  # one trial, no config: a probe trial's "pair"
    assert broken.error is not None and "a" not in (broken.config or {})
    assert not resumable(path)
    assert not path.exists()  # nothing to resume: cleared, so the next run starts it again
    assert _squares(_tuner(path).fit()) == [1, 4, 9]


def test_an_experiment_stopped_after_a_trial_resumes_it(ray_session, tmp_path, usr1):
    path = tmp_path / "exp"
    first = _squares(_tuner(path, [_StopAfterFirst()]).fit())
    assert first and first != [1, 4, 9]
    assert resumable(path)
    assert _squares(_restore(path).fit()) == [1, 4, 9]


def test_a_half_written_newest_state_falls_back_to_the_previous_one(ray_session, tmp_path, usr1):
    """Tune writes its state in place (no temporary name): a kill during that write leaves a
    truncated file; the newest readable state with trials is resumed instead."""
    path = tmp_path / "exp"
    assert _squares(_tuner(path, [_StopAfterFirst()]).fit()) != [1, 4, 9]
    (state,) = path.glob("experiment_state-*.json")
    newer = state.with_name("experiment_state-9999-12-31_23-59-59.json")
    newer.write_text(state.read_text()[: state.stat().st_size // 2])
    assert resumable(path)
    assert not newer.exists() and state.exists()
    assert _squares(_restore(path).fit()) == [1, 4, 9]


def test_a_folder_without_any_state_is_not_resumable(tmp_path):
    path = tmp_path / "exp"
    assert not resumable(path)
    path.mkdir()
    (path / "tuner.pkl").write_bytes(b"")  # Tune's first file; killed before its state
    assert not resumable(path) and not path.exists()


def _counting(config):
    """Three steps, a checkpoint after each holding the step; pauses after the first step of a
    fresh start (so that the experiment is stopped there)."""
    start, checkpoint = 0, tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = json.loads((Path(d) / "step.json").read_text())
    for step in range(start + 1, 4):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "step.json").write_text(json.dumps(step))
            metrics = {"step": step, "resumed_from": start}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if not checkpoint and step == 1:
            time.sleep(120)


class _StopAtCheckpoint(tune.Callback):
    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        os.kill(os.getpid(), signal.SIGUSR1)


def test_a_checkpoint_deleted_after_the_state_was_saved_resumes_from_the_newest(
    ray_session, tmp_path, usr1
):
    """CI (test_finetune_kill): the driver was SIGKILLed after Tune had registered a trial's
    second checkpoint and deleted its first (``num_to_keep=1``) but before it saved its state,
    which still named the first; every restore of the trial then failed "Could not recover from
    checkpoint as it does not exist on storage anymore". Reproduced here on a real experiment:
    stopped at its first checkpoint, then the disk made as that kill leaves it."""
    path = tmp_path / "exp"
    tune.Tuner(
        _counting,
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(tmp_path),
            callbacks=[_StopAtCheckpoint()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    ).fit()
    (first,) = path.glob("*/checkpoint_000000")  # what the saved state names
    (first / "step.json").write_text("2")  # the trial went on to step 2 ...
    first.rename(first.with_name("checkpoint_000001"))  # ... and Tune deleted the first one
    broken = tmp_path / "copy"
    shutil.copytree(path, broken)
    (failed,) = _restore(broken, _counting).fit()  # Tune alone: the trial fails
    assert failed.error is not None and "does not exist on storage" in str(failed.error)
    assert resumable(path)
    (result,) = _restore(path, _counting).fit()
    assert result.error is None
    assert result.metrics["step"] == 3 and result.metrics["resumed_from"] == 2
