"""The analysis of the paper: input tables, strategies, regret, budget curves, plots, report."""
