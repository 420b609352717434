"""The terminal summary of an analysis: per pool, regret at small budgets."""

import polars as pl

from whichmodel.analysis.analyze import Analysis
from whichmodel.analysis.strategies import SIMILAR_PREFIX, STRATEGIES


def is_reference(strategy: str) -> bool:
    """Whether a strategy is an analysis reference (it ranks by fine-tune results: oracle,
    random, task_agnostic_oracle/_loo, similar_tasks_<proxy>) rather than advice to follow."""
    spec = STRATEGIES.get(strategy)
    return strategy.startswith(SIMILAR_PREFIX) or (spec is not None and spec.slots == "reference")


def summary_brief(result: Analysis) -> str:
    """The terminal's summary of a study: ``summary_text`` of the strategies a practitioner can
    follow (task-agnostic, each proxy and its hybrid) and ``random`` for scale; the references
    are in ``summary.txt`` and the report."""
    keep = [s for s in result.curves["strategy"].unique() if not is_reference(s) or s == "random"]
    brief = summary_text(result, keep)
    n = result.curves["strategy"].n_unique() - len(keep)
    return brief + (f"({n} reference strategies, oracle among them: summary.txt)\n" if n else "")


def summary_text(result: Analysis, strategies: list[str] | None = None) -> str:
    """Per pool: mean relative regret at B=1, 2, 3 and the fraction of zero-regret tasks (of
    ``strategies``, default every one)."""
    lines = []
    for pool in result.pools:
        rows = result.curves.filter(pl.col("pool") == pool.name)
        lines.append(f"pool {pool.name}: {pool.size} models, {len(pool.tasks)} tasks")
        budgets = [b for b in (1, 2, 3) if b <= pool.size]
        head = "  ".join(f"B={b} rel.regret / zero" for b in budgets)
        names = rows["strategy"].unique(maintain_order=True).to_list()
        width = max(24, *(len(n) + 2 for n in names))  # the same columns for any selection
        names = [n for n in names if strategies is None or n in strategies]
        lines.append(f"  {'strategy':<{width}}{head}")
        for name in names:
            sub = rows.filter(pl.col("strategy") == name)
            cells = []
            for b in budgets:
                r = sub.filter(pl.col("budget") == b).row(0, named=True)
                cells.append(f"{r['mean_rel_regret']:>9.3f} / {r['frac_zero_regret']:>4.2f}     ")
            lines.append(f"  {name:<{width}}{''.join(cells)}")
    return "\n".join(lines) + "\n"
