"""A proxy and a strategy from outside whichmodel, as a researcher writes them: what
tests/test_registries.py contract-tests next to the built-in members and tests/test_plugins.py
installs as a package (entry points of the groups whichmodel.proxies and whichmodel.strategies,
naming the spec objects below)."""

import numpy as np

from whichmodel.actors.proxies import ProxyInput, ProxyResult, ProxySpec
from whichmodel.analysis.strategies import PoolData, StrategySpec


def nearest_centroid(inp: ProxyInput) -> ProxyResult:
    """Validation accuracy of the nearest class mean (Euclidean) of the training embeddings."""
    train_x = np.asarray(inp.train_x, dtype=np.float64)
    classes = np.unique(inp.train_y)
    means = np.stack([train_x[inp.train_y == c].mean(axis=0) for c in classes])
    dist = ((np.asarray(inp.val_x, dtype=np.float64)[:, None, :] - means[None]) ** 2).sum(-1)
    predicted = classes[dist.argmin(axis=1)]
    return ProxyResult(float((predicted == inp.val_y).mean()))


def smallest_first(pool: PoolData) -> np.ndarray:
    """Fewest parameters first (ties: catalogue order), the same order for every task."""
    order = np.argsort(pool.meta["params"].to_numpy(), kind="stable")
    return np.tile(order, (len(pool.tasks), 1))


CENTROID = ProxySpec("centroid", nearest_centroid, "nearest-centroid", needs_val=True)
SMALLEST = StrategySpec("smallest_first", smallest_first, "agnostic")
PROXY_SPECS = {CENTROID.name: CENTROID}
STRATEGY_SPECS = {SMALLEST.name: SMALLEST}
