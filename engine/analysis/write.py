"""The one writer of an analysis's tables (``whichmodel analyze --out``, a benchmark's tables)."""

from pathlib import Path

from whichmodel.analysis.analyze import Analysis
from whichmodel.core.outputs import write_table

ANALYSIS_TABLES = ("selections", "regret", "curves", "zero_regret_budget", "quality")


def write_analysis_tables(analysis: Analysis, directory: Path) -> list[Path]:
    """Write the five tables of ``analysis`` (Parquet and CSV) into ``directory`` (a staging
    folder of ``whichmodel.core.outputs.atomic_directory``); return the Parquet paths."""
    for name in ANALYSIS_TABLES:
        write_table(getattr(analysis, name), directory, name)
    return [Path(directory) / f"{name}.parquet" for name in ANALYSIS_TABLES]
