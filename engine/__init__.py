"""whichmodel's driver side, in layers that import only downwards (checked by `lint-imports`):

cli -> apps (search, benchmark, demo) -> demo (the embedded pool) -> stages (store, embed, probe,
finetune, halving) -> analysis (tables, strategies, regret, curves, plots, report) -> tasks ->
cluster -> core (errors, names, schema, catalog, presets, resources, outputs).
Worker code lives in the top-level package ``actors`` and imports only ``whichmodel.core``."""
