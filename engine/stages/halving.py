"""Successive halving as a strategy (beyond the paper): short fine-tunes of a ranking's top K
models, the weak ones stopped early by Ray Tune's ASHA, under a budget of fine-tune steps.

Per task: rank the pool with a strategy (default ``hybrid_linear``, from a scores table), take the
top K models, and run one Tune experiment whose **arms** are the K models × the preset's lrs × its
repetitions — each arm exactly one run of the fine-tune stage's grid (same trainable, protocol and
numbers), so a fully trained arm is comparable run for run with ``finetune --all``. Every
``grace`` steps an arm reports the validation accuracy of its current weights; ``ASHAScheduler``
(time_attr = ``step``, metric = ``val_acc``, mode max, reduction factor ``eta``, grace period
``grace``, max_t = the preset's steps, one bracket) stops an arm reaching a rung g·etaᵏ below the
(1 − 1/eta) quantile of the arms recorded there. The learning-rate schedule is the full run's
(lr × 0.1 at 1/3 and 2/3 of the preset's steps), so an arm that survives every rung is exactly the
plain fine-tune. The pick is the fully trained arm with the best final validation accuracy (ties:
better-ranked model, then lr, then repetition); its model is the strategy's answer.

**Budget.** ``total_steps`` is per task and counts full fine-tune SGD steps (``batch_size``
images each), summed over arms, each arm up to the last step it reported; the head on the frozen
model (``head_steps`` on cached embeddings) and evaluation are not steps, but are in the
device-seconds. Tune's function trainables block at each report, so an arm runs no step past a
report until the scheduler lets it go on. ``BudgetASHA`` keeps a ledger: every arm has the first
rung reserved from the start; an arm continues (by ``grace`` steps, or to the end) only if the
reserved total stays within the budget and some unstopped arm can still reach the full step count
with what is left. So the steps spent never exceed the budget, every arm gets its first rung, and
at least one arm finishes unless ASHA itself stops every arm that still could (then the pick is
the furthest-trained arm, flagged in the table). A retried arm resumes from its last report's
checkpoint, so no step is counted twice. Halving is not resumable across driver restarts: a rerun
starts over.

**Compute.** Each arm's ``seconds`` is the time its trial held its device (GPU, or a CPU core on
CPU clusters) over every attempt: model build, head, steps and rung evaluations.

``compare_at_equal_compute`` puts the pick next to the fixed-budget strategy of the same ranking
(regret by ``engine.analysis.regret``, device-seconds from the oracle table's runs) at B = the
number of
full fine-tunes of a model (lrs × reps × steps) that ``total_steps`` pays for, and at B = K
(fine-tuning all K candidates).
"""

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from actors.finetune_trial import finetune_trial
from actors.proxies import PROXIES
from engine.analysis import regret, tables
from engine.analysis.strategies import HYBRID_PREFIX, parse_strategy
from engine.cluster.connect import ensure_ray
from engine.core import schema
from engine.core.catalog import Catalogue
from engine.core.errors import UserError
from engine.core.outputs import atomic_directory, write_table
from engine.core.presets import preset_resources
from engine.core.resources import cluster_nodes, trial_resources
from engine.stages.finetune import select_pairs, trial_inputs
from engine.tasks.loader import TaskSpec

log = logging.getLogger("whichmodel")

# The comparison table (one row per task and method). methods: "halving"; "fixed_equal_steps"
# (the ranking's top B, B = total_steps // steps of one model's full fine-tune); "fixed_top_k"
# (all K candidates fully fine-tuned).
COMPARISON = {
    "task": pl.String,
    "method": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,  # models fine-tuned fully (fixed) or candidates (halving: K)
    "steps": pl.Int64,  # fine-tune steps spent (halving) or paid (fixed: B x lrs x reps x steps)
    "device_seconds": pl.Float64,  # null when the oracle table has no seconds column
    "picked_model": pl.String,
    "oracle_acc": pl.Float64,
    "picked_acc": pl.Float64,
    "abs_regret": pl.Float64,
    "rel_regret": pl.Float64,
}


@dataclass(frozen=True)
class HalvingConfig:
    """The numbers of one successive-halving run (per task)."""

    top_k: int
    total_steps: int
    rank: str = "hybrid_linear"
    eta: int = 2
    grace: int | None = None  # default: see grace_of


@dataclass(frozen=True)
class HalvingSummary:
    arms: pl.DataFrame  # schema.HALVING: one row per (task, arm)
    rankings: dict[str, list[str]]  # task → the whole pool ranked by the strategy
    cost_per_model: int  # steps of one model's full fine-tune: lrs × reps × steps


def arms_per_model(ft: dict) -> int:
    """Arms per candidate model: the preset's lrs × repetitions."""
    return len(ft["lrs"]) * int(ft["reps"])


def grace_of(cfg: HalvingConfig, ft: dict) -> int:
    """The grace period (first rung, and the report interval) in steps: ``cfg.grace``, else the
    preset's ``checkpoint_every`` when it is below the steps, else steps // eta² (three rungs)."""
    if cfg.grace is not None:
        return int(cfg.grace)
    steps, every = int(ft["steps"]), int(ft["checkpoint_every"])
    return every if 0 < every < steps else max(1, steps // max(cfg.eta, 2) ** 2)


def check_halving(cfg: HalvingConfig, pool: str, pool_size: int, ft: dict) -> None:
    """Raise UserError for values that cannot run: K, eta, grace, a budget below one rung or
    below what one arm needs to finish."""
    steps = int(ft["steps"])
    if not 1 <= cfg.top_k <= pool_size:
        raise UserError(
            f"--top-k {cfg.top_k} is not in 1..{pool_size} (pool {pool} has {pool_size} models)"
        )
    if not (isinstance(cfg.eta, int) and cfg.eta >= 2):
        raise UserError(f"--eta {cfg.eta!r}: the reduction factor must be an integer >= 2")
    grace = grace_of(cfg, ft)
    if not 1 <= grace <= steps:
        raise UserError(f"--grace {grace} is not in 1..{steps} (the preset's fine-tune steps)")
    arms = cfg.top_k * arms_per_model(ft)
    rung = arms * grace
    if cfg.total_steps < rung:
        raise UserError(
            f"--total-steps {cfg.total_steps} cannot pay for one rung: {arms} arms ({cfg.top_k} "
            f"models x {len(ft['lrs'])} lrs x {ft['reps']} reps) x {grace} steps = {rung}"
        )
    if cfg.total_steps < rung + steps - grace:
        raise UserError(
            f"--total-steps {cfg.total_steps} cannot run one arm to the full {steps} steps after "
            f"the first rung of all {arms} arms: it needs at least {rung + steps - grace}"
        )


def check_ranking(rank: str, scores: pl.DataFrame | None, tasks: list[str], pool: str) -> None:
    """Raise UserError for a ranking that needs a scores table without one, or whose proxy has
    no score for a task."""
    try:
        spec = parse_strategy(rank, list(PROXIES))
    except UserError:
        raise UserError(
            f"unknown ranking {rank!r}: use task_agnostic, a proxy ({', '.join(PROXIES)}) or "
            f"{HYBRID_PREFIX}<proxy>, with --scores"
        ) from None
    if spec.proxy is None:
        return  # select_pairs explains why the reference strategies cannot rank
    proxy = spec.proxy
    if scores is None:
        raise UserError(
            f"ranking {rank!r} needs a scores table with {proxy!r} scores (--scores, from "
            "`whichmodel probe`)"
        )
    have = scores.filter((pl.col("proxy") == proxy) & pl.col("score").is_not_null())
    if have.height:
        for task in tasks:
            if not have.filter(pl.col("task") == task).height:
                raise UserError(
                    f"scores table has no {proxy!r} score for task {task!r} (pool {pool})"
                )


# ------------------------------------------------------------------------------ the scheduler


class BudgetASHA(AsyncHyperBandScheduler):
    """ASHA (one bracket) whose arms also stop where the step budget would be overspent.

    The ledger (``reserved``: trial → the step it may reach before its next decision) starts with
    the first rung reserved for every arm, started or not, and grants one more report interval
    only while the reserved total stays within ``budget`` and some unstopped arm can still reach
    ``max_t`` with what is left (see the module docstring).
    """

    def __init__(self, *, max_t: int, grace: int, eta: int, budget: int, arms: int) -> None:
        super().__init__(
            time_attr="step",
            metric="val_acc",
            mode="max",
            max_t=max_t,
            grace_period=grace,
            reduction_factor=eta,
        )
        self.budget, self.arms, self.interval = int(budget), int(arms), int(grace)
        self.first = min(self.interval, int(max_t))
        self.reserved: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.full = False
        self.stopped_by: dict[str, str] = {}  # trial → "asha" | "budget"

    def _committed(self, reserved: dict[str, int]) -> int:
        return sum(reserved.values()) + (self.arms - len(reserved)) * self.first

    def _can_finish(self, reserved: dict[str, int]) -> bool:
        if self.full:
            return True
        left = self.budget - self._committed(reserved)
        live = [s for t, s in reserved.items() if t not in self.stopped]
        if len(reserved) < self.arms:
            live.append(self.first)
        return any(self._max_t - s <= left for s in live)

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        self.reserved.setdefault(trial.trial_id, self.first)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        tid, step = trial.trial_id, int(result.get("step", 0))
        if step >= self._max_t:
            self.reserved[tid], self.full = step, True
            self.stopped.add(tid)
            return TrialScheduler.STOP
        if action == TrialScheduler.STOP:
            self.reserved[tid] = step
            self.stopped.add(tid)
            self.stopped_by[tid] = "asha"
            return action
        grant = dict(self.reserved)
        grant[tid] = min(step + self.interval, self._max_t)
        if self._committed(grant) > self.budget or not self._can_finish(grant):
            self.reserved[tid] = step
            self.stopped.add(tid)
            self.stopped_by[tid] = "budget"
            return TrialScheduler.STOP
        self.reserved = grant
        return action


# ------------------------------------------------------------------------------------ driver


def rank_pool(
    catalogue: Catalogue, pool: str, tasks: list[str], rank: str, scores: pl.DataFrame | None
) -> dict[str, list[str]]:
    """Per task, every model of the pool ranked by ``rank``, best first."""
    size = catalogue.pool(pool).height
    pairs = select_pairs(catalogue, pool, tasks, rank, size, scores)
    return {t: [m for m, task in pairs if task == t] for t in tasks}


def _settings(ft: dict, grace: int) -> dict:
    keys = ("steps", "batch_size", "head_steps", "head_lr", "augment", "precision")
    settings = {k: ft[k] for k in keys}
    settings["head_lr"] = float(settings["head_lr"])
    settings["checkpoint_every"] = grace  # a report (and checkpoint) at every rung
    return settings


def run_halving(
    catalogue: Catalogue,
    pool: str,
    specs: list[TaskSpec],
    preset: dict,
    out: str | Path,
    cfg: HalvingConfig,
    scores: pl.DataFrame | None = None,
) -> HalvingSummary:
    """Successive halving over the top ``cfg.top_k`` models of ``cfg.rank`` for every task
    (module docstring); Tune experiments under ``OUT/tune/``."""
    ft = preset["finetune"]
    out = Path(out).resolve()
    tasks = [s.name for s in specs]
    check_halving(cfg, pool, catalogue.pool(pool).height, ft)
    check_ranking(cfg.rank, scores, tasks, pool)
    rankings = rank_pool(catalogue, pool, tasks, cfg.rank, scores)
    grace, steps = grace_of(cfg, ft), int(ft["steps"])
    settings = _settings(ft, grace)
    lrs, reps = [float(x) for x in ft["lrs"]], list(range(int(ft["reps"])))
    ensure_ray()
    resources = trial_resources(preset_resources(preset), cluster_nodes())
    frames = []
    for spec in specs:
        top = rankings[spec.name][: cfg.top_k]
        pixels, models = trial_inputs(catalogue, pool, top, [spec], preset)
        trainable = tune.with_resources(
            tune.with_parameters(
                finetune_trial,
                pixels=pixels,
                models=models,
                settings=settings,
                token=uuid.uuid4().hex,
                report_val=True,
            ),
            resources,
        )
        arms = len(top) * len(lrs) * len(reps)
        scheduler = BudgetASHA(
            max_t=steps, grace=grace, eta=cfg.eta, budget=cfg.total_steps, arms=arms
        )
        blob = json.dumps([spec.name, top, settings, lrs, reps, cfg.__dict__], default=str)
        name = f"halving-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
        shutil.rmtree(out / "tune" / name, ignore_errors=True)  # halving does not resume
        tuner = tune.Tuner(
            trainable,
            param_space={
                "pair": tune.grid_search([[m, spec.name] for m in top]),
                "lr": tune.grid_search(lrs),
                "rep": tune.grid_search(reps),
            },
            tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(out / "tune"),
                failure_config=tune.FailureConfig(max_failures=2),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=1,
            ),
        )
        results = tuner.fit()
        rows = []
        for result in results:
            if result.error:
                lines = [x for x in str(result.error).splitlines() if x.strip()]
                raise UserError(f"halving trial failed: {lines[-1] if lines else result.error}")
            m, c = result.metrics, result.config
            model = c["pair"][0]
            reached = int(m["step"])
            status = "full" if reached >= steps else scheduler.stopped_by.get(m["trial_id"], "asha")
            rows.append(
                {
                    "task": spec.name,
                    "strategy": cfg.rank,
                    "rank": top.index(model) + 1,
                    "model": model,
                    "lr": float(c["lr"]),
                    "rep": int(c["rep"]),
                    "steps": reached,
                    "status": status,
                    "val_acc": float(m["val_acc"]),
                    "test_acc": float(m["test_acc"]) if status == "full" else None,
                    "seconds": float(m["seconds_total"]),
                    "chosen": False,
                    "budget": cfg.total_steps,
                    "eta": cfg.eta,
                    "grace": grace,
                }
            )
        frames.append(_mark_pick(pl.DataFrame(rows, schema=schema.HALVING)))
        spent = sum(r["steps"] for r in rows)
        log.info("halving %s: %d of %d steps", spec.name, spent, cfg.total_steps)
    arms_table = pl.concat(frames).sort(
        "task", "rank", "lr", "rep", descending=[False, False, True, False]
    )
    return HalvingSummary(arms_table, rankings, arms_per_model(ft) * steps)


def _mark_pick(arms: pl.DataFrame) -> pl.DataFrame:
    """Mark the pick of one task: the best final val_acc among fully trained arms (ties: better
    rank, larger lr, smaller rep); without one, the furthest-trained arm, by val_acc."""
    order = arms.with_row_index("_i").sort(
        ["steps", "val_acc", "rank", "lr", "rep"], descending=[True, True, False, True, False]
    )
    best = order["_i"][0]
    return arms.with_row_index("_i").with_columns(chosen=pl.col("_i") == best).drop("_i")


def picks(arms: pl.DataFrame) -> pl.DataFrame:
    """The chosen arm of every task."""
    return arms.filter(pl.col("chosen")).sort("task")


# -------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Oracle:
    """An oracle fine-tune table (``finetune --all``): t(model, task) by the protocol, and the
    device-seconds of each pair's runs (None when the table has no ``seconds`` column)."""

    acc: pl.DataFrame  # model, task, test_acc
    seconds: pl.DataFrame | None  # model, task, seconds


def load_oracle(path: str | Path) -> Oracle:
    """Read an oracle finetune table (Parquet or CSV, per run or per pair)."""
    acc = tables.load_finetune(path)
    raw = tables.read_table(path)
    seconds = None
    if "seconds" in raw.columns:
        seconds = raw.group_by("model", "task").agg(pl.col("seconds").cast(pl.Float64).sum())
    return Oracle(acc.select("model", "task", "test_acc"), seconds)


def check_oracle(oracle: Oracle, models: list[str], tasks: list[str], source: str) -> None:
    """Raise UserError unless the oracle has a result for every (model, task)."""
    have = set(oracle.acc.select("model", "task").iter_rows())
    missing = [(m, t) for t in tasks for m in models if (m, t) not in have]
    if missing:
        m, t = missing[0]
        raise UserError(
            f"{source}: model {m!r} has no fine-tune result on task {t!r} ({len(missing)} such "
            "pair(s)); regret needs every model of the pool (run `finetune --all`)"
        )


def _comparison_row(
    task: str, method: str, strategy: str, budget: int, steps: int, seconds, model: str, acc, best
) -> dict:
    picked = acc[(model, task)]
    return {
        "task": task,
        "method": method,
        "strategy": strategy,
        "budget": budget,
        "steps": steps,
        "device_seconds": seconds,
        "picked_model": model,
        "oracle_acc": best,
        "picked_acc": picked,
        "abs_regret": float(regret.abs_regret(best, picked)),
        "rel_regret": float(regret.rel_regret(best, picked)),
    }


def _fixed_pick(chosen: list[str], task: str, acc: dict, secs: dict | None) -> tuple:
    """(best model by fine-tuned test accuracy — ties: better-ranked —, summed device-seconds
    of the picks' runs or None)."""
    top = max(chosen, key=lambda m: (acc[(m, task)], -chosen.index(m)))
    if secs is None or any((m, task) not in secs for m in chosen):
        return top, None
    return top, float(sum(secs[(m, task)] for m in chosen))


def compare_at_equal_compute(
    summary: HalvingSummary, oracle: Oracle, source: str = "oracle table"
) -> pl.DataFrame:
    """Per task: the halving pick's regret and compute, next to the same ranking's fixed-budget
    picks at B = total_steps // (one model's full fine-tune) and at B = K (schema COMPARISON).

    A fixed selection scores the best fine-tuned test accuracy of its B picks (paper §3); the
    halving pick scores its own model's t. Every pool model needs an oracle result per task.
    """
    acc = {(m, t): a for m, t, a in oracle.acc.iter_rows()}
    secs = None if oracle.seconds is None else {(m, t): s for m, t, s in oracle.seconds.iter_rows()}
    rows = []
    for pick in picks(summary.arms).iter_rows(named=True):
        task, ranking = pick["task"], summary.rankings[pick["task"]]
        check_oracle(oracle, ranking, [task], source)
        best = max(acc[(m, task)] for m in ranking)
        arms = summary.arms.filter(pl.col("task") == task)
        k = arms["model"].n_unique()
        common = (pick["strategy"],)
        steps, seconds = int(arms["steps"].sum()), float(arms["seconds"].sum())
        rows.append(
            _comparison_row(task, "halving", *common, k, steps, seconds, pick["model"], acc, best)
        )
        fixed_b = min(len(ranking), pick["budget"] // summary.cost_per_model)
        for method, b in (("fixed_equal_steps", fixed_b), ("fixed_top_k", k)):
            if b >= 1:
                model, seconds = _fixed_pick(ranking[:b], task, acc, secs)
                paid = b * summary.cost_per_model
                rows.append(
                    _comparison_row(task, method, *common, b, paid, seconds, model, acc, best)
                )
    return pl.DataFrame(rows, schema=COMPARISON)


# ------------------------------------------------------------------------------------ output


def format_halving(arms: pl.DataFrame, comparison: pl.DataFrame | None = None) -> str:
    """The terminal summary: per task the pick, steps and device-seconds, where arms stopped; the
    comparison rows when given."""
    lines = []
    for task in arms["task"].unique().sort():
        sub = arms.filter(pl.col("task") == task)
        pick = sub.filter(pl.col("chosen")).row(0, named=True)
        full = "" if pick["status"] == "full" else " (NOT fully trained: budget or ASHA cut all)"
        test = "n/a" if pick["test_acc"] is None else f"{pick['test_acc']:.3f}"
        lines.append(
            f"{task}: pick {pick['model']} (lr {pick['lr']:g}, rep {pick['rep']}) val "
            f"{pick['val_acc']:.3f} test {test}{full}; {sub['steps'].sum()} of {pick['budget']} "
            f"steps, {sub['seconds'].sum():.1f} device-s, {sub.height} arms"
        )
        stops = sub.group_by("status", "steps").len().sort("steps")
        lines.append(
            "  arms by last step: "
            + ", ".join(
                f"{r['len']} at {r['steps']} ({r['status']})" for r in stops.iter_rows(named=True)
            )
        )
        if comparison is not None:
            for r in comparison.filter(pl.col("task") == task).iter_rows(named=True):
                sec = "n/a" if r["device_seconds"] is None else f"{r['device_seconds']:.1f}"
                lines.append(
                    f"  {r['method']:<18} B={r['budget']:<3} steps {r['steps']:>6}  device-s "
                    f"{sec:>7}  pick {r['picked_model']:<16} acc {r['picked_acc']:.3f}  regret "
                    f"abs {r['abs_regret']:.3f} rel {r['rel_regret']:.3f}"
                )
    return "\n".join(lines) + "\n"


def write_halving(out: str | Path, arms: pl.DataFrame, comparison: pl.DataFrame | None) -> Path:
    """Write ``OUT/halving/`` atomically: halving.{parquet,csv}, comparison.{parquet,csv} (with
    an oracle) and summary.txt. Returns the folder."""
    target = Path(out) / "halving"
    with atomic_directory(target) as tmp:
        write_table(arms, tmp, "halving")
        if comparison is not None:
            write_table(comparison, tmp, "comparison")
        (tmp / "summary.txt").write_text(format_halving(arms, comparison))
    return target
