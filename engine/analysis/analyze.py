"""The analysis driver: from catalogue, finetune and scores tables to the selections, regret,
curves and zero-regret-budget tables of docs/design.md §2, for every pool. Pure Polars/NumPy."""

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from whichmodel.analysis.bootstrap import DEFAULT_BOOTSTRAP, bootstrap_tables, resampled_means
from whichmodel.analysis.curves import StrategyOutcome, pool_outcomes
from whichmodel.analysis.quality import estimator_quality
from whichmodel.analysis.strategies import PoolData, dense_scores
from whichmodel.core import schema
from whichmodel.core.catalog import Catalogue
from whichmodel.core.errors import UserError

log = logging.getLogger("whichmodel")

CATEGORY_ORDER = ("natural", "specialized", "structured")
UNKNOWN = "unknown"
DEFAULT_MAX_BUDGET = 50  # selections/regret rows per task grow as B²: cap the default budgets


@dataclass(frozen=True)
class Analysis:
    """The driver's output tables (columns as whichmodel.core.schema) and the pools they cover."""

    pools: list[PoolData]
    selections: pl.DataFrame
    regret: pl.DataFrame
    curves: pl.DataFrame
    zero_regret_budget: pl.DataFrame
    quality: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.QUALITY))
    curves_ci: pl.DataFrame = field(default_factory=lambda: schema.empty(schema.CURVES_CI))
    regret_diff_ci: pl.DataFrame = field(
        default_factory=lambda: schema.empty(schema.REGRET_DIFF_CI)
    )
    n_boot: int = 0  # paired bootstrap resamples behind the two tables above (0: none)
    # per pool and strategy, (n_boot, budgets): the resampled mean relative regrets
    boot_means: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    n_reps: dict[str, int] = field(default_factory=dict)  # per pool: repetitions resampled


def _category_key(category: str) -> tuple[int, str]:
    if category in CATEGORY_ORDER:
        return CATEGORY_ORDER.index(category), category
    return (len(CATEGORY_ORDER) + (category == UNKNOWN), category)


def task_categories(finetune: pl.DataFrame, categories: pl.DataFrame | None) -> dict[str, str]:
    """task → category: the tasks file wins over the finetune table's column; else 'unknown'."""
    cats = {t: UNKNOWN for t in finetune["task"].unique()}
    for source in (finetune if "category" in finetune.columns else None, categories):
        if source is not None:
            for task, cat in source.select("task", "category").unique().iter_rows():
                if task in cats and cat is not None:
                    cats[task] = cat
    return cats


def _check_known_models(df: pl.DataFrame, catalogue: Catalogue, what: str) -> None:
    unknown = sorted(set(df["model"].unique()) - set(catalogue.models["model"]))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UserError(
            f"{what}: model {unknown[0]!r}{more} is not in the catalogue {catalogue.path}"
        )


def build_pool(
    name: str,
    members: pl.DataFrame,
    finetune: pl.DataFrame,
    scores: pl.DataFrame | None,
    categories: dict[str, str],
) -> PoolData | None:
    """The dense view of one pool; None (with a warning) if no member has fine-tune results."""
    have = set(finetune["model"].unique())
    meta = members.filter(pl.col("model").is_in(list(have)))
    dropped = members.height - meta.height
    if meta.height == 0:
        log.warning("pool %s: no member has fine-tune results; skipped", name)
        return None
    if dropped:
        log.warning("pool %s: %d member(s) without fine-tune results left out", name, dropped)
    models = meta["model"].to_list()
    tasks = sorted(categories, key=lambda t: (_category_key(categories[t]), t))
    acc = _dense(finetune, "test_acc", models, tasks)
    gaps = np.argwhere(np.isnan(acc))
    if gaps.size:
        t, m = gaps[0]
        raise UserError(
            f"pool {name}: no fine-tune result for model {models[m]!r} on task {tasks[t]!r} "
            f"({len(gaps)} missing); regret needs every pool model on every task"
        )
    proxy_scores = {} if scores is None else dense_scores(scores, models, tasks, name)
    return PoolData(
        name=name,
        models=models,
        tasks=tasks,
        categories=[categories[t] for t in tasks],
        acc=acc,
        meta=meta,
        scores=proxy_scores,
    )


def _dense(df: pl.DataFrame, value: str, models: list[str], tasks: list[str]) -> np.ndarray:
    """(tasks × models) array of ``value``; NaN where the table has no row (or a null)."""
    out = np.full((len(tasks), len(models)), np.nan)
    m_idx = {m: i for i, m in enumerate(models)}
    t_idx = {t: i for i, t in enumerate(tasks)}
    sub = df.filter(pl.col("model").is_in(models) & pl.col("task").is_in(tasks))
    rows = np.array([t_idx[t] for t in sub["task"]], dtype=np.int64)
    cols = np.array([m_idx[m] for m in sub["model"]], dtype=np.int64)
    out[rows, cols] = sub[value].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return out


def repetition_array(pool: PoolData, repetitions: pl.DataFrame | None) -> np.ndarray | None:
    """(tasks, models, R) test accuracies per repetition (``model, task, rep, test_acc``) for the
    two-level bootstrap, or None: one repetition, or not the same R repetitions of every pool
    model on every task (then a warning; the bootstrap resamples tasks only)."""
    if repetitions is None:
        return None
    sub = repetitions.filter(pl.col("model").is_in(pool.models) & pl.col("task").is_in(pool.tasks))
    reps = sorted(sub["rep"].unique())
    if len(reps) < 2:
        return None
    if sub.height != len(pool.tasks) * pool.size * len(reps):
        log.warning(
            "pool %s: not every model has all %d fine-tune repetitions on every task; the "
            "bootstrap resamples tasks only",
            pool.name,
            len(reps),
        )
        return None
    out = np.stack([_dense(sub.filter(pl.col("rep") == r), "test_acc", pool.models, pool.tasks)
                    for r in reps], axis=2)  # fmt: skip
    return None if np.isnan(out).any() else out


def curves_table(pool: PoolData, outcomes: dict[str, StrategyOutcome]) -> pl.DataFrame:
    """Per strategy and budget: fraction of tasks with zero regret, mean relative regret."""
    budgets = np.arange(1, pool.size + 1)
    frames = [
        pl.DataFrame(
            {
                "pool": pool.name,
                "strategy": name,
                "budget": budgets,
                "frac_zero_regret": out.zero.mean(axis=0),
                "mean_rel_regret": out.rel.mean(axis=0),
            },
            schema=schema.CURVES,
        )
        for name, out in outcomes.items()
    ]
    return pl.concat(frames)


def regret_table(
    pool: PoolData, outcomes: dict[str, StrategyOutcome], budgets: Sequence[int]
) -> pl.DataFrame:
    """Per strategy, budget and task: oracle and picked accuracy, absolute and relative regret.

    For ``random`` the picked accuracy and both regrets are exact expectations.
    """
    cols = np.asarray(budgets) - 1
    n_tasks, n_b = len(pool.tasks), len(cols)
    oracle_acc = np.repeat(pool.acc.max(axis=1), n_b)
    frames = []
    for name, out in outcomes.items():
        picked = out.picked[:, cols].ravel()
        frames.append(
            pl.DataFrame(
                {
                    "pool": pool.name,
                    "strategy": name,
                    "budget": np.tile(np.asarray(budgets), n_tasks),
                    "task": np.repeat(pool.tasks, n_b),
                    "oracle_acc": oracle_acc,
                    "picked_acc": picked,
                    "abs_regret": oracle_acc - picked,
                    "rel_regret": out.rel[:, cols].ravel(),
                },
                schema=schema.REGRET,
            )
        )
    return pl.concat(frames)


def selections_table(
    pool: PoolData, outcomes: dict[str, StrategyOutcome], budgets: Sequence[int]
) -> pl.DataFrame:
    """The B picks of every ranking strategy at every budget (``random`` picks nothing fixed)."""
    ranks = np.concatenate([np.arange(1, b + 1) for b in budgets])
    budget_col = np.repeat(budgets, budgets)
    models = np.asarray(pool.models)
    frames = []
    for name, out in outcomes.items():
        if out.order is None:
            continue
        picks = out.order[:, ranks - 1]  # (tasks, sum(budgets))
        frames.append(
            pl.DataFrame(
                {
                    "pool": pool.name,
                    "strategy": name,
                    "budget": np.tile(budget_col, len(pool.tasks)),
                    "task": np.repeat(pool.tasks, ranks.size),
                    "rank": np.tile(ranks, len(pool.tasks)),
                    "model": models[picks.ravel()],
                },
                schema=schema.SELECTIONS,
            )
        )
    return pl.concat(frames) if frames else schema.empty(schema.SELECTIONS)


def zero_regret_budget_table(pool: PoolData, outcomes: dict[str, StrategyOutcome]) -> pl.DataFrame:
    """Per strategy and task, the smallest budget whose picks contain a best model."""
    return pl.concat(
        pl.DataFrame(
            {
                "pool": pool.name,
                "strategy": name,
                "task": pool.tasks,
                "category": pool.categories,
                "min_budget": out.min_budget,
            },
            schema=schema.ZERO_REGRET_BUDGET,
        )
        for name, out in outcomes.items()
    )


def check_budgets(budgets: Sequence[int], pools: Sequence[PoolData]) -> None:
    """Every budget is at least 1 and at most the size of every analysed pool."""
    for b in budgets:
        if b < 1:
            raise UserError(f"budget {b} is not allowed: a budget is at least 1")
        for pool in pools:
            if b > pool.size:
                raise UserError(f"budget {b} is larger than pool {pool.name} ({pool.size} models)")


def _pool_budgets(pool: PoolData, budgets: Sequence[int] | None) -> list[int]:
    """The budgets of ``pool``'s selections and regret tables: ``budgets`` up to its size (an
    error where none is), or by default 1 to its size, at most DEFAULT_MAX_BUDGET."""
    if budgets is None or not budgets:
        return list(range(1, min(pool.size, DEFAULT_MAX_BUDGET) + 1))
    mine = [b for b in budgets if b <= pool.size]
    if not mine:
        raise UserError(f"budgets: none is within pool {pool.name!r} ({pool.size} models)")
    check_budgets(mine, [pool])
    return mine


def analyze(
    catalogue: Catalogue,
    finetune: pl.DataFrame,
    scores: pl.DataFrame | Mapping[str, pl.DataFrame | None] | None = None,
    pool_names: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    categories: pl.DataFrame | None = None,
    log_odds: bool = False,
    clip_budgets: bool = False,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    repetitions: pl.DataFrame | None = None,
) -> Analysis:
    """Run every applicable strategy on every pool and tabulate selections, regret and curves.

    ``scores``: one scores table for every pool, or per pool name its own (a benchmark's
    progressive rankings differ by pool). ``budgets`` sets the budgets of the selections and
    regret tables (default: every budget up to the pool size, at most DEFAULT_MAX_BUDGET); the
    curves always cover every budget. A budget above a pool's size is an error, or with
    ``clip_budgets`` left out for that pool (an error where none is left). ``bootstrap``:
    resamples of the paired bootstrap over tasks behind ``curves_ci`` and ``regret_diff_ci``
    (whichmodel.analysis.bootstrap; 0: no intervals). ``repetitions``: the per-repetition
    accuracies (``model, task, rep, test_acc``) of a finetune table with several repetitions:
    the bootstrap then resamples them within each task too (two levels).
    """
    if bootstrap < 0:
        raise UserError(f"--bootstrap {bootstrap}: the number of resamples is >= 0")
    _check_known_models(finetune, catalogue, "finetune table")
    names = list(pool_names) if pool_names else catalogue.pool_names()
    per_pool = scores if isinstance(scores, Mapping) else dict.fromkeys(names, scores)
    for table in {id(t): t for t in per_pool.values() if t is not None}.values():
        _check_known_models(table, catalogue, "scores table")
    cats = task_categories(finetune, categories)
    pools = [build_pool(n, catalogue.pool(n), finetune, per_pool.get(n), cats) for n in names]
    pools = [p for p in pools if p is not None]
    if not pools:
        raise UserError(
            f"no pool of {catalogue.path} has a model with fine-tune results "
            f"(pools tried: {', '.join(names)})"
        )
    if budgets is not None and not clip_budgets:
        check_budgets(budgets, pools)
    sel, reg, cur, zero, ci, diff = [], [], [], [], [], []
    boot_means: dict[str, dict[str, np.ndarray]] = {}
    n_reps: dict[str, int] = {}
    for pool in pools:
        outcomes = pool_outcomes(pool, log_odds=log_odds)
        b = _pool_budgets(pool, budgets)
        sel.append(selections_table(pool, outcomes, b))
        reg.append(regret_table(pool, outcomes, b))
        cur.append(curves_table(pool, outcomes))
        zero.append(zero_regret_budget_table(pool, outcomes))
        if bootstrap:
            reps = repetition_array(pool, repetitions)
            n_reps[pool.name] = 1 if reps is None else reps.shape[2]
            means = resampled_means(pool, outcomes, bootstrap, reps=reps, log_odds=log_odds)
            boot_means[pool.name] = means
            c, d = bootstrap_tables(pool, outcomes, bootstrap, reps=reps, means=means)
            ci.append(c)
            diff.append(d)
        log.info(
            "pool %s: %d models × %d tasks, %d strategies",
            pool.name,
            pool.size,
            len(pool.tasks),
            len(outcomes),
        )
    return Analysis(
        pools,
        pl.concat(sel),
        pl.concat(reg),
        pl.concat(cur),
        pl.concat(zero),
        estimator_quality(pools),
        pl.concat(ci) if ci else schema.empty(schema.CURVES_CI),
        pl.concat(diff) if diff else schema.empty(schema.REGRET_DIFF_CI),
        bootstrap,
        boot_means,
        n_reps,
    )
