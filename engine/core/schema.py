"""Column contracts of the tables that connect the stages (docs/design.md §2), in one place.

Every stage reads and writes these tables as Parquet (the analysis driver also writes CSV), so a
stage can be rerun, replaced, or fed from outside. Minimum columns are listed here; a table may
carry more (per-run detail), and a reader keeps only what it needs.
"""

import polars as pl

# The splits of every task, in this order: the values of the tasks tables' ``split`` column and
# the store's ``split=`` partitions.
SPLITS = ("train", "val", "test")

CATALOGUE = {
    "model": pl.String,
    "family": pl.String,
    "source": pl.String,
    "upstream_dataset": pl.String,
    "upstream_size": pl.Int64,  # nullable: unknown size ranks last in the task-agnostic rule
    "imagenet_top1": pl.Float64,  # nullable, a fraction in [0, 1]
    "params": pl.Int64,
    "dim": pl.Int64,
}
CATALOGUE_REQUIRED = ("model", "family", "source", "upstream_dataset", "params", "dim")

TASKS = {
    "task": pl.String,
    "category": pl.String,
    "num_classes": pl.Int64,
    "n_train": pl.Int64,
    "n_val": pl.Int64,
    "n_test": pl.Int64,
}

# One row per probe result. `score` is higher-is-better; a null score means "not applicable"
# (e.g. LEEP for a model without a source head). Detail columns may follow.
SCORES = {"model": pl.String, "task": pl.String, "proxy": pl.String, "score": pl.Float64}

# What the probe stage writes: SCORES plus the detail of each (model, task, proxy).
SCORES_DETAIL = {
    **SCORES,
    "reason": pl.String,  # why a score is empty (e.g. no source head for LEEP)
    "seconds": pl.Float64,
    "runs": pl.String,  # JSON list of per-run rows (e.g. lr, rep, val_acc for linear)
}

# One row per (model, task), or one per run with the run columns below; see
# whichmodel.analysis.tables.
FINETUNE = {"model": pl.String, "task": pl.String, "test_acc": pl.Float64}
FINETUNE_RUN = {"lr": pl.Float64, "rep": pl.Int64, "val_acc": pl.Float64}

# What the fine-tune stage writes: one row per (model, task, lr, rep).
FINETUNE_RUNS = {
    "model": pl.String,
    "task": pl.String,
    "lr": pl.Float64,
    "rep": pl.Int64,
    "val_acc": pl.Float64,
    "test_acc": pl.Float64,
    "head_val_acc": pl.Float64,
    "steps": pl.Int64,
    "steps_run": pl.Int64,  # steps the final attempt ran (the rest came from a checkpoint)
    "resumed_from": pl.Int64,
    "seconds": pl.Float64,
}

SELECTIONS = {
    "pool": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,
    "task": pl.String,
    "rank": pl.Int64,
    "model": pl.String,
}

REGRET = {
    "pool": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,
    "task": pl.String,
    "oracle_acc": pl.Float64,
    "picked_acc": pl.Float64,
    "abs_regret": pl.Float64,
    "rel_regret": pl.Float64,
}

CURVES = {
    "pool": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,
    "frac_zero_regret": pl.Float64,
    "mean_rel_regret": pl.Float64,
}

# Per task, how often the fine-tune oracle's best model changes between repetitions.
ORACLE_STABILITY = {
    "task": pl.String,
    "n_reps": pl.Int64,
    "n_models": pl.Int64,
    "best_per_rep": pl.String,  # each repetition's best model(s), " | " between repetitions
    "oracle_best": pl.String,  # best by the median over repetitions (the analysis' oracle)
    "reps_agreeing_with_oracle": pl.Int64,
    "frac_rep_pairs_differ": pl.Float64,  # null with one repetition
    "changes": pl.Boolean,  # some two repetitions have different best models
}

# Paired bootstrap over tasks (whichmodel.analysis.bootstrap): 95 % percentile intervals.
CURVES_CI = {
    "pool": pl.String,
    "strategy": pl.String,
    "budget": pl.Int64,
    "mean_rel_regret": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_tasks": pl.Int64,
    "n_boot": pl.Int64,
    "n_reps": pl.Int64,  # fine-tune repetitions resampled within each task (1: tasks only)
}
REGRET_DIFF_CI = {
    "pool": pl.String,
    "strategy": pl.String,
    "reference": pl.String,
    "budget": pl.Int64,
    "mean_diff": pl.Float64,  # strategy's mean relative regret minus the reference's
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "verdict": pl.String,  # better / worse / not distinguishable at 95 %
    "n_tasks": pl.Int64,
    "n_boot": pl.Int64,
    "n_reps": pl.Int64,  # fine-tune repetitions resampled within each task (1: tasks only)
}

# Per task, the smallest budget whose picks contain a best model (paper Tables 4/5).
ZERO_REGRET_BUDGET = {
    "pool": pl.String,
    "strategy": pl.String,
    "task": pl.String,
    "category": pl.String,
    "min_budget": pl.Float64,  # float: for `random` it is the exact expectation (n+1)/(k+1)
}

# Estimator quality (whichmodel.analysis.quality): per pool, proxy and task, how well the proxy's
# scores rank the models by fine-tune accuracy; each (pool, proxy) ends in a mean row whose
# `task` is null. Correlations use only the `n_scored` models; a hit is 1.0 or 0.0 per task and
# the hit rate in the mean row; null where undefined.
QUALITY = {
    "pool": pl.String,
    "proxy": pl.String,
    "task": pl.String,
    "n_scored": pl.Int64,
    "n_not_applicable": pl.Int64,
    "weighted_tau": pl.Float64,
    "kendall_tau": pl.Float64,
    "pearson": pl.Float64,
    "top1_hit": pl.Float64,
    "top3_hit": pl.Float64,
}


def empty(schema: dict) -> pl.DataFrame:
    """An empty frame with the given schema."""
    return pl.DataFrame(schema=schema)


# What successive halving writes (whichmodel.stages.halving): one row per (task, arm); an arm is one
# (model, lr, rep) fine-tune of the ranking's top K. `steps` is the last step the arm reached,
# `status` full | asha | budget (what stopped it), `test_acc` only for fully trained arms,
# `seconds` its device-seconds over every attempt; `chosen` marks each task's pick.
HALVING = {
    "task": pl.String,
    "strategy": pl.String,
    "rank": pl.Int64,
    "model": pl.String,
    "lr": pl.Float64,
    "rep": pl.Int64,
    "steps": pl.Int64,
    "status": pl.String,
    "val_acc": pl.Float64,
    "test_acc": pl.Float64,
    "seconds": pl.Float64,
    "chosen": pl.Boolean,
    "budget": pl.Int64,  # the task's budget in fine-tune steps
    "eta": pl.Int64,
    "grace": pl.Int64,
}

# What progressive halving records (whichmodel.stages.progressive): one row per (task, rung, model
# scored there): the slice (fraction of train/val and its rows), the proxy's score and reason,
# whether the model went on (`kept`) and the device-seconds of its rows' forward passes in that
# call and of its proxy run. A benchmark's table adds the pool and the proxy in front.
PROGRESSIVE_RUNG = {
    "task": pl.String,
    "rung": pl.Int64,
    "fraction": pl.Float64,
    "train_rows": pl.Int64,
    "val_rows": pl.Int64,
    "model": pl.String,
    "score": pl.Float64,
    "reason": pl.String,
    "kept": pl.Boolean,
    "embed_seconds": pl.Float64,
    "probe_seconds": pl.Float64,
}
PROGRESSIVE_RUNGS = {"pool": pl.String, "proxy": pl.String, **PROGRESSIVE_RUNG}

# What a progressive ranking needed (whichmodel.analysis.progressive_cost), per pool and proxy:
# models scored per rung (e.g. "10→5→3→2", the same for every task), the train+val rows its
# rankings read (each (task, model) up to the largest slice it reached) against every model on
# the whole data, and the proxy's device-seconds against the full-data proxy's (null when the
# probe stage did not run that proxy).
PROGRESSIVE_COST = {
    "pool": pl.String,
    "proxy": pl.String,
    "eta": pl.Int64,
    "fractions": pl.String,
    "models_per_rung": pl.String,
    "rows": pl.Int64,
    "full_rows": pl.Int64,
    "rows_share": pl.Float64,
    "probe_seconds": pl.Float64,
    "full_probe_seconds": pl.Float64,
    "probe_share": pl.Float64,
}
