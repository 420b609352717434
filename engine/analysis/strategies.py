"""Search strategies (paper §3, docs/design.md §1) and their one registry.

A strategy ranks the models of one pool for every task: ``rank(pool) -> order`` with ``order`` an
int array of shape (tasks, models) holding model indices, best first. A selection at budget B
is the first B entries of a row, so every strategy here is a rank-prefix strategy. The one
exception is ``random``, which is not a ranking but an exact expectation over uniformly random
B-subsets; ``engine.analysis.curves`` computes it in closed form.

Ties are broken the same way everywhere: by the task-agnostic order (which itself ends in
catalogue file order), so every ranking is deterministic.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from engine.core.errors import UserError

RANDOM = "random"
HYBRID_PREFIX = "hybrid_"


@dataclass(frozen=True)
class PoolData:
    """The dense view of one pool that strategies work on.

    ``acc[t, m]`` is the fine-tune test accuracy of model m on task t; ``scores[proxy][t, m]`` is
    a proxy score (higher is better, NaN where the proxy does not apply to the model).
    ``meta`` holds the catalogue rows of ``models``, in the same order (catalogue file order).
    """

    name: str
    models: list[str]
    tasks: list[str]
    categories: list[str]
    acc: np.ndarray
    meta: pl.DataFrame
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.models)


def task_agnostic_order(meta: pl.DataFrame) -> np.ndarray:
    """The paper's task-agnostic ranking of catalogue rows, as row indices, best first.

    Highest ImageNet top-1 first (models without one after those with one); then the largest
    upstream dataset (unknown size last); ties broken by most parameters, then catalogue order.
    When no model has an ImageNet accuracy the first key is constant and the rule reduces to the
    paper's "largest upstream dataset, ties broken by most parameters".
    """
    n = meta.height
    top1 = meta["imagenet_top1"].to_numpy().astype(np.float64)
    upstream = meta["upstream_size"].cast(pl.Float64).to_numpy()
    params = meta["params"].cast(pl.Float64).to_numpy()
    # np.lexsort sorts ascending by the last key first; NaN (unknown) maps to +inf = last.
    keys = (
        np.arange(n),
        -params,
        np.where(np.isnan(upstream), np.inf, -upstream),
        np.where(np.isnan(top1), np.inf, -top1),
    )
    return np.lexsort(keys)


def _rank_positions(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: position of each model in a 1-D ranking."""
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size)
    return pos


def _rank_by(values: np.ndarray, tie_order: np.ndarray) -> np.ndarray:
    """Rank each row of ``values`` (tasks × models) descending; NaN last; ties by ``tie_order``."""
    tie_pos = np.broadcast_to(_rank_positions(tie_order), values.shape)
    primary = np.where(np.isnan(values), np.inf, -values)
    return np.lexsort((tie_pos, primary), axis=-1)


def task_agnostic(pool: PoolData) -> np.ndarray:
    """The same task-agnostic ranking for every task."""
    order = task_agnostic_order(pool.meta)
    return np.broadcast_to(order, (len(pool.tasks), pool.size)).copy()


def oracle(pool: PoolData) -> np.ndarray:
    """Rank by the true fine-tune accuracy on the task itself."""
    return _rank_by(pool.acc, task_agnostic_order(pool.meta))


def task_agnostic_oracle(pool: PoolData) -> np.ndarray:
    """Paper §5.4: rank by mean fine-tune accuracy over all tasks (sees the scored task)."""
    mean = pool.acc.mean(axis=0, keepdims=True)
    order = _rank_by(mean, task_agnostic_order(pool.meta))
    return np.broadcast_to(order, pool.acc.shape).copy()


def task_agnostic_loo(pool: PoolData) -> np.ndarray:
    """Rank by mean fine-tune accuracy over the *other* tasks: a meta-learned baseline."""
    n_tasks = len(pool.tasks)
    loo_mean = (pool.acc.sum(axis=0, keepdims=True) - pool.acc) / (n_tasks - 1)
    return _rank_by(loo_mean, task_agnostic_order(pool.meta))


def task_aware(proxy: str) -> Callable[[PoolData], np.ndarray]:
    """Rank by a proxy's score on the task's own data; models it does not apply to go last."""

    def rank(pool: PoolData) -> np.ndarray:
        return _rank_by(pool.scores[proxy], task_agnostic_order(pool.meta))

    rank.__name__ = proxy
    return rank


def hybrid_order(agnostic: np.ndarray, aware: np.ndarray) -> np.ndarray:
    """The paper's hybrid: the task-agnostic top-1, then the task-aware ranking without it.

    ``agnostic`` is one ranking (models,) and ``aware`` one per task (tasks, models). If the
    agnostic pick is also the aware top-1, the next aware model fills the aware slot, so the B
    picks are always B distinct models and B=1 equals task-agnostic.
    """
    top = agnostic[0]
    n_tasks, n_models = aware.shape
    rest = aware[aware != top].reshape(n_tasks, n_models - 1)
    return np.concatenate([np.full((n_tasks, 1), top, dtype=aware.dtype), rest], axis=1)


def hybrid(proxy: str) -> Callable[[PoolData], np.ndarray]:
    """Hybrid of the task-agnostic top-1 and the task-aware ``proxy`` ranking."""

    def rank(pool: PoolData) -> np.ndarray:
        return hybrid_order(task_agnostic_order(pool.meta), task_aware(proxy)(pool))

    rank.__name__ = HYBRID_PREFIX + proxy
    return rank


AGNOSTIC_SLOT, AWARE_SLOT = "task-agnostic", "task-aware"


def pick_slots(strategy: str, budget: int) -> list[str]:
    """The rule that fills each of a strategy's first ``budget`` picks, as ``hybrid_order``
    builds them: a hybrid's first slot is task-agnostic and the rest task-aware; ``task_agnostic``
    fills every slot task-agnostically, a proxy every slot task-aware."""
    slots = parse_strategy(strategy, [strategy.removeprefix(HYBRID_PREFIX)]).slots
    if slots == "hybrid":
        return [AGNOSTIC_SLOT] + [AWARE_SLOT] * (budget - 1)
    return [AGNOSTIC_SLOT if slots == "agnostic" else AWARE_SLOT] * budget


def agnostic_key(meta: pl.DataFrame, first: int, second: int) -> str:
    """The key of ``task_agnostic_order`` that ranks catalogue row ``first`` before ``second``:
    ``"imagenet_top1"``, ``"upstream_size"``, ``"params"`` or ``"catalogue order"``."""
    for column in ("imagenet_top1", "upstream_size", "params"):
        a, b = meta[column][first], meta[column][second]
        if a != b:
            return column
    return "catalogue order"


@dataclass(frozen=True)
class StrategySpec:
    """A strategy and what the rest of the engine needs to know about it.

    ``rank(pool) -> (tasks, models) order`` (None for ``random``: a closed-form expectation,
    ``engine.analysis.curves.random_expectation``); ``slots``: how its picks are filled —
    ``"agnostic"`` (every pick from the task-agnostic order), ``"aware"`` (every pick from a
    proxy), ``"hybrid"`` (the first task-agnostic, the rest from a proxy) or ``"reference"`` (an
    analysis reference, not a recommendation); ``needs_finetune``: it ranks by fine-tune results
    of every model, so it can measure but never advise on a new task; ``min_tasks``: the tasks a
    pool needs for it to apply; ``proxy``: the proxy it ranks by."""

    name: str
    rank: Callable[[PoolData], np.ndarray] | None
    slots: str
    needs_finetune: bool = False
    min_tasks: int = 1
    proxy: str | None = None


# The registry of strategies that need no proxy, in report order. Proxy strategies are made per
# proxy by `proxy_strategies`, so every proxy of a scores table becomes `<proxy>` and
# `hybrid_<proxy>` with no other code.
STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("task_agnostic", task_agnostic, "agnostic"),
        StrategySpec("oracle", oracle, "reference", needs_finetune=True),
        StrategySpec(RANDOM, None, "reference", needs_finetune=True),
        StrategySpec("task_agnostic_oracle", task_agnostic_oracle, "reference", True),
        StrategySpec("task_agnostic_loo", task_agnostic_loo, "reference", True, min_tasks=2),
    )
}


def proxy_strategies(proxy: str) -> tuple[StrategySpec, StrategySpec]:
    """The two strategies of a proxy: task-aware ``<proxy>`` and ``hybrid_<proxy>``."""
    return (
        StrategySpec(proxy, task_aware(proxy), "aware", proxy=proxy),
        StrategySpec(HYBRID_PREFIX + proxy, hybrid(proxy), "hybrid", proxy=proxy),
    )


def parse_strategy(name: str, proxies: Sequence[str]) -> StrategySpec:
    """The one reading of a strategy name: a registered strategy, or ``<proxy>`` /
    ``hybrid_<proxy>`` for one of ``proxies``; ``UserError`` naming what exists otherwise."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    proxy = name.removeprefix(HYBRID_PREFIX)
    if proxy in proxies:
        aware, hybrid_spec = proxy_strategies(proxy)
        return hybrid_spec if name.startswith(HYBRID_PREFIX) else aware
    known = ", ".join(proxies) if proxies else "none given"
    raise UserError(
        f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}, a proxy ({known}) or "
        f"{HYBRID_PREFIX}<proxy>"
    )


def strategies_for(pool: PoolData) -> dict[str, Callable[[PoolData], np.ndarray] | None]:
    """Every strategy that applies to ``pool`` (its ranking function), in report order: the
    registry's that the pool has tasks enough for, then both of each proxy with a score."""
    specs = [s for s in STRATEGIES.values() if len(pool.tasks) >= s.min_tasks]
    for proxy, values in pool.scores.items():
        if not np.isnan(values).all():
            specs.extend(proxy_strategies(proxy))
    return {s.name: s.rank for s in specs}


def dense_scores(
    scores: pl.DataFrame,
    models: Sequence[str],
    tasks: Sequence[str],
    pool: str,
    proxies: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per proxy, the (tasks × models) scores of a pool; NaN where the table states the proxy
    does not apply (a row with an empty score).

    Every (model, task) of the pool needs a row for every proxy (default: every proxy of the
    table): otherwise a ``UserError`` names the proxy and the first missing pairs, since a
    ranking with holes would silently fall back to the task-agnostic order.
    """
    m_idx = {m: i for i, m in enumerate(models)}
    t_idx = {t: i for i, t in enumerate(tasks)}
    names = sorted(scores["proxy"].unique()) if proxies is None else list(proxies)
    out = {}
    for proxy in names:
        sub = scores.filter(
            (pl.col("proxy") == proxy)
            & pl.col("model").is_in(list(models))
            & pl.col("task").is_in(list(tasks))
        )
        rows = np.array([t_idx[t] for t in sub["task"]], dtype=np.int64)
        cols = np.array([m_idx[m] for m in sub["model"]], dtype=np.int64)
        have = np.zeros((len(tasks), len(models)), dtype=bool)
        have[rows, cols] = True
        if not have.all():
            gaps = np.argwhere(~have)
            first = ", ".join(f"({models[m]!r}, {tasks[t]!r})" for t, m in gaps[:3])
            known = sorted(set(scores.filter(pl.col("proxy") == proxy)["task"]) - set(tasks))
            hint = (
                f"; its tasks {', '.join(map(repr, known[:3]))} are not the pool's"
                if known and not have.any(axis=1).any()
                else ""
            )
            raise UserError(
                f"scores table: proxy {proxy!r} has no row for (model, task) {first} of pool "
                f"{pool} ({len(gaps)} of {have.size} missing{hint}); every pair needs a score, "
                "or an empty one where the proxy does not apply"
            )
        values = np.full((len(tasks), len(models)), np.nan)
        values[rows, cols] = sub["score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        out[proxy] = values
    return out


def reserved_names() -> set[str]:
    """Names a proxy may not take, since they would shadow a reference strategy."""
    return set(STRATEGIES)
