"""What a progressive ranking needed against the full-data proxy (issue 15.1), from the rung
rows the progressive stage wrote and the probe stage's scores: the table behind the report's
"Progressive proxies" section."""

import polars as pl

from whichmodel.core import schema

PREFIX = "progressive_"


def progressive_cost(
    rungs: pl.DataFrame,
    full_scores: pl.DataFrame | None,
    members: dict[str, list[str]],
    eta: int,
) -> pl.DataFrame:
    """Per (pool, proxy) of ``rungs`` (schema.PROGRESSIVE_RUNGS): models scored per rung (mean
    over tasks: ties at a cut keep more models on some tasks), rows
    read (each (task, model) up to its largest slice) against every model of the pool on the
    whole train+val data, and proxy device-seconds against the full-data proxy's in
    ``full_scores`` (the probe stage's SCORES_DETAIL table; its ``proxy`` rows over the pool's
    ``members`` and the same tasks). Columns: schema.PROGRESSIVE_COST."""
    rows = []
    for (pool, proxy), sub in rungs.group_by("pool", "proxy", maintain_order=True):
        tasks = sub["task"].unique(maintain_order=True).to_list()
        per_task = sub.group_by("rung", "task").agg(pl.len(), pl.col("fraction").first())
        per_rung = per_task.group_by("rung").agg(pl.col("len").mean(), pl.col("fraction").first())
        per_rung = per_rung.sort("rung")
        size = sub.with_columns(n=pl.col("train_rows") + pl.col("val_rows"))
        reached = size.sort("rung").group_by("task", "model").last()
        whole = size.filter(pl.col("fraction") == 1.0).group_by("task").agg(pl.col("n").first())
        n_models = len(members[pool])
        full_rows = int(whole["n"].sum()) * n_models
        probe = float(sub["probe_seconds"].sum())
        full_probe = _full_seconds(full_scores, proxy, members[pool], tasks)
        rows.append(
            {
                "pool": pool,
                "proxy": PREFIX + proxy,
                "eta": eta,
                "fractions": ", ".join(f"{f:g}" for f in per_rung["fraction"]),
                "models_per_rung": "→".join(f"{round(n, 1):g}" for n in per_rung["len"]),
                "rows": int(reached["n"].sum()),
                "full_rows": full_rows,
                "rows_share": int(reached["n"].sum()) / full_rows if full_rows else None,
                "probe_seconds": probe,
                "full_probe_seconds": full_probe,
                "probe_share": probe / full_probe if full_probe else None,
            }
        )
    return pl.DataFrame(rows, schema=schema.PROGRESSIVE_COST)


def _full_seconds(
    scores: pl.DataFrame | None, proxy: str, models: list[str], tasks: list[str]
) -> float | None:
    """The full-data proxy's device-seconds over the pool's (model, task) pairs; None when the
    probe stage did not run it."""
    if scores is None or "seconds" not in scores.columns:
        return None
    sub = scores.filter(
        (pl.col("proxy") == proxy) & pl.col("model").is_in(models) & pl.col("task").is_in(tasks)
    )
    return float(sub["seconds"].sum()) if sub.height else None
