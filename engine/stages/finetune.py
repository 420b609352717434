"""The fine-tune stage, driver side: a Ray Tune experiment over (model, task) × lr × repetition,
one trial per fine-tune, checkpointed and resumable, written to the finetune table.

Modes: every model of a pool (``--all``: the oracle of a benchmark study) or the B models a
strategy picks per task (``--select``: the practitioner's case, whose best model per task — by
validation accuracy — is exported as safetensors + timm config). Pixels come from the embedding
stage's decoder (Ray Data, decoded once per geometry), by object reference.
"""

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import ray
from ray import tune

from whichmodel.actors.finetune import finetuned_meta, split_pixels
from whichmodel.actors.finetune_trial import finetune_trial
from whichmodel.analysis.strategies import rank_models
from whichmodel.cluster import interrupts
from whichmodel.cluster.connect import ensure_ray
from whichmodel.cluster.demand import cluster_shape, trial_demand
from whichmodel.cluster.experiments import resumable
from whichmodel.cluster.quiet import tune_verbose
from whichmodel.cluster.tracking import tune_callbacks
from whichmodel.cluster.trials import TrialProgress, fit
from whichmodel.core import schema
from whichmodel.core.catalog import Catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_directory, atomic_file, check_replaceable
from whichmodel.core.presets import preset_resources
from whichmodel.core.resources import gpu_plan, max_concurrent_trials, trial_resources
from whichmodel.stages.embed import EmbedConfig, decoded_dataset, gather, plan_model
from whichmodel.tasks.loader import TaskData, TaskSpec, loaded

log = logging.getLogger("whichmodel")


@dataclass(frozen=True)
class FinetuneSummary:
    runs: pl.DataFrame  # one row per (model, task, lr, rep): the finetune table
    trials_run: int
    trials_reused: int
    winners: dict[str, Path]  # task → exported model folder (``select`` mode)
    # wall seconds of the stage's phases: prepare (plans, decode, ray.put), tune (the
    # experiment), collect (table and winners)
    phases: dict[str, float] = field(default_factory=dict)
    # trials finished in this call per Ray node id (the node of each trial's last attempt)
    nodes: dict[str, int] = field(default_factory=dict)


SETTINGS = (
    "steps",
    "batch_size",
    "head_steps",
    "head_lr",
    "checkpoint_every",
    "augment",
    "precision",
)


def finetune_settings(preset: dict) -> dict:
    """The fields of ``whichmodel.actors.finetune.FinetuneConfig`` a preset's ``[finetune]`` sets
    (all but
    the trial's lr and seed)."""
    ft = preset["finetune"]
    return {k: ft[k] for k in SETTINGS} | {"head_lr": float(ft["head_lr"])}


def select_pairs(
    catalogue: Catalogue,
    pool: str,
    tasks: list[str],
    strategy: str,
    budget: int,
    scores: pl.DataFrame | None,
) -> list[tuple[str, str]]:
    """The (model, task) pairs a strategy picks with ``budget`` per task, without fine-tuning
    (``whichmodel.analysis.strategies.rank_models``)."""
    meta = catalogue.pool(pool)
    if budget < 1 or budget > meta.height:
        raise UserError(f"budget {budget} is not in 1..{meta.height} (pool {pool})")
    return rank_models(meta, tasks, strategy, scores, pool).pairs(budget)


def _experiment_name(keys: list, settings: dict, lrs, reps) -> str:
    blob = json.dumps([sorted(keys), settings, list(lrs), reps], sort_keys=True, default=str)
    return "finetune-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def trial_inputs(
    catalogue: Catalogue,
    pool: str,
    wanted: list[str],
    specs: Sequence[TaskSpec | TaskData],
    preset: dict,
) -> tuple[dict[str, "ray.ObjectRef"], dict[str, dict]]:
    """What every fine-tune trial reads: each task's decoded pixels by object reference, keyed
    ``"<geometry>\x1f<task>"`` (decoded once per input geometry), and the table of ``wanted``
    models (source, mean, std, geometry). ``specs``: loaded tasks, or specs loaded here."""
    ft = preset["finetune"]
    embed_cfg = EmbedConfig(image_size=ft["image_size"] or None)
    embed_cfg = embed_cfg.with_resources(preset_resources(preset))
    sources = dict(catalogue.pool(pool).select("model", "source").iter_rows())
    plans = {m: plan_model(m, sources[m], catalogue.path.parent, embed_cfg) for m in wanted}
    data = {t.name: t for t in loaded(specs)}
    pixels = {}
    for geometry in sorted({(p.size, p.resize, p.interpolation) for p in plans.values()}):
        cols = gather(decoded_dataset(list(data.values()), geometry, embed_cfg))
        for name, task in data.items():
            rows = {k: v[cols["task"] == name] for k, v in cols.items()}
            tp = split_pixels(rows, len(task.classes), tuple(task.classes))
            pixels[f"{geometry}\x1f{name}"] = ray.put(tp)
    models = {
        m: {
            "source": p.source,
            "mean": p.mean,
            "std": p.std,
            "geometry": str((p.size, p.resize, p.interpolation)),
        }
        for m, p in plans.items()
    }
    return pixels, models


def trial_trainable(
    catalogue: Catalogue,
    pool: str,
    models: list[str],
    specs: Sequence[TaskSpec | TaskData],
    preset: dict,
    settings: dict,
    **flags: Any,
) -> tuple[Any, str]:
    """The Tune trainable of fine-tune trials (``whichmodel.actors.finetune_trial``) over
    ``models`` ×
    ``specs``, with its decoded pixels, model table, resources and a fresh run token; ``flags``
    are passed on (``save_model``, ``report_val``)."""
    pixels, table = trial_inputs(catalogue, pool, models, specs, preset)
    token = uuid.uuid4().hex
    trainable = tune.with_resources(
        tune.with_parameters(
            finetune_trial, pixels=pixels, models=table, settings=settings, token=token, **flags
        ),
        trial_resources(preset_resources(preset), cluster_shape()),
    )
    return trainable, token


def run_finetune(
    catalogue: Catalogue,
    pool: str,
    specs: Sequence[TaskSpec | TaskData],
    preset: dict,
    out: str | Path,
    pairs: list[tuple[str, str]] | None = None,
    export_winners: bool = False,
    fault: dict | None = None,
) -> FinetuneSummary:
    """Fine-tune ``pairs`` (default: every pool model on every task) by the preset's protocol.
    ``specs``: the tasks, loaded (as an app hands them on) or specs (loaded when trials run).

    With ``export_winners``, each trial keeps its fine-tuned model and, per task, the run with
    the best validation accuracy is exported to ``OUT/winners/<task>/`` (safetensors + timm
    config). ``fault`` injects one failure per trial at a step (tests and soak checks).
    """
    start = time.perf_counter()
    ft = preset["finetune"]
    out = Path(out).resolve()
    if pairs is None:
        pairs = [(m, s.name) for m in catalogue.pool(pool)["model"] for s in specs]
    if export_winners:  # refuse a user's folder before any work, not after the fine-tunes
        for name in sorted({t for _, t in pairs}):
            check_replaceable(out / "winners" / name)
    settings = finetune_settings(preset)
    name = _experiment_name([list(p) for p in pairs], settings, ft["lrs"], ft["reps"])
    path = out / "tune" / name
    done = _finished(path, out, sorted({t for _, t in pairs}) if export_winners else [])
    if done is not None:  # every trial finished in an earlier call: no Ray, no Tune
        log.info("finetune: every trial reused from %s", path)
        winners = {t: out / "winners" / t for _, t in pairs} if export_winners else {}
        return FinetuneSummary(done, 0, done.height, winners, {})
    interrupts.progress("fine-tune (decoding the images)")
    ensure_ray()
    gpu_plan(preset_resources(preset), cluster_shape())  # a bound the cluster cannot hold: now
    needed = [s for s in specs if s.name in {t for _, t in pairs}]
    wanted = sorted({m for m, _ in pairs})
    trainable, token = trial_trainable(
        catalogue, pool, wanted, needed, preset, settings, save_model=export_winners
    )
    res, shape = preset_resources(preset), cluster_shape()
    concurrent = max_concurrent_trials(res, shape)
    tuner = _tuner(trainable, path, pairs, ft, fault, concurrent)
    fitted = time.perf_counter()
    total = len(pairs) * len(ft["lrs"]) * int(ft["reps"])
    with trial_demand("finetune", trial_resources(res, shape), total, res):
        results = fit(
            tuner,
            TrialProgress("finetune", total, "trials"),
            tune_callbacks("finetune"),
            ("fine-tune", "fine-tune runs", "val_acc"),
        )
    collected = time.perf_counter()
    rows, ran, best = _collect(results, token, export_winners)
    winners = _export_winners(best, out)
    runs = pl.DataFrame(rows, schema=schema.FINETUNE_RUNS).sort("model", "task", "lr", "rep")
    nodes: dict[str, int] = {}
    for result in results:
        if result.metrics.get("token") == token:
            node = str(result.metrics.get("node"))
            nodes[node] = nodes.get(node, 0) + 1
    atomic_file(path / FINISHED, runs.write_parquet)  # after the winners: they are reused too
    phases = {
        "prepare": fitted - start,
        "tune": collected - fitted,
        "collect": time.perf_counter() - collected,
    }
    return FinetuneSummary(runs, ran, len(rows) - ran, winners, phases, nodes)


FINISHED = "whichmodel-runs.parquet"  # in the experiment directory: the finetune table


def _finished(path: Path, out: Path, winner_tasks: list[str]) -> pl.DataFrame | None:
    """The finetune table of an experiment whose trials all finished in an earlier call (and,
    when winners are exported, whose winners are in place), else None."""
    try:
        runs = pl.read_parquet(path / FINISHED)
    except (OSError, pl.exceptions.PolarsError):
        return None
    for task in winner_tasks:  # the winner in place must be a best run of this experiment
        try:
            meta = finetuned_meta(out / "winners" / task)
        except (OSError, ValueError):
            return None
        mine = runs.filter(pl.col("task") == task)
        best = mine.filter(pl.col("val_acc") == pl.col("val_acc").max())
        key = (meta.get("model"), meta.get("lr"), meta.get("rep"))
        if key not in {(m, lr, rep) for m, lr, rep in best.select("model", "lr", "rep").rows()}:
            return None
    return runs


def _tuner(
    trainable: Any,
    path: Path,
    pairs: list[tuple[str, str]],
    ft: dict,
    fault: dict | None,
    concurrent: int | None = None,
) -> tune.Tuner:
    """The experiment at ``path``: restored where an earlier run left it (finished trials are
    not rerun), else a grid over pairs × lrs × repetitions."""
    if resumable(path):  # else cleared: an interruption left nothing Tune can resume
        log.info("finetune: resuming experiment %s", path)
        return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    space = {
        "pair": tune.grid_search([list(p) for p in pairs]),
        "lr": tune.grid_search([float(x) for x in ft["lrs"]]),
        "rep": tune.grid_search(list(range(int(ft["reps"])))),
    }
    if fault:
        space["fault"] = fault
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(path.parent),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=tune_verbose(),
        ),
    )


def _collect(
    results: Any, token: str, export_winners: bool
) -> tuple[list[dict], int, dict[str, tuple[float, Path]]]:
    """The finetune table's rows, how many trials ran in this call (the rest were restored),
    and per task the best-validation run's exported model folder (with ``export_winners``)."""
    rows, ran = [], 0
    best: dict[str, tuple[float, Path]] = {}
    for result in results:
        if result.error:
            lines = [x for x in str(result.error).splitlines() if x.strip()]
            raise UserError(f"fine-tune trial failed: {lines[-1] if lines else result.error}")
        m, c = result.metrics, result.config
        model, task = c["pair"]
        ran += m.get("token") == token
        rows.append(
            {
                "model": model,
                "task": task,
                "lr": float(c["lr"]),
                "rep": int(c["rep"]),
                "val_acc": m["val_acc"],
                "test_acc": m["test_acc"],
                "head_val_acc": m["head_val_acc"],
                "steps": m["step"],
                "steps_run": m["steps_run"],
                "resumed_from": m["resumed_from"],
                "seconds": m["seconds"],
            }
        )
        better = task not in best or m["val_acc"] > best[task][0]
        if export_winners and result.checkpoint and better:
            best[task] = (m["val_acc"], Path(result.checkpoint.path) / "model")
    return rows, ran, best


def _export_winners(best: dict[str, tuple[float, Path]], out: Path) -> dict[str, Path]:
    """Copy each task's best model to ``OUT/winners/<task>/``; the old winner stays until the
    new one is in place."""
    winners = {}
    for task, (_, folder) in best.items():
        target = out / "winners" / task
        with atomic_directory(target) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
        winners[task] = target
    return winners
