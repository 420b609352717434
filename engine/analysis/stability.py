"""How stable the oracle is: does a task's best model change from one fine-tune repetition to
the next? (issue 19). Pure Polars/NumPy."""

import itertools

import polars as pl

from whichmodel.core import schema


def oracle_stability(reps: pl.DataFrame) -> pl.DataFrame:
    """Per task of a per-repetition table (``model, task, rep, test_acc``; models without every
    repetition are left out of that task): the repetitions, each one's best model(s) (ties all
    count), whether they agree with the median-accuracy oracle's best, the fraction of
    repetition pairs whose best-model sets differ, and whether any pair does (``changes``;
    columns: schema.ORACLE_STABILITY)."""
    rows = []
    for (task,), part in reps.group_by("task", maintain_order=True):
        n_reps = part["rep"].n_unique()
        full = part.group_by("model").agg(pl.len()).filter(pl.col("len") == n_reps)["model"]
        part = part.filter(pl.col("model").is_in(full.implode()))
        best = []
        for _, r in part.sort("rep").group_by("rep", maintain_order=True):
            top = r["test_acc"].max()
            best.append(frozenset(r.filter(pl.col("test_acc") == top)["model"]))
        median = part.group_by("model").agg(pl.col("test_acc").median())
        top = median["test_acc"].max()
        oracle = frozenset(median.filter(pl.col("test_acc") == top)["model"])
        pairs = list(itertools.combinations(best, 2))
        rows.append(
            {
                "task": task,
                "n_reps": n_reps,
                "n_models": len(full),
                "best_per_rep": " | ".join(",".join(sorted(b)) for b in best),
                "oracle_best": ",".join(sorted(oracle)),
                "reps_agreeing_with_oracle": sum(bool(b & oracle) for b in best),
                "frac_rep_pairs_differ": (
                    sum(a != b for a, b in pairs) / len(pairs) if pairs else None
                ),
                "changes": any(a != b for a, b in pairs),
            }
        )
    out = pl.DataFrame(rows, schema=schema.ORACLE_STABILITY)
    return out.sort("task") if out.height else schema.empty(schema.ORACLE_STABILITY)


def fraction_changed(stability: pl.DataFrame) -> float | None:
    """The fraction of tasks whose best model changes between repetitions (None: no task)."""
    return stability["changes"].mean() if stability.height else None
