"""Tasks: task files and the data-source registry (folder, Parquet, builtin) that load them."""
