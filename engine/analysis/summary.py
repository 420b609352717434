"""The terminal summary of an analysis: per pool, regret at small budgets."""

import polars as pl

from whichmodel.analysis.analyze import Analysis


def summary_text(result: Analysis) -> str:
    """Per pool: mean relative regret at B=1, 2, 3 and the fraction of zero-regret tasks."""
    lines = []
    for pool in result.pools:
        rows = result.curves.filter(pl.col("pool") == pool.name)
        lines.append(f"pool {pool.name}: {pool.size} models, {len(pool.tasks)} tasks")
        budgets = [b for b in (1, 2, 3) if b <= pool.size]
        head = "  ".join(f"B={b} rel.regret / zero" for b in budgets)
        names = rows["strategy"].unique(maintain_order=True).to_list()
        width = max(24, *(len(n) + 2 for n in names))
        lines.append(f"  {'strategy':<{width}}{head}")
        for name in names:
            sub = rows.filter(pl.col("strategy") == name)
            cells = []
            for b in budgets:
                r = sub.filter(pl.col("budget") == b).row(0, named=True)
                cells.append(f"{r['mean_rel_regret']:>9.3f} / {r['frac_zero_regret']:>4.2f}     ")
            lines.append(f"  {name:<{width}}{''.join(cells)}")
    return "\n".join(lines) + "\n"
