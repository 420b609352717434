"""Successive halving as a strategy (beyond the paper): short fine-tunes of a ranking's top K
models, the weak ones stopped early, under a budget of fine-tune steps.

Per task: rank the pool with a strategy (default ``hybrid_linear``, from a scores table), take the
top K models, and run one Tune experiment whose **arms** are the K models × the preset's lrs × its
repetitions — each arm exactly one run of the fine-tune stage's grid (same trainable, protocol and
numbers), so a fully trained arm is comparable run for run with ``finetune --all``. Every
``grace`` steps an arm reports the validation accuracy of its current weights. The rungs are
grace·etaᵏ below the preset's steps, then the steps. The learning-rate schedule is the full run's
(lr × 0.1 at 1/3 and 2/3 of the preset's steps), so an arm that survives every rung is exactly the
plain fine-tune. The pick is the fully trained arm with the best final validation accuracy (ties:
better-ranked model, then larger lr, then smaller repetition); its model is the strategy's answer.

**Modes** (``HalvingConfig.mode``, ``--halving-mode``):

- ``sync`` (default): synchronous successive halving. ``SyncHalving``, a Tune scheduler, PAUSEs
  every arm at its rung (Tune checkpoints it and frees its device) until *every* arm promoted to
  that rung has reported there; then it keeps the top ``max(1, n // eta)`` by validation accuracy
  (fewer if the rest of the plan would overspend: ``SyncPlan.keep``), resumes them from their
  checkpoints and stops the rest. One Tune experiment with a scheduler, rather than a driver loop
  of experiments per rung, because Tune already pauses and restores function trainables from
  their checkpoints (as its own ``HyperBandScheduler`` does); Tune's HyperBand itself is not used
  because it runs several brackets and knows no step budget. The default because its decisions
  do not depend on which arm happens to report first, and an arm always finishes; the price is
  idle devices while a rung fills up and a model rebuild at every resume.
- ``async``: Tune's ASHA (``BudgetASHA``): an arm reaching a rung continues unless it is below
  the (1 − 1/eta) quantile of the arms recorded there *so far*, so the first arms at a rung always
  continue (the early-arm bias), and the budget ledger stops later arms. No idle devices.

**Budget.** ``total_steps`` is per task and counts full fine-tune SGD steps (``batch_size``
images each), summed over arms, each arm up to the last step it reported; the head on the frozen
model (``head_steps`` on cached embeddings) and evaluation are not steps, but are in the
device-seconds. Tune's function trainables block at each report, so an arm runs no step past a
report until the scheduler lets it go on. Async: ``BudgetASHA`` keeps a ledger: every arm has the
first rung reserved from the start; an arm continues (by ``grace`` steps, or to the end) only if
the reserved total stays within the budget and some unstopped arm can still reach the full step
count with what is left (at least one arm finishes unless ASHA itself stops every arm that still
could: then the pick is the furthest-trained arm, flagged in the table). Sync: the plan is known
at every promotion (``SyncPlan.cost``), and one arm to the end always fits (``check_halving``).
A retried or resumed arm continues from its last report's checkpoint, so no step is counted
twice. Halving is not resumable across driver restarts: a rerun starts over.

**Compute.** Each arm's ``seconds`` is the time its trial held its device (GPU, or a CPU core on
CPU clusters) over every attempt: model build, head, steps and rung evaluations.

**The comparison** (``compare_at_equal_compute``) puts the halving pick next to two fixed-budget
selections of the same ranking. Every side picks its model by the **validation accuracy of its
own runs** (never test accuracy; ties as above) and is scored by the oracle's t of that model
(``whichmodel.analysis.regret``); the picked run's own test accuracy is shown too.

- ``fixed_equal_steps``: the ranking's top B models, fine-tuned by the protocol at **the same
  step budget S**: B = ceil(S / (lrs × reps × steps)), at most K, the smallest B whose runs need
  no more steps than the protocol's; each of its B × lrs × reps runs gets
  ``S // (B × lrs × reps)`` steps (at most the protocol's), the lr schedule scaled to them
  (``fixed_plan``; real runs, ``run_fixed_equal_steps``). Steps spent: runs × steps per run ≤ S.
- ``fixed_top_k``: all K candidates fine-tuned in full (the oracle table's runs; K × lrs × reps
  × steps, more than S).
"""

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from whichmodel.actors.proxies import PROXIES
from whichmodel.analysis import regret, strategies, tables
from whichmodel.analysis.strategies import HYBRID_PREFIX, parse_strategy
from whichmodel.cluster.connect import ensure_ray
from whichmodel.cluster.quiet import tune_verbose
from whichmodel.cluster.tracking import tune_callbacks
from whichmodel.cluster.trials import TrialProgress, fit
from whichmodel.core import schema
from whichmodel.core.catalog import Catalogue
from whichmodel.core.errors import UserError
from whichmodel.core.outputs import atomic_directory, write_table
from whichmodel.stages.finetune import finetune_settings, run_finetune, trial_trainable
from whichmodel.tasks.loader import TaskData, TaskSpec

log = logging.getLogger("whichmodel")

MODES = ("sync", "async")

# The comparison table (one row per task and method). methods: "halving_sync" / "halving_async";
# "fixed_equal_steps" (the ranking's top B at the same step budget, fixed_plan); "fixed_top_k"
# (all K candidates fully fine-tuned). Every side picks by its runs' validation accuracy.
COMPARISON = {
    "task": pl.String,
    "method": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,  # models fine-tuned (fixed) or candidates (halving: K)
    "steps": pl.Int64,  # fine-tune steps actually spent, summed over the side's runs
    "device_seconds": pl.Float64,  # null when the oracle table has no seconds column
    "picked_model": pl.String,
    "picked_val_acc": pl.Float64,  # the validation accuracy that decided the pick
    "run_test_acc": pl.Float64,  # the picked run's own test accuracy
    "oracle_acc": pl.Float64,
    "picked_acc": pl.Float64,  # the oracle's t of the picked model: what regret scores
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
    mode: str = "sync"  # "sync" | "async" (module docstring)


@dataclass(frozen=True)
class HalvingSummary:
    arms: pl.DataFrame  # schema.HALVING: one row per (task, arm)
    rankings: dict[str, list[str]]  # task → the whole pool ranked by the strategy
    cost_per_model: int  # steps of one model's full fine-tune: lrs × reps × steps
    mode: str = "sync"
    events: dict[str, list[tuple]] = field(default_factory=dict)  # sync: task → SyncPlan.events


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


def rungs_of(grace: int, eta: int, max_t: int) -> list[int]:
    """The rung steps: grace·etaᵏ below ``max_t``, then ``max_t``."""
    rungs, r = [], grace
    while r < max_t:
        rungs.append(r)
        r *= eta
    return [*rungs, max_t]


def fixed_plan(cfg: HalvingConfig, ft: dict) -> tuple[int, int]:
    """(B, steps per run) of ``fixed_equal_steps`` at the budget ``cfg.total_steps``: B =
    ceil(S / (lrs × reps × steps)) capped at K, each run S // (B × lrs × reps) steps capped at
    the protocol's steps (module docstring)."""
    runs, steps = arms_per_model(ft), int(ft["steps"])
    b = min(cfg.top_k, max(1, math.ceil(cfg.total_steps / (runs * steps))))
    return b, min(steps, cfg.total_steps // (b * runs))


def check_halving(cfg: HalvingConfig, pool: str, pool_size: int, ft: dict) -> None:
    """Raise UserError for values that cannot run: the mode, K, eta, grace, a budget below one
    rung or below what one arm needs to finish."""
    steps = int(ft["steps"])
    if cfg.mode not in MODES:
        raise UserError(f"--halving-mode {cfg.mode!r}: use one of {', '.join(MODES)}")
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
            f"unknown ranking {rank!r}: no strategy {rank!r}; use task_agnostic, a proxy "
            f"({', '.join(PROXIES)}) or {HYBRID_PREFIX}<proxy>, with --scores"
        ) from None
    if spec.proxy is None:
        return  # strategies.rank_models explains why the reference strategies cannot rank
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


class SyncPlan:
    """Synchronous successive halving as a ledger, without Tune (``SyncHalving`` drives it).

    Every arm trains to the first rung; when all arms promoted to a rung have reported there,
    the top ``keep`` by validation accuracy (ties: the smaller ``key``) go on to the next rung and
    the rest stop. ``events`` logs ("report", arm, step) and ("promote", rung step, kept arms,
    stopped arms) in the order they happened.
    """

    def __init__(self, *, arms: int, rungs: list[int], eta: int, budget: int) -> None:
        self.arms, self.rungs, self.eta, self.budget = int(arms), list(rungs), int(eta), budget
        self.target: dict[str, int] = {}  # arm → the step of its next decision
        self.members: list[set[str] | None] = [None] * len(self.rungs)  # rung 0: every arm
        self.seen: list[dict[str, tuple]] = [{} for _ in self.rungs]
        self.reached: dict[str, int] = {}
        self.stopped: set[str] = set()
        self.events: list[tuple] = []

    def cost(self, m: int, k: int) -> int:
        """Steps that ``m`` arms promoted from rung ``k`` spend from here on, by the plan."""
        total = 0
        while k + 1 < len(self.rungs):
            total += m * (self.rungs[k + 1] - self.rungs[k])
            m, k = max(1, m // self.eta), k + 1
        return total

    def keep(self, n: int, k: int) -> int:
        """Arms promoted from rung ``k`` with ``n`` there: n // eta (at least 1), fewer while the
        rest of the plan would exceed the budget."""
        left = self.budget - sum(self.reached.values())
        m = max(1, n // self.eta)
        while m > 1 and self.cost(m, k) > left:
            m -= 1
        return m

    def runnable(self, arm: str) -> bool:
        """Whether a paused arm has been promoted past the step where it waits."""
        return arm not in self.stopped and self.target.get(arm, 0) > self.reached.get(arm, 0)

    def report(self, arm: str, step: int, val: float, key: tuple) -> str:
        """Record a report: "continue" (between rungs), "done" (the last step), "wait" (at a
        rung that is not complete) or "decided" (this report completed its rung)."""
        self.events.append(("report", arm, step))
        self.reached[arm] = max(self.reached.get(arm, 0), step)
        target = self.target.setdefault(arm, self.rungs[0])
        if step >= self.rungs[-1]:
            return "done"
        if step < target:
            return "continue"
        k = self.rungs.index(target)
        self.seen[k][arm] = (-val, key)
        expected = self.arms if k == 0 else len(self.members[k])
        if len(self.seen[k]) < expected:
            return "wait"
        order = sorted(self.seen[k], key=self.seen[k].get)
        m = self.keep(len(order), k)
        kept, cut = order[:m], order[m:]
        self.members[k + 1] = set(kept)
        for a in kept:
            self.target[a] = self.rungs[k + 1]
        self.stopped.update(cut)
        self.events.append(("promote", self.rungs[k], tuple(kept), tuple(cut)))
        return "decided"


class SyncHalving(FIFOScheduler):
    """Tune scheduler for ``SyncPlan``: PAUSE at an incomplete rung (Tune saves the trial's last
    checkpoint and frees its resources), resume promoted trials, stop the rest."""

    def __init__(self, plan: SyncPlan, key_of) -> None:
        super().__init__()
        self.plan, self.key_of = plan, key_of  # key_of(trial config) → tie-break key
        self.trials: dict[str, Trial] = {}
        self.stopped_by: dict[str, str] = {}

    def on_trial_add(self, tune_controller, trial) -> None:
        self.trials[trial.trial_id] = trial

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        tid = trial.trial_id
        step, val = int(result.get("step", 0)), float(result.get("val_acc", 0.0))
        verdict = self.plan.report(tid, step, val, self.key_of(trial.config))
        if verdict == "done":
            return TrialScheduler.STOP
        if verdict == "continue":
            return TrialScheduler.CONTINUE
        if verdict == "wait":
            return TrialScheduler.PAUSE
        _, _, kept, cut = self.plan.events[-1]
        for other in cut:
            self.stopped_by[other] = "sync"
            t = self.trials[other]
            if other != tid and (t.status == Trial.PAUSED or t.is_saving):
                tune_controller.stop_trial(t)
        return TrialScheduler.CONTINUE if tid in kept else TrialScheduler.STOP

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and self.plan.runnable(trial.trial_id):
                return trial
        return None


# ------------------------------------------------------------------------------------ driver


def rank_pool(
    catalogue: Catalogue, pool: str, tasks: list[str], rank: str, scores: pl.DataFrame | None
) -> dict[str, list[str]]:
    """Per task, every model of the pool ranked by ``rank``, best first."""
    ranking = strategies.rank_models(catalogue.pool(pool), tasks, rank, scores, pool)
    return {t: ranking.of(t) for t in tasks}


def _scheduler(cfg: HalvingConfig, top: list[str], arms: int, steps: int, grace: int):
    """The mode's Tune scheduler for one task's arms."""
    if cfg.mode == "async":
        return BudgetASHA(max_t=steps, grace=grace, eta=cfg.eta, budget=cfg.total_steps, arms=arms)
    plan = SyncPlan(
        arms=arms, rungs=rungs_of(grace, cfg.eta, steps), eta=cfg.eta, budget=cfg.total_steps
    )
    return SyncHalving(plan, lambda c: (top.index(c["pair"][0]), -float(c["lr"]), int(c["rep"])))


def _arm_rows(
    results,
    spec: TaskSpec | TaskData,
    top: list[str],
    cfg: HalvingConfig,
    grace: int,
    steps: int,
    stopped_by: dict,
) -> list[dict]:
    """One row per arm (schema.HALVING) from the Tune results; a failed trial is an error."""
    rows, cut = [], "sync" if cfg.mode == "sync" else "asha"
    for result in results:
        if result.error:
            lines = [x for x in str(result.error).splitlines() if x.strip()]
            raise UserError(f"halving trial failed: {lines[-1] if lines else result.error}")
        m, c = result.metrics, result.config
        reached = int(m["step"])
        status = "full" if reached >= steps else stopped_by.get(m["trial_id"], cut)
        rows.append(
            {
                "task": spec.name,
                "strategy": cfg.rank,
                "rank": top.index(c["pair"][0]) + 1,
                "model": c["pair"][0],
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
    return rows


def _halving_task(catalogue, pool, spec, top, preset, out: Path, cfg: HalvingConfig):
    """One task's halving experiment: (arm rows, the sync plan's events or [])."""
    ft = preset["finetune"]
    grace, steps = grace_of(cfg, ft), int(ft["steps"])
    settings = finetune_settings(preset) | {"checkpoint_every": grace}  # a report per rung
    lrs, reps = [float(x) for x in ft["lrs"]], list(range(int(ft["reps"])))
    trainable, _ = trial_trainable(catalogue, pool, top, [spec], preset, settings, report_val=True)
    scheduler = _scheduler(cfg, top, len(top) * len(lrs) * len(reps), steps, grace)
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
            verbose=tune_verbose(),
        ),
    )
    progress = TrialProgress(f"halving {spec.name}", len(top) * len(lrs) * len(reps), "arms")
    results = fit(tuner, progress, tune_callbacks("halving"), ("halving", "arms", "step"))
    rows = _arm_rows(results, spec, top, cfg, grace, steps, scheduler.stopped_by)
    events = scheduler.plan.events if cfg.mode == "sync" else []
    return rows, events


def run_halving(
    catalogue: Catalogue,
    pool: str,
    specs: Sequence[TaskSpec | TaskData],
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
    ensure_ray()
    frames, events = [], {}
    for spec in specs:
        top = rankings[spec.name][: cfg.top_k]
        rows, events[spec.name] = _halving_task(catalogue, pool, spec, top, preset, out, cfg)
        frames.append(_mark_pick(pl.DataFrame(rows, schema=schema.HALVING)))
        spent = sum(r["steps"] for r in rows)
        log.info("halving %s (%s): %d of %d steps", spec.name, cfg.mode, spent, cfg.total_steps)
    arms_table = pl.concat(frames).sort(
        "task", "rank", "lr", "rep", descending=[False, False, True, False]
    )
    cost = arms_per_model(ft) * int(ft["steps"])
    return HalvingSummary(arms_table, rankings, cost, cfg.mode, events)


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


def run_fixed_equal_steps(
    catalogue: Catalogue,
    pool: str,
    specs: Sequence[TaskSpec | TaskData],
    preset: dict,
    out: str | Path,
    cfg: HalvingConfig,
    rankings: dict[str, list[str]],
) -> pl.DataFrame:
    """Fine-tune the ranking's top B per task at ``fixed_plan``'s steps per run (the same step
    budget as halving); the runs table (schema.FINETUNE_RUNS), Tune experiment in ``OUT/``."""
    ft = preset["finetune"]
    b, per_run = fixed_plan(cfg, ft)
    if per_run < 1:
        raise UserError(f"--total-steps {cfg.total_steps} gives fixed-B runs no step (B = {b})")
    every = int(ft["checkpoint_every"])
    short = dict(ft, steps=per_run, checkpoint_every=every if 0 < every < per_run else 0)
    pairs = [(m, s.name) for s in specs for m in rankings[s.name][:b]]
    return run_finetune(catalogue, pool, specs, dict(preset, finetune=short), out, pairs).runs


# -------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Oracle:
    """An oracle fine-tune table (``finetune --all``, one row per run): t(model, task) by the
    protocol, every run (for fixed_top_k's choice by validation accuracy) and the device-seconds
    of each pair's runs (None when the table has no ``seconds`` column)."""

    acc: pl.DataFrame  # model, task, test_acc
    runs: pl.DataFrame  # model, task, lr, rep, val_acc, test_acc
    seconds: pl.DataFrame | None  # model, task, seconds


def load_oracle(path: str | Path) -> Oracle:
    """Read an oracle finetune table (Parquet or CSV, one row per run)."""
    acc = tables.load_finetune(path)
    raw = tables.read_table(path)
    if "val_acc" not in raw.columns:
        raise UserError(
            f"{path}: the comparison picks by validation accuracy and needs one row per run "
            "(lr, rep, val_acc, test_acc), as `finetune --all` writes"
        )
    runs = raw.select("model", "task", "lr", "rep", "val_acc", "test_acc")
    seconds = None
    if "seconds" in raw.columns:
        seconds = raw.group_by("model", "task").agg(pl.col("seconds").cast(pl.Float64).sum())
    return Oracle(acc.select("model", "task", "test_acc"), runs, seconds)


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


def pick_by_val(runs: pl.DataFrame, ranking: list[str]) -> dict:
    """The run with the best validation accuracy (ties: better-ranked model, larger lr, smaller
    rep) among ``runs`` (columns model, lr, rep, val_acc, test_acc)."""
    rank = {m: i for i, m in enumerate(ranking)}
    ranked = runs.with_columns(_rank=pl.col("model").replace_strict(rank, return_dtype=pl.Int64))
    order = ranked.sort(["val_acc", "_rank", "lr", "rep"], descending=[True, False, True, False])
    return order.row(0, named=True)


def _row(
    task: str,
    method: str,
    strategy: str,
    budget: int,
    steps: int,
    seconds,
    run: dict,
    acc: dict,
    best: float,
) -> dict:
    picked = acc[(run["model"], task)]
    return {
        "task": task,
        "method": method,
        "strategy": strategy,
        "budget": budget,
        "steps": steps,
        "device_seconds": seconds,
        "picked_model": run["model"],
        "picked_val_acc": run["val_acc"],
        "run_test_acc": run["test_acc"],
        "oracle_acc": best,
        "picked_acc": picked,
        "abs_regret": float(regret.abs_regret(best, picked)),
        "rel_regret": float(regret.rel_regret(best, picked)),
    }


def _seconds(models: list[str], task: str, secs: dict | None) -> float | None:
    if secs is None or any((m, task) not in secs for m in models):
        return None
    return float(sum(secs[(m, task)] for m in models))


def compare_at_equal_compute(
    summary: HalvingSummary,
    oracle: Oracle,
    fixed_runs: pl.DataFrame | None = None,
    source: str = "oracle table",
) -> pl.DataFrame:
    """Per task: the halving pick, the same ranking's top B at the same step budget (the runs of
    ``run_fixed_equal_steps``; left out when None) and all K fine-tuned in full (the oracle's
    runs), each picked by its runs' validation accuracy and scored by the oracle's t of the
    picked model (schema COMPARISON). Every pool model needs an oracle result per task."""
    acc = {(m, t): a for m, t, a in oracle.acc.iter_rows()}
    secs = None if oracle.seconds is None else {(m, t): s for m, t, s in oracle.seconds.iter_rows()}
    rows = []
    for pick in picks(summary.arms).iter_rows(named=True):
        task, ranking = pick["task"], summary.rankings[pick["task"]]
        check_oracle(oracle, ranking, [task], source)
        best = max(acc[(m, task)] for m in ranking)
        arms = summary.arms.filter(pl.col("task") == task)
        k, common = arms["model"].n_unique(), (pick["strategy"],)
        steps, seconds = int(arms["steps"].sum()), float(arms["seconds"].sum())
        method = f"halving_{summary.mode}"
        rows.append(_row(task, method, *common, k, steps, seconds, pick, acc, best))
        if fixed_runs is not None:
            mine = fixed_runs.filter(pl.col("task") == task)
            b = mine["model"].n_unique()
            run = pick_by_val(mine, ranking)
            spent, sec = int(mine["steps"].sum()), float(mine["seconds"].sum())
            rows.append(_row(task, "fixed_equal_steps", *common, b, spent, sec, run, acc, best))
        top = ranking[:k]
        full = oracle.runs.filter((pl.col("task") == task) & pl.col("model").is_in(top))
        paid = k * summary.cost_per_model
        run = pick_by_val(full, ranking)
        sec = _seconds(top, task, secs)
        rows.append(_row(task, "fixed_top_k", *common, k, paid, sec, run, acc, best))
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
                run_test = "n/a" if r["run_test_acc"] is None else f"{r['run_test_acc']:.3f}"
                lines.append(
                    f"  {r['method']:<18} B={r['budget']:<3} steps {r['steps']:>6}  device-s "
                    f"{sec:>7}  pick {r['picked_model']:<16} (val {r['picked_val_acc']:.3f}, run "
                    f"test {run_test}) t {r['picked_acc']:.3f}  regret abs "
                    f"{r['abs_regret']:.3f} rel {r['rel_regret']:.3f}"
                )
    return "\n".join(lines) + "\n"


def write_halving(
    out: str | Path,
    arms: pl.DataFrame,
    comparison: pl.DataFrame | None,
    events: dict[str, list[tuple]] | None = None,
    fixed: pl.DataFrame | None = None,
) -> Path:
    """Write ``OUT/halving/`` atomically: halving.{parquet,csv}, comparison.{parquet,csv} (with
    an oracle), summary.txt, and with sync events ``sync_events.jsonl`` (per line: task, event,
    then the arm's trial id and step, or the rung step and the kept and stopped trial ids) and
    with ``fixed`` the runs of fixed_equal_steps (fixed.{parquet,csv}). Returns the folder."""
    target = Path(out) / "halving"
    with atomic_directory(target) as tmp:
        write_table(arms, tmp, "halving")
        if comparison is not None:
            write_table(comparison, tmp, "comparison")
        if fixed is not None:
            write_table(fixed, tmp, "fixed")
        (tmp / "summary.txt").write_text(format_halving(arms, comparison))
        if events:
            lines = [json.dumps([task, *e]) for task, log_ in events.items() for e in log_]
            (tmp / "sync_events.jsonl").write_text("".join(x + "\n" for x in lines))
    return target
