"""The one writer of an analysis's tables (``whichmodel analyze --out``, a benchmark's tables)."""

from pathlib import Path

from whichmodel.analysis.analyze import Analysis
from whichmodel.core.outputs import write_table

ANALYSIS_TABLES = ("selections", "regret", "curves", "zero_regret_budget", "quality")


INTERVAL_TABLES = ("curves_ci", "regret_diff_ci")  # with a bootstrap (analysis.n_boot > 0)


def write_analysis_tables(analysis: Analysis, directory: Path) -> list[Path]:
    """Write the five tables of ``analysis``, and the two interval tables when it has a
    bootstrap, (Parquet and CSV) into ``directory`` (a staging folder of
    ``whichmodel.core.outputs.atomic_directory``); return the Parquet paths."""
    names = ANALYSIS_TABLES + (INTERVAL_TABLES if analysis.n_boot else ())
    for name in names:
        write_table(getattr(analysis, name), directory, name)
    return [Path(directory) / f"{name}.parquet" for name in names]
