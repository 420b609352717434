"""Reading and validating the input tables of the analysis driver (finetune, scores, tasks).

Each reader accepts Parquet or CSV, checks the table against its contract (whichmodel.core.schema)
and
raises ``UserError`` with a one-line message that names the file and the offending model, task
or column.
"""

import math
from pathlib import Path

import polars as pl

from whichmodel.analysis.strategies import HYBRID_PREFIX, SIMILAR_PREFIX, reserved_names
from whichmodel.core import schema
from whichmodel.core.errors import UserError
from whichmodel.core.files import read_toml


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a Parquet or CSV file into a frame."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix == ".csv":
            return pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: cannot read table: {str(exc).splitlines()[0]}") from exc
    raise UserError(f"{path}: unknown table format (expected .parquet or .csv)")


def _require(df: pl.DataFrame, columns: dict, path: str | Path, what: str) -> pl.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: {what} table lacks column(s) {', '.join(missing)}")
    for col, dtype in columns.items():
        try:
            df = df.with_columns(pl.col(col).cast(dtype, strict=True))
        except pl.exceptions.PolarsError as exc:
            raise UserError(
                f"{path}: {what} table column {col!r} is {df.schema[col]}, "
                f"which does not convert to {dtype}"
            ) from exc
    return df


def _where(row: dict) -> str:
    return ", ".join(f"{k} {row[k]!r}" for k in ("model", "task", "proxy", "lr", "rep") if k in row)


def _check_fraction(df: pl.DataFrame, col: str, path: str | Path) -> None:
    """Every value of ``col`` is a number in [0, 1] (no null, no NaN)."""
    bad = df.filter(pl.col(col).is_null() | pl.col(col).is_nan() | ~pl.col(col).is_between(0, 1))
    if bad.height:
        row = bad.row(0, named=True)
        value = row[col]
        shown = "missing" if value is None or math.isnan(value) else repr(value)
        raise UserError(
            f"{path}: {col} of {_where(row)} is {shown}; accuracies must be fractions in [0, 1]"
            + (f" ({bad.height} such rows)" if bad.height > 1 else "")
        )


def _check_unique(df: pl.DataFrame, keys: list[str], path: str | Path, hint: str = "") -> None:
    dup = df.filter(pl.struct(keys).is_duplicated())
    if dup.height:
        raise UserError(f"{path}: duplicate rows for {_where(dup.row(0, named=True))}{hint}")


def per_repetition(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    """A per-run finetune table reduced to one row per (model, task, rep): the lr with the best
    validation accuracy (a tie keeps the smaller lr)."""
    df = _require(df, schema.FINETUNE_RUN, path, "finetune")
    _check_fraction(df, "val_acc", path)
    _check_unique(df, ["model", "task", "lr", "rep"], path)
    return (
        df.sort(
            ["model", "task", "rep", "val_acc", "lr"],
            descending=[False, False, False, True, False],
        )
        .group_by(["model", "task", "rep"], maintain_order=True)
        .first()
    )


def load_finetune_repetitions(path: str | Path) -> pl.DataFrame | None:
    """``model, task, rep, test_acc`` per repetition of a per-run finetune table (validated as
    ``load_finetune`` does), or None for a table with one row per (model, task)."""
    path = Path(path)
    df = read_table(path)
    if "rep" not in df.columns:
        return None
    return per_repetition(df, path).select("model", "task", "rep", "test_acc")


def load_finetune(path: str | Path) -> pl.DataFrame:
    """The finetune table, one row per (model, task): columns model, task, test_acc[, category].

    One row per run is accepted too (columns ``lr``, ``rep``, ``val_acc``): per repetition the
    lr with the best validation accuracy is kept (a tie keeps the smaller lr), and t is the
    median test accuracy over repetitions (paper §4.3).
    """
    return finetune_frame(read_table(path), Path(path))


def finetune_frame(df: pl.DataFrame, path: str | Path = "finetune frame") -> pl.DataFrame:
    """``load_finetune`` of a frame already in memory; errors start with ``path``."""
    df = _require(df, schema.FINETUNE, path, "finetune")
    run_cols = [c for c in schema.FINETUNE_RUN if c in df.columns]
    if run_cols and len(run_cols) < len(schema.FINETUNE_RUN):
        missing = sorted(set(schema.FINETUNE_RUN) - set(run_cols))
        raise UserError(
            f"{path}: per-run finetune table has {', '.join(run_cols)} "
            f"but lacks {', '.join(missing)}"
        )
    if df.height == 0:
        raise UserError(f"{path}: finetune table has no rows")
    _check_fraction(df, "test_acc", path)
    category = _task_categories(df, path)
    if run_cols:
        df = (
            per_repetition(df, path)
            .group_by(["model", "task"], maintain_order=True)
            .agg(pl.col("test_acc").median())
        )
    else:
        _check_unique(
            df, ["model", "task"], path, " (one row per model and task, or add lr, rep, val_acc)"
        )
        df = df.select("model", "task", "test_acc")
    if category is not None:
        df = df.join(category, on="task", how="left")
    return df


def _task_categories(df: pl.DataFrame, path: str | Path) -> pl.DataFrame | None:
    """The task → category map of a table's optional ``category`` column (one per task)."""
    if "category" not in df.columns:
        return None
    cats = df.select("task", pl.col("category").cast(pl.String)).unique()
    clash = cats.filter(pl.col("task").is_duplicated())
    if clash.height:
        task = clash["task"][0]
        raise UserError(f"{path}: task {task!r} has more than one category")
    return cats


def load_scores(path: str | Path) -> pl.DataFrame:
    """The scores table: one row per (model, task, proxy); a null score means not applicable.
    A ``runs`` column (the probe stage's per-run detail) is kept: NCTI's and ETran's terms are
    combined across each pool from it (``strategies.dense_scores``)."""
    return scores_frame(read_table(path), Path(path))


def scores_frame(df: pl.DataFrame, path: str | Path = "scores frame") -> pl.DataFrame:
    """``load_scores`` of a frame already in memory; errors start with ``path``."""
    df = _require(df, schema.SCORES, path, "scores")
    nan = df.filter(pl.col("score").is_nan() | pl.col("score").is_infinite())
    if nan.height:
        raise UserError(
            f"{path}: score of {_where(nan.row(0, named=True))} is not a finite number "
            "(leave it empty for a proxy that does not apply)"
        )
    _check_unique(df, ["model", "task", "proxy"], path)
    for proxy in df["proxy"].unique().sort():
        prefixed = proxy.startswith((HYBRID_PREFIX, SIMILAR_PREFIX))
        if proxy in reserved_names() or prefixed or not proxy.isidentifier():
            raise UserError(
                f"{path}: proxy name {proxy!r} is not allowed (it must be an identifier, not "
                f"start with {HYBRID_PREFIX!r} or {SIMILAR_PREFIX!r}, and not be one of "
                f"{sorted(reserved_names())})"
            )
    if "runs" in df.columns:
        return df.select(*schema.SCORES, pl.col("runs").cast(pl.String))
    return df.select(list(schema.SCORES))


def load_task_categories(path: str | Path | pl.DataFrame) -> pl.DataFrame:
    """task → category from a tasks file: TOML ``[[tasks]]`` with name and category, or a table
    (a file, or a frame with columns task and category)."""
    if isinstance(path, pl.DataFrame):
        df = _require(path, {"task": pl.String, "category": pl.String}, "tasks frame", "tasks")
        cats = _task_categories(df, "tasks frame")
        assert cats is not None
        return cats
    path = Path(path)
    if path.suffix == ".toml":
        entries = read_toml(path, "tasks").get("tasks", [])
        rows = []
        for i, entry in enumerate(entries):
            name = entry.get("name", entry.get("task"))
            if not isinstance(name, str):
                raise UserError(f"{path}: tasks entry {i + 1} has no name")
            rows.append({"task": name, "category": str(entry.get("category", "unknown"))})
        df = pl.DataFrame(rows, schema={"task": pl.String, "category": pl.String})
    else:
        df = _require(read_table(path), {"task": pl.String, "category": pl.String}, path, "tasks")
    cats = _task_categories(df, path)
    assert cats is not None
    return cats
