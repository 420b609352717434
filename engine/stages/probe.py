"""The probe stage, driver side: a Ray Tune experiment over the store's (model, task) pairs,
each trial running every requested proxy on that pair, gathered into the scores table.

Tune's experiment directory (under ``STORE/probes/``, named by a fingerprint of the pairs, their
embeddings, the proxies and their options) makes the stage resumable: run again after an
interruption, it restores the experiment and runs only the trials that did not finish.
"""

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import ray
from ray import tune

from whichmodel.actors.probe_trial import probe_trial
from whichmodel.actors.proxies import PROXIES
from whichmodel.cluster.connect import ensure_ray
from whichmodel.cluster.demand import cluster_shape, trial_demand
from whichmodel.cluster.experiments import resumable
from whichmodel.cluster.quiet import tune_verbose
from whichmodel.cluster.tracking import tune_callbacks
from whichmodel.cluster.trials import TrialProgress, fit
from whichmodel.core import schema
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_file
from whichmodel.core.presets import preset_resources
from whichmodel.core.resources import gpu_plan, max_concurrent_trials, trial_resources
from whichmodel.stages.store import read_metadata, read_partition, stored_pairs

log = logging.getLogger("whichmodel")


@dataclass(frozen=True)
class ProbeSummary:
    scores: pl.DataFrame
    trials_run: int
    trials_reused: int
    compute_seconds: float
    wall_seconds: float
    nodes: dict[str, int] = field(default_factory=dict)  # trials run here per Ray node id


def proxy_options(preset: dict, proxies: list[str]) -> dict[str, dict]:
    """The preset's options for each proxy that has a section in it."""
    out: dict[str, dict] = {}
    for proxy in proxies:
        if proxy in preset:
            opts = dict(preset[proxy])
            if "lrs" in opts:
                opts["lrs"] = tuple(float(x) for x in opts["lrs"])
            out[proxy] = opts
    return out


def _experiment_name(pairs: dict, proxies: list[str], options: dict) -> str:
    parts = [
        f"{m}/{t}/" + ",".join(p.key for _, p in sorted(s.items())) for (m, t), s in pairs.items()
    ]
    blob = json.dumps([sorted(parts), proxies, options], sort_keys=True)
    return "probe-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_pair(parts: dict, num_classes: int) -> dict:
    return {
        "train": read_partition(parts["train"]),
        "val": read_partition(parts["val"]),
        "num_classes": num_classes,
    }


def probe(
    store: str | Path,
    proxies: list[str],
    preset: dict,
    models: list[str] | None = None,
    tasks: list[str] | None = None,
) -> ProbeSummary:
    """Run ``proxies`` on every stored (model, task) pair; resume a previous interrupted run."""
    start = time.perf_counter()
    unknown = [p for p in proxies if p not in PROXIES]
    if unknown or not proxies:
        raise UserError(
            f"unknown proxy {unknown[0]!r} (available: {', '.join(PROXIES)})"
            if unknown
            else "no proxy given"
        )
    store = Path(store).resolve()
    pairs = _pairs(store, models, tasks)
    meta = read_metadata(store)
    options = proxy_options(preset, proxies)
    name = _experiment_name(pairs, proxies, options)
    path = store / "probes" / name
    done = _finished(path)
    if done is not None:  # every trial finished in an earlier call: no Ray, no Tune
        log.info("probe: every trial reused from %s", path)
        return ProbeSummary(done, 0, len(pairs), 0.0, time.perf_counter() - start)
    trials = run_trials(
        list(pairs),
        lambda m, t: _load_pair(pairs[m, t], _num_classes(meta, t, pairs[m, t])),
        proxies,
        options,
        preset,
        path,
    )
    scores = pl.DataFrame(trials.rows, schema=schema.SCORES_DETAIL).sort("model", "task", "proxy")
    atomic_file(path / FINISHED, scores.write_parquet)
    wall = time.perf_counter() - start
    return ProbeSummary(
        scores, trials.ran, len(pairs) - trials.ran, trials.compute_seconds, wall, trials.nodes
    )


@dataclass(frozen=True)
class Trials:
    """What ``run_trials`` gathered: every trial's rows (schema ``SCORES_DETAIL``), the trials
    this call ran (not restored from an earlier call), their compute seconds and trials per
    Ray node."""

    rows: list[dict]
    ran: int
    compute_seconds: float
    nodes: dict[str, int]


def run_trials(
    pairs: list[tuple[str, str]],
    load: Callable[[str, str], dict],
    proxies: list[str],
    options: dict,
    preset: dict,
    path: Path,
    stage: str = "probe",
    nested: bool = False,
) -> Trials:
    """The probe stage's trials: ``proxies`` on every (model, task) of ``pairs``, one Tune trial
    (``probe_trial``) per pair, whose arrays (``proxy_input``'s) ``load(model, task)`` gives;
    the experiment at ``path`` is resumed if an earlier call left it. The probe stage runs the
    store's pairs this way, progressive rungs their slices (``stage`` names them; ``nested``:
    their progress is a part of the rungs' display)."""
    token = uuid.uuid4().hex
    ensure_ray()
    gpu_plan(preset_resources(preset), cluster_shape())  # a bound the cluster cannot hold: now
    refs = {f"{m}\x1f{t}": ray.put(load(m, t)) for m, t in pairs}
    # proxies registered by a decorator in this process go with the trials (installed plugins are
    # found by each worker through their entry points)
    plugins = PROXIES.registered_here(proxies)
    res, shape = preset_resources(preset), cluster_shape()
    trial = trial_resources(res, shape, "probe")
    trainable = tune.with_resources(
        tune.with_parameters(probe_trial, embeddings=refs, token=token, plugins=plugins), trial
    )
    concurrent = max_concurrent_trials(res, shape, "probe")
    tuner = _tuner(trainable, path, pairs, proxies, options, concurrent)
    with trial_demand(stage, trial, len(pairs), res):
        results = fit(
            tuner,
            TrialProgress(stage, len(pairs), "pairs", nested=nested),
            tune_callbacks(stage),
            (stage, f"{stage} trials", "rows"),
        )
    rows, compute, ran, nodes = [], 0.0, 0, {}
    for result in results:
        if result.error:
            raise UserError(f"{stage} trial failed: {_last_line(result.error)}")
        rows += json.loads(result.metrics["rows"])
        if result.metrics.get("token") == token:
            ran += 1
            compute += float(result.metrics["compute_seconds"])
            node = str(result.metrics.get("node"))
            nodes[node] = nodes.get(node, 0) + 1
    return Trials(rows, ran, compute, nodes)


FINISHED = "whichmodel-scores.parquet"  # in the experiment directory: every trial's rows


def _finished(path: Path) -> pl.DataFrame | None:
    """The scores of an experiment whose trials all finished in an earlier call (written after
    its ``fit``; the experiment's name fingerprints its pairs, embeddings and options), else
    None."""
    try:
        return pl.read_parquet(path / FINISHED)
    except (OSError, pl.exceptions.PolarsError):
        return None


def _pairs(
    store: Path, models: list[str] | None, tasks: list[str] | None
) -> dict[tuple[str, str], dict]:
    """The stored (model, task) pairs asked for, each with train and val embeddings."""
    pairs = {
        k: v
        for k, v in stored_pairs(store).items()
        if (models is None or k[0] in models) and (tasks is None or k[1] in tasks)
    }
    if not pairs:
        raise UserError(f"{store}: no embeddings in the store (run `whichmodel embed` first)")
    for (model, task), parts in pairs.items():
        missing = [s for s in ("train", "val") if s not in parts]
        if missing:
            raise UserError(f"{store}: model {model}, task {task} has no {missing[0]} embeddings")
    return pairs


def _tuner(
    trainable,
    path: Path,
    pairs: Iterable[tuple[str, str]],
    proxies: list[str],
    options: dict,
    concurrent: int | None = None,
) -> tune.Tuner:
    """The probe experiment at ``path``: restored if an earlier run left it, else new."""
    if resumable(path):  # else cleared: an interruption left nothing Tune can resume
        log.info("probe: resuming experiment %s", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={
            "pair": tune.grid_search([list(k) for k in pairs]),
            "proxies": list(proxies),
            "options": options,
        },
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            # a trial whose actor or node dies is run again (from the start: it is short)
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=tune_verbose(),
        ),
    )


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


def _num_classes(meta: dict, task: str, parts: dict) -> int:
    """The task's class count from the store metadata, else from the stored labels."""
    classes = meta["tasks"].get(task, {}).get("classes")
    if classes:
        return len(classes)
    labels = np.concatenate([read_partition(p)["label"] for p in parts.values()])
    return int(labels.max()) + 1


def write_scores(scores: pl.DataFrame, out: str | Path) -> None:
    """Write the scores table (.parquet or .csv) under a temporary name, then rename."""
    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise UserError(f"{out}: the scores table must end in .parquet or .csv")
    write = scores.write_parquet if out.suffix == ".parquet" else scores.write_csv
    atomic_file(out, write)
