"""How stable a study's oracle is (issue 19 part 5): per task, the best model of each fine-tune
repetition, whether it changes, the fraction of tasks where it does, and the best model's margin
over the runner-up; for several runs of the same tasks (e.g. the demo's 24 steps and 2x the
steps), whether their median-accuracy oracles agree.

    .venv/bin/python benchmarks/oracle_stability.py LABEL=RUN_DIR [LABEL=RUN_DIR ...]
        [--models a,b,c]

RUN_DIR is a benchmark run directory (its finetune/table/finetune.parquet) or a finetune table.
``--models`` restricts every run to those models (runs over different pools compare alike).
"""

import argparse
from pathlib import Path

import polars as pl

from whichmodel.analysis.stability import fraction_changed, oracle_stability
from whichmodel.analysis.tables import load_finetune_repetitions


def load(target: str, models: list[str] | None) -> pl.DataFrame:
    """Per-repetition ``model, task, rep, test_acc`` of a run directory or finetune table."""
    path = Path(target)
    if path.is_dir():
        path = path / "finetune" / "table" / "finetune.parquet"
    reps = load_finetune_repetitions(path)
    if reps is None:
        raise SystemExit(f"{path}: no rep column")
    return reps.filter(pl.col("model").is_in(models)) if models else reps


def margins(reps: pl.DataFrame) -> pl.DataFrame:
    """Per task: the mean over repetitions of best minus second-best test accuracy."""
    top2 = reps.group_by("task", "rep").agg(
        pl.col("test_acc").sort(descending=True).head(2).alias("top")
    )
    return (
        top2.with_columns(margin=pl.col("top").list.get(0) - pl.col("top").list.get(1))
        .group_by("task")
        .agg(pl.col("margin").mean())
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    ap.add_argument("--models", help="comma-separated models to keep")
    args = ap.parse_args()
    models = args.models.split(",") if args.models else None
    oracles = {}
    for spec in args.runs:
        label, _, target = spec.partition("=")
        reps = load(target, models)
        table = oracle_stability(reps).join(margins(reps), on="task").sort("task")
        oracles[label] = dict(table.select("task", "oracle_best").iter_rows())
        frac = fraction_changed(table)
        print(f"\n## {label}: {target}")
        print(f"{reps['model'].n_unique()} models, reps {sorted(reps['rep'].unique())}")
        for r in table.iter_rows(named=True):
            flag = "CHANGES" if r["changes"] else "stable "
            print(
                f"  {r['task']:<12} {flag} best per rep: {r['best_per_rep']:<70} "
                f"median oracle: {r['oracle_best']:<20} margin {r['margin']:.3f}"
            )
        print(f"  fraction of tasks whose best model changes: {frac:.3f} "
              f"({table['changes'].sum()} of {table.height})")  # fmt: skip
    labels = list(oracles)
    for a, b in zip(labels, labels[1:], strict=False):
        same = [t for t in oracles[a] if oracles[b].get(t) == oracles[a][t]]
        print(f"\n{a} vs {b}: median oracles agree on {len(same)} of {len(oracles[a])} tasks")
        for t in oracles[a]:
            print(f"  {t:<12} {oracles[a][t]:<20} {oracles[b].get(t)}")


if __name__ == "__main__":
    main()
