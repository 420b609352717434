"""Build small PoolData instances for tests."""

import numpy as np
import polars as pl

from whichmodel.analysis.strategies import PoolData
from whichmodel.core.schema import CATALOGUE


def make_meta(n, imagenet=None, upstream=None, params=None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "model": [f"m{i}" for i in range(n)],
            "family": ["f"] * n,
            "source": ["timm:x"] * n,
            "upstream_dataset": ["d"] * n,
            "upstream_size": upstream if upstream is not None else [1000] * n,
            "imagenet_top1": imagenet if imagenet is not None else [None] * n,
            "params": params if params is not None else [10] * n,
            "dim": [8] * n,
        },
        schema=CATALOGUE,
    )


def make_pool(acc, meta=None, scores=None, name="P") -> PoolData:
    acc = np.asarray(acc, dtype=np.float64)
    n_tasks, n_models = acc.shape
    meta = meta if meta is not None else make_meta(n_models)
    return PoolData(
        name=name,
        models=meta["model"].to_list(),
        tasks=[f"t{i}" for i in range(n_tasks)],
        categories=["natural"] * n_tasks,
        acc=acc,
        meta=meta,
        scores={k: np.asarray(v, dtype=np.float64) for k, v in (scores or {}).items()},
    )
