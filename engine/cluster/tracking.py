"""Experiment tracking (``--track mlflow``, ``[run] track = "mlflow"``): one MLflow run per study.

The study's run holds the preset, pools, tasks, proxies and strategies as params, a few summary
metrics, and the tables, summary and report as artifacts. Each probe and fine-tune trial that
runs in this call is an MLflow run of its own, nested under the study's (``mlflow.parentRunId``),
logged by Ray Tune's MLflow integration (``ray.air.integrations.mlflow.MLflowLoggerCallback``):
its config as params and every metric it reports. Trials an earlier call finished are not
logged again. The default tracking URI is offline: ``sqlite:///<run directory>/mlflow.db``
(MLflow's plain file store is deprecated), artifacts in ``<run directory>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides the URI. mlflow is an
optional dependency: ``pip install 'whichmodel[mlflow]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whichmodel.core.errors import UserError

TRACKERS = ("mlflow",)
EXPERIMENT = "whichmodel"


@dataclass
class Study:
    """The tracked study: its MLflow client, run and where trials log to."""

    client: Any
    run_id: str
    experiment: str
    uri: str


_active: dict[str, Study | None] = {"study": None}


def check_tracker(name: str | None, where: str) -> str | None:
    """A known tracker name (or None), checked before any work; mlflow must be importable."""
    if name is None:
        return None
    if name not in TRACKERS:
        raise UserError(f"{where}: unknown tracker {name!r} (known: {', '.join(TRACKERS)})")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            f"{where} {name}: mlflow is not installed (pip install 'whichmodel[mlflow]')"
        ) from None
    return name


# The user's MLFLOW_TRACKING_URI, read before anything imports mlflow: Tune's MLflow callback
# sets that variable in this process (mlflow.set_tracking_uri) for the study it logs.
USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


def default_uri(run: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if the user set it, else a SQLite database in the run directory."""
    return USER_URI or f"sqlite:///{Path(run).resolve()}/mlflow.db"


@contextmanager
def tracked_study(
    tracker: str | None, run: Path, name: str, params: Mapping[str, Any]
) -> Iterator[Study | None]:
    """Within the block, the study's MLflow run (None without a tracker); it ends FINISHED,
    or FAILED if the block raises."""
    if tracker is None:
        yield None
        return
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its migrations' INFO lines
    uri = default_uri(run)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    # artifacts next to the database (MLflow's default is ./mlruns of the working directory)
    artifacts = (Path(run) / "mlartifacts").resolve().as_uri()
    experiment = found.experiment_id if found else client.create_experiment(EXPERIMENT, artifacts)
    created = client.create_run(experiment, run_name=name, tags={"whichmodel.study": name})
    study = Study(client, created.info.run_id, experiment, uri)
    for key, value in params.items():
        client.log_param(study.run_id, key, _text(value))
    _active["study"] = study
    status = "FAILED"
    try:
        yield study
        status = "FINISHED"
    finally:
        _active["study"] = None
        client.set_terminated(study.run_id, status)


def tune_callbacks(stage: str) -> list:
    """Tune callbacks of the tracked study for a stage's trials ([] when nothing is tracked)."""
    study = _active["study"]
    if study is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    tags = {"mlflow.parentRunId": study.run_id, "whichmodel.stage": stage}
    return [MLflowLoggerCallback(study.uri, experiment_name=EXPERIMENT, tags=tags)]


def log_metrics(study: Study | None, metrics: Mapping[str, float]) -> None:
    """Summary metrics of the study's run."""
    if study is not None:
        for key, value in metrics.items():
            study.client.log_metric(study.run_id, key, float(value))


def log_artifacts(study: Study | None, paths: list[tuple[Path, str | None]]) -> None:
    """Files and folders (``(path, artifact folder)``) as artifacts of the study's run."""
    if study is None:
        return
    for path, folder in paths:
        if Path(path).is_dir():
            study.client.log_artifacts(study.run_id, str(path), folder)
        elif Path(path).is_file():
            study.client.log_artifact(study.run_id, str(path), folder)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
