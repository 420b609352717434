"""The analysis figures, per pool, as PNG (matplotlib, headless):

- relative regret per task at B=1 and B=2, tasks grouped by category (paper Fig. 3/4);
- relative delta between two strategies per task (paper Fig. 5/6);
- budget curves: fraction of tasks with zero regret and mean relative regret (paper Fig. 7).
"""

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from whichmodel.analysis.regret import rel_delta  # noqa: E402
from whichmodel.analysis.strategies import PoolData  # noqa: E402

# Strategies shown in the per-task regret bars, when present (the curves show every strategy).
BAR_STRATEGIES = (
    "task_agnostic",
    "linear",
    "knn",
    "hybrid_linear",
    "hybrid_knn",
    "task_agnostic_loo",
    "similar_tasks_linear",
    "similar_tasks_knn",
    "random",
)
# Default strategy pairs of the delta figure: the first pair whose two strategies both ran.
DELTA_PAIRS = (
    ("hybrid_linear", "linear"),
    ("linear", "task_agnostic"),
    ("hybrid_knn", "knn"),
    ("task_agnostic_loo", "task_agnostic"),
)
CATEGORY_COLOURS = {"natural": "tab:green", "specialized": "tab:orange", "structured": "tab:blue"}


def slug(name: str) -> str:
    """A file-name-safe form of a pool or strategy name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "pool"


def _picked(regret: pl.DataFrame, pool: str, strategy: str, budget: int) -> dict[str, float]:
    rows = regret.filter(
        (pl.col("pool") == pool) & (pl.col("strategy") == strategy) & (pl.col("budget") == budget)
    )
    return dict(zip(rows["task"], rows["picked_acc"], strict=True))


def _category_spans(pool: PoolData):
    """(category, first index, last index) runs of the pool's category-sorted tasks."""
    spans, start = [], 0
    for i in range(1, len(pool.tasks) + 1):
        if i == len(pool.tasks) or pool.categories[i] != pool.categories[start]:
            spans.append((pool.categories[start], start, i - 1))
            start = i
    return spans


def _task_axis(ax, pool: PoolData) -> None:
    ax.set_xticks(range(len(pool.tasks)), pool.tasks, rotation=60, ha="right", fontsize=7)
    for cat, lo, hi in _category_spans(pool):
        ax.axvspan(lo - 0.5, hi + 0.5, color=CATEGORY_COLOURS.get(cat, "grey"), alpha=0.06)
        ax.text(
            (lo + hi) / 2,
            1.0,
            cat,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )


def regret_bars(pool: PoolData, regret: pl.DataFrame, path: Path) -> None:
    """Relative regret per task at B=1 and B=2 (B=2 only if the pool has two models)."""
    present = set(regret.filter(pl.col("pool") == pool.name)["strategy"].unique())
    names = [s for s in BAR_STRATEGIES if s in present]
    budgets = [b for b in (1, 2) if b <= pool.size]
    fig, axes = plt.subplots(
        len(budgets), 1, figsize=(max(8, len(pool.tasks) * 0.6), 3.6 * len(budgets)), squeeze=False
    )
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(pool.tasks))
    for ax, b in zip(axes[:, 0], budgets, strict=True):
        rows = regret.filter((pl.col("pool") == pool.name) & (pl.col("budget") == b))
        for k, name in enumerate(names):
            sub = dict(
                rows.filter(pl.col("strategy") == name).select("task", "rel_regret").iter_rows()
            )
            ax.bar(
                x + (k - (len(names) - 1) / 2) * width,
                [sub.get(t, np.nan) for t in pool.tasks],
                width,
                label=name,
            )
        ax.set_ylabel(f"relative regret, B={b}")
        ax.set_ylim(0, 1)
        _task_axis(ax, pool)
    axes[0, 0].legend(fontsize=7, ncol=min(len(names), 4), loc="upper left")
    fig.suptitle(f"pool {pool.name}: relative regret per task", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def delta_bars(
    pool: PoolData, regret: pl.DataFrame, first: str, second: str, path: Path, budget: int = 1
) -> None:
    """Relative delta Δ(first, second) per task at ``budget``: above 0, ``first`` picked better."""
    a = _picked(regret, pool.name, first, budget)
    b = _picked(regret, pool.name, second, budget)
    delta = rel_delta([a[t] for t in pool.tasks], [b[t] for t in pool.tasks])
    fig, ax = plt.subplots(figsize=(max(8, len(pool.tasks) * 0.5), 3.8))
    colours = [CATEGORY_COLOURS.get(c, "grey") for c in pool.categories]
    ax.bar(range(len(pool.tasks)), delta, color=colours)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-1, 1)
    ax.set_ylabel(f"Δ({first}, {second}), B={budget}")
    _task_axis(ax, pool)
    fig.suptitle(f"pool {pool.name}: relative delta per task", y=1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REFERENCE_STYLES = {  # strategies that see fine-tune results, and random
    "oracle": ("black", "--"),
    "task_agnostic_oracle": ("dimgrey", "--"),
    "task_agnostic_loo": ("grey", ":"),
    "random": ("darkgrey", "--"),
    "task_agnostic": ("black", "-"),
}
# Line style per kind of proxy strategy; the colour says which proxy it is built on.
KIND_STYLES = (
    ("hybrid_progressive_", "-.", "s"),
    ("similar_tasks_progressive_", (0, (1, 3)), "+"),
    ("similar_tasks_", ":", "x"),
    ("hybrid_", "--", "s"),
    ("progressive_", "-.", "."),
    ("", "-", "."),
)


def curve_style(name: str, proxies: list[str]) -> dict:
    """Colour, line style and marker of a strategy's budget curve: one colour per proxy (the
    order of ``proxies``), one line style per kind (task-aware, hybrid, progressive, ...)."""
    if name in REFERENCE_STYLES:
        colour, line = REFERENCE_STYLES[name]
        return {"color": colour, "linestyle": line, "marker": "."}
    for prefix, line, marker in KIND_STYLES:
        if name.startswith(prefix):
            base = name.removeprefix(prefix).removeprefix("progressive_")
            colour = f"C{proxies.index(base) % 10}" if base in proxies else "C9"
            return {"color": colour, "linestyle": line, "marker": marker, "markersize": 4}
    raise AssertionError(name)  # the empty prefix matches every name


def budget_curves(
    pool: PoolData, curves: pl.DataFrame, path: Path, curves_ci: pl.DataFrame | None = None
) -> None:
    """Fraction of tasks with zero regret and mean relative regret against the budget; with
    ``curves_ci`` (the paired bootstrap's table) a 95 % band around each regret curve."""
    rows = curves.filter(pl.col("pool") == pool.name)
    names = rows["strategy"].unique(maintain_order=True).to_list()
    proxies = [p.removeprefix("progressive_") for p in pool.scores]
    proxies = list(dict.fromkeys(proxies))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.5, 7), sharex=True)
    band_on = curves_ci is not None and curves_ci.height > 0
    for name in names:
        sub = rows.filter(pl.col("strategy") == name).sort("budget")
        style = curve_style(name, proxies)
        top.plot(sub["budget"], sub["frac_zero_regret"], label=name, **style)
        bottom.plot(sub["budget"], sub["mean_rel_regret"], label=name, **style)
        if curves_ci is not None and curves_ci.height:
            band = curves_ci.filter(pl.col("pool") == pool.name, pl.col("strategy") == name)
            band = band.sort("budget")
            if band.height:
                bottom.fill_between(
                    band["budget"], band["ci_low"], band["ci_high"], color=style.get("color"),
                    alpha=0.12, linewidth=0,
                )  # fmt: skip
    top.set_ylabel("fraction of tasks with zero regret")
    top.set_ylim(-0.02, 1.02)
    bottom.set_ylabel("mean relative regret" + (" (band: 95 % bootstrap)" if band_on else ""))
    bottom.set_xlabel("budget B (models fine-tuned)")
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"pool {pool.name}: budget curves ({len(pool.tasks)} tasks, {pool.size} models)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def delta_pair(strategies: set[str], wanted: Sequence[tuple[str, str]] = DELTA_PAIRS):
    """The first pair of strategies that both ran, or None."""
    return next(((a, b) for a, b in wanted if a in strategies and b in strategies), None)


def write_plots(
    pools: Sequence[PoolData],
    regret: pl.DataFrame,
    curves: pl.DataFrame,
    directory: Path,
    delta_pairs: Sequence[tuple[str, str]] = DELTA_PAIRS,
    curves_ci: pl.DataFrame | None = None,
) -> list[Path]:
    """Write every figure of every pool into ``directory``; return the written paths.

    The per-task figures need budgets 1 (and 2) in the regret table; they are left out otherwise.
    """
    written = []
    budgets = set(regret["budget"].unique())
    for pool in pools:
        name = slug(pool.name)
        if 1 in budgets:
            written.append(directory / f"regret_per_task_{name}.png")
            regret_bars(pool, regret, written[-1])
            ran = set(regret.filter(pl.col("pool") == pool.name)["strategy"].unique())
            pair = delta_pair(ran, delta_pairs)
            if pair:
                written.append(directory / f"delta_{slug(pair[0])}_vs_{slug(pair[1])}_{name}.png")
                delta_bars(pool, regret, *pair, written[-1])
        written.append(directory / f"budget_curves_{name}.png")
        budget_curves(pool, curves, written[-1], curves_ci)
    return written
