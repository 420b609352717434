"""Search strategies (paper §3, docs/design.md §1) and their one registry.

A strategy ranks the models of one pool for every task: ``rank(pool) -> order`` with ``order`` an
int array of shape (tasks, models) holding model indices, best first. A selection at budget B
is the first B entries of a row, so every strategy here is a rank-prefix strategy. The one
exception is ``random``, which is not a ranking but an exact expectation over uniformly random
B-subsets; ``whichmodel.analysis.curves`` computes it in closed form.

Ties are broken the same way everywhere: by the task-agnostic order (which itself ends in
catalogue file order), so every ranking is deterministic.
"""

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy.stats import rankdata

from whichmodel.actors.proxies import PROXIES, pool_scores
from whichmodel.core.errors import UserError
from whichmodel.core.registry import STRATEGY_PREFIXES, Registry

RANDOM = "random"
HYBRID_PREFIX = "hybrid_"
SIMILAR_PREFIX = "similar_tasks_"
SIMILAR_K = 3  # neighbour tasks whose fine-tune results rank a task (similar_tasks_<proxy>)
SIMILAR_MIN_MODELS = 3  # models two tasks need a score on for their similarity to count


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


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ between each row of ``x`` and each row of ``y`` (rows without NaN), as a
    (len(x), len(y)) array; NaN where a row's ranks are constant or there are fewer than
    ``SIMILAR_MIN_MODELS`` columns (ties get average ranks)."""
    out = np.full((x.shape[0], y.shape[0]), np.nan)
    if x.shape[1] < SIMILAR_MIN_MODELS:
        return out
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    nx, ny = np.linalg.norm(rx, axis=1), np.linalg.norm(ry, axis=1)
    ok = np.outer(nx > 1e-9, ny > 1e-9)
    dots = rx @ ry.T
    out[ok] = (dots / np.where(ok, np.outer(nx, ny), 1.0))[ok]
    return np.clip(out, -1.0, 1.0)


def task_similarity(scores: np.ndarray) -> np.ndarray:
    """(tasks × tasks) Spearman correlation of the tasks' proxy-score vectors over the pool's
    models, each pair over the models the proxy applies to on both tasks (not NaN); NaN where a
    pair has fewer than ``SIMILAR_MIN_MODELS`` such models or constant scores on one of them."""
    have = ~np.isnan(scores)
    if (have == have[:1]).all():  # the common case: the proxy applies to the same models
        common = scores[:, have[0]]
        return _spearman_rows(common, common)
    n = scores.shape[0]
    out = np.full((n, n), np.nan)
    for t in range(n):
        for u in range(t, n):
            both = have[t] & have[u]
            rho = _spearman_rows(scores[t : t + 1, both], scores[u : u + 1, both])[0, 0]
            out[t, u] = out[u, t] = rho
    return out


def similar_tasks_neighbours(scores: np.ndarray, k: int = SIMILAR_K) -> list[list[int]]:
    """Per task t, the up to ``k`` other tasks most similar to it (``task_similarity``, ties by
    task order), among those with a positive correlation; empty when t has fewer than 2 other
    tasks or no positively correlated one."""
    sim = task_similarity(scores)
    n = sim.shape[0]
    out = []
    for t in range(n):
        others = [u for u in range(n) if u != t and sim[t, u] > 0]  # NaN compares False
        others.sort(key=lambda u: -sim[t, u])  # stable: equal similarity keeps task order
        out.append(others[:k] if n >= 3 else [])
    return out


def similar_tasks(proxy: str) -> Callable[[PoolData], np.ndarray]:
    """Meta-learned ranking from earlier tasks (issue 15.4): rank task t's models by their mean
    fine-tune accuracy over the ``SIMILAR_K`` = 3 other tasks whose ``proxy`` scores correlate
    best with t's (``similar_tasks_neighbours``; means equal to 12 decimals tie), ties by the
    task-agnostic order; task_agnostic_loo's order where t has fewer than 2 other tasks or
    none with a positive correlation. Never reads t's own fine-tune accuracies.

    One strategy per proxy, like ``<proxy>`` and ``hybrid_<proxy>``: each proxy the store has
    can serve as the cheap task fingerprint, and which one finds the useful neighbours is an
    empirical question the regret tables answer. Spearman, not Pearson: only the order of the
    models matters to a ranking, proxy scales differ (accuracies, log-evidence), and a few
    outliers (random-init controls) would otherwise dominate the correlation. The k = 3 nearest,
    unweighted, not a similarity-weighted mean over all positively correlated tasks: ρ over a
    pool of ~10 models is noisy, so weights mostly add noise, while the far, barely correlated
    tasks of a weighted mean pull the ranking back towards task_agnostic_loo; three neighbours
    average out one task's fine-tune noise while staying local.
    """

    def rank(pool: PoolData) -> np.ndarray:
        order = task_agnostic_loo(pool) if len(pool.tasks) >= 2 else task_agnostic(pool)
        tie = task_agnostic_order(pool.meta)
        for t, near in enumerate(similar_tasks_neighbours(pool.scores[proxy])):
            if near:
                # Rounded, so that equal means summed in another order tie, as they should.
                mean = np.round(pool.acc[near].mean(axis=0, keepdims=True), 12)
                order[t] = _rank_by(mean, tie)[0]
        return order

    rank.__name__ = SIMILAR_PREFIX + proxy
    return rank


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
    # whatever follows a proxy strategy's prefix is taken as its proxy: only the slots matter here
    named = [strategy.removeprefix(prefix) for prefix in (HYBRID_PREFIX, SIMILAR_PREFIX, "")]
    slots = parse_strategy(strategy, named).slots
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
    ``whichmodel.analysis.curves.random_expectation``); ``slots``: how its picks are filled —
    ``"agnostic"`` (every pick from the task-agnostic order), ``"aware"`` (every pick from a
    proxy), ``"hybrid"`` (the first task-agnostic, the rest from a proxy) or ``"reference"`` (an
    analysis reference, not a recommendation); ``needs_finetune``: it ranks by fine-tune results
    of every model, so it can measure but never advise on a new task; ``min_tasks``: the tasks a
    pool needs for it to apply; ``proxy``: the proxy it ranks by; ``leave_one_out``: it ranks
    each task by other tasks' fine-tune results only, never the task's own."""

    name: str
    rank: Callable[[PoolData], np.ndarray] | None
    slots: str
    needs_finetune: bool = False
    min_tasks: int = 1
    proxy: str | None = None
    leave_one_out: bool = False


# The registry of strategies that need no proxy, in report order. Proxy strategies are made per
# proxy by `proxy_strategies`, so every proxy of a scores table becomes `<proxy>`,
# `hybrid_<proxy>` and `similar_tasks_<proxy>` with no other code.
# Plugins (``whichmodel.register_strategy``, entry points of the group ``whichmodel.strategies``,
# loaded on first read: whichmodel.core.registry) follow the built-in ones.
STRATEGIES: Registry[StrategySpec] = Registry(
    "whichmodel.strategies",
    "strategy",
    StrategySpec,
    (
        (spec.name, spec)
        for spec in (
            StrategySpec("task_agnostic", task_agnostic, "agnostic"),
            StrategySpec("oracle", oracle, "reference", needs_finetune=True),
            StrategySpec(RANDOM, None, "reference", needs_finetune=True),
            StrategySpec("task_agnostic_oracle", task_agnostic_oracle, "reference", True),
            StrategySpec(
                "task_agnostic_loo", task_agnostic_loo, "reference", True, 2, leave_one_out=True
            ),
        )
    ),
    reserved_prefixes=STRATEGY_PREFIXES,
)


def proxy_strategies(proxy: str) -> tuple[StrategySpec, StrategySpec, StrategySpec]:
    """The three strategies of a proxy: task-aware ``<proxy>``, ``hybrid_<proxy>`` and the
    meta-learned reference ``similar_tasks_<proxy>`` (other tasks' fine-tune results, chosen
    by the proxy's scores; at least 3 tasks, so that a task has 2 others to choose from)."""
    return (
        StrategySpec(proxy, task_aware(proxy), "aware", proxy=proxy),
        StrategySpec(HYBRID_PREFIX + proxy, hybrid(proxy), "hybrid", proxy=proxy),
        StrategySpec(
            SIMILAR_PREFIX + proxy,
            similar_tasks(proxy),
            "reference",
            needs_finetune=True,
            min_tasks=3,
            proxy=proxy,
            leave_one_out=True,
        ),
    )


def parse_strategy(name: str, proxies: Sequence[str]) -> StrategySpec:
    """The one reading of a strategy name: a registered strategy, or ``<proxy>``,
    ``hybrid_<proxy>`` or ``similar_tasks_<proxy>`` for one of ``proxies``; ``UserError``
    naming what exists otherwise."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    for prefix, which in ((HYBRID_PREFIX, 1), (SIMILAR_PREFIX, 2), ("", 0)):
        if name.startswith(prefix) and name.removeprefix(prefix) in proxies:
            return proxy_strategies(name.removeprefix(prefix))[which]
    known = ", ".join(proxies) if proxies else "none given"
    raise UserError(
        f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}, a proxy ({known}), "
        f"{HYBRID_PREFIX}<proxy> or {SIMILAR_PREFIX}<proxy>"
    )


def strategies_for(pool: PoolData) -> dict[str, Callable[[PoolData], np.ndarray] | None]:
    """Every strategy that applies to ``pool`` (its ranking function), in report order: the
    registry's, then the three of each proxy with a score, each where the pool has tasks
    enough for it."""
    scored = {p for p, values in pool.scores.items() if not np.isnan(values).all()}
    # a plugin strategy that ranks by a proxy runs where the pool has that proxy's scores
    specs = [s for s in STRATEGIES.values() if s.proxy is None or s.proxy in scored]
    for proxy, values in pool.scores.items():
        if not np.isnan(values).all():
            specs.extend(proxy_strategies(proxy))
    return {s.name: s.rank for s in specs if len(pool.tasks) >= s.min_tasks}


def dense_scores(
    scores: pl.DataFrame,
    models: Sequence[str],
    tasks: Sequence[str],
    pool: str,
    proxies: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Per proxy, the (tasks × models) scores by which the pool is ranked; NaN where the table
    states the proxy does not apply (a row with an empty score).

    A proxy whose authors normalise across the model pool (``ProxySpec.pool_combine``: NCTI,
    ETran) is combined here, per task over this pool's models, from the terms in the table's
    ``runs`` column (``whichmodel.actors.proxies.pool_scores``); the table's ``score`` stays the
    per-pair
    raw score. A table without a ``runs`` column (one not written by the probe stage) is
    ranked by its scores as they are.

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
        if "runs" in sub.columns:
            values = _pool_combined(proxy, values, sub, rows, cols, models, tasks, pool)
        out[proxy] = values
    return out


def _pool_combined(
    proxy: str,
    values: np.ndarray,
    sub: pl.DataFrame,
    rows: np.ndarray,
    cols: np.ndarray,
    models: Sequence[str],
    tasks: Sequence[str],
    pool: str,
) -> np.ndarray:
    """``values`` (tasks × models) with each task's row through ``pool_scores`` of ``proxy``,
    the terms read from ``sub``'s ``runs`` JSON."""
    spec = PROXIES.get(proxy)
    if spec is None or spec.pool_combine is None:
        return values
    runs: list[list] = [[None] * len(models) for _ in tasks]
    for t, m, text in zip(rows, cols, sub["runs"], strict=True):
        if text is None or np.isnan(values[t, m]):
            continue
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(r, dict) for r in parsed):
            raise UserError(
                f"scores table: proxy {proxy!r}, model {models[m]!r}, task {tasks[t]!r}: "
                "runs is not a JSON list of objects"
            )
        runs[t][m] = parsed
    out = np.empty_like(values)
    for t, task in enumerate(tasks):
        try:
            out[t] = pool_scores(proxy, values[t], runs[t], models)
        except ValueError as e:
            raise UserError(f"scores table, task {task!r} of pool {pool}: {e}") from None
    return out


@dataclass(frozen=True)
class Ranking:
    """Every model of a pool ranked by a strategy for each task, best first: ``order[t]`` holds
    model indices into ``models``; ``scores``: the dense (tasks × models) scores it ranked by,
    per proxy (``dense_scores``: pool-normalised where the proxy's authors normalise)."""

    strategy: str
    models: list[str]
    tasks: list[str]
    order: np.ndarray
    scores: dict[str, np.ndarray]

    def of(self, task: str) -> list[str]:
        """The pool ranked for ``task``, best first."""
        return [self.models[m] for m in self.order[self.tasks.index(task)]]

    def pairs(self, budget: int) -> list[tuple[str, str]]:
        """The first ``budget`` models of every task as (model, task) pairs, task by task."""
        rows = zip(self.tasks, self.order, strict=True)
        return [(self.models[m], t) for t, row in rows for m in row[:budget]]


def rank_models(
    meta: pl.DataFrame,
    tasks: Sequence[str],
    strategy: str,
    scores: pl.DataFrame | Mapping[str, np.ndarray] | None = None,
    pool: str = "",
) -> Ranking:
    """The one ranking of a pool without fine-tune results (``analyze``, ``finetune --select``,
    halving, search): ``meta`` the pool's catalogue rows, ``scores`` the scores table its proxy
    needs, or per proxy the (tasks × models) scores ``dense_scores`` made of one (as
    ``analyze``'s pools hold them). ``UserError`` for a strategy that needs fine-tune results,
    or whose proxy applies to no model of the pool."""
    dense = isinstance(scores, Mapping)
    proxies = (
        sorted(scores) if dense else sorted(set(scores["proxy"])) if scores is not None else []
    )
    spec = parse_strategy(strategy, proxies)
    if spec.needs_finetune:
        raise UserError(
            f"strategy {strategy!r} needs fine-tune results of every model; choose "
            "task_agnostic, a proxy or hybrid_<proxy>"
        )
    models, tasks = meta["model"].to_list(), list(tasks)
    proxy_scores: dict[str, np.ndarray] = dict(scores) if dense else {}
    if spec.proxy is not None:
        if not dense:
            proxy_scores = dense_scores(scores, models, tasks, pool, [spec.proxy])
        if np.isnan(proxy_scores[spec.proxy]).all():
            raise UserError(f"strategy {strategy!r}: {spec.proxy!r} applies to no model of {pool}")
    unknown = ["unknown"] * len(tasks)
    data = PoolData(pool, models, tasks, unknown, np.zeros((len(tasks), len(models))), meta,
                    proxy_scores)  # fmt: skip
    return Ranking(strategy, models, tasks, spec.rank(data), proxy_scores)


def reserved_names() -> set[str]:
    """Names a proxy may not take, since they would shadow a reference strategy (nor may it
    start with ``HYBRID_PREFIX`` or ``SIMILAR_PREFIX``: ``whichmodel.analysis.tables``)."""
    return set(STRATEGIES)
