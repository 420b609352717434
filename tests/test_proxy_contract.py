"""A contract every proxy of the registry keeps (issue 19): its score does not depend on the order
of the training rows nor on the names of the classes.

Parametrised over ``PROXIES``, so a new proxy is covered without editing this file. A proxy whose
method is order-dependent by its authors' design declares the measured size in its spec
(``ProxySpec.order_tolerance``) and is held to it; every other one to 1e-6 relative. Inputs:
rank-deficient D > N embeddings (ReLU-like, with near-duplicate rows; Gaussian blobs with d > n)
and an ordinary n > d one, all with source-class probabilities for the proxies that need them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_proxies import blobs, projected_pool, relu_embedding
from threadpoolctl import threadpool_limits

from whichmodel.actors import proxies as P
from whichmodel.actors.proxies import PROXIES, ProxyInput, run_proxy

RTOL = 1e-6
# smaller than the paper's grid so that the SGD probe takes a fraction of a second here
OPTIONS = {"linear": {"steps": 100, "batch_size": 16, "reps": 2, "lrs": (0.1,)}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def _relu_input() -> ProxyInput:
    x, y = relu_embedding(seed=0, n=60, d=150, c=3, rank=50)
    rng = np.random.default_rng(5)
    xv = x[::3] + rng.normal(size=x[::3].shape).astype(np.float32)
    probs, vprobs = rng.dirichlet(np.ones(7), size=len(y)), rng.dirichlet(np.ones(7), size=20)
    return ProxyInput(x, y, xv, y[::3], 3, probs, vprobs)


FIXTURES = {
    "relu_d_gt_n": _relu_input,  # rank < n < d, SFDA's shrinkage at its floor
    "blobs_d_gt_n": lambda: blobs(3, 40, 20, 80, 4, sep=1.0),
    "blobs_n_gt_d": lambda: blobs(4, 150, 40, 12, 3, sep=1.0),
}


def shuffled(inp: ProxyInput, seed: int) -> ProxyInput:
    p = np.random.default_rng(seed).permutation(len(inp.train_y))
    probs = None if inp.train_probs is None else inp.train_probs[p]
    return ProxyInput(
        inp.train_x[p], inp.train_y[p], inp.val_x, inp.val_y, inp.num_classes, probs, inp.val_probs
    )


def renamed(inp: ProxyInput, seed: int) -> ProxyInput:
    """Target classes renamed (both splits), and the source classes' columns permuted."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(inp.num_classes)
    if perm.tolist() == list(range(inp.num_classes)):
        perm = np.roll(perm, 1)
    cols = rng.permutation(inp.train_probs.shape[1]) if inp.train_probs is not None else None
    tp = None if cols is None else inp.train_probs[:, cols]
    vp = None if cols is None else inp.val_probs[:, cols]
    return ProxyInput(
        inp.train_x, perm[inp.train_y], inp.val_x, perm[inp.val_y], inp.num_classes, tp, vp
    )


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("fixture", list(FIXTURES))
@pytest.mark.parametrize("name", list(PROXIES))
def test_score_ignores_row_order_and_class_names(name, fixture):
    spec, inp, opts = PROXIES[name], FIXTURES[fixture](), OPTIONS.get(name, {})
    base = run_proxy(name, inp, **opts).score
    assert base is not None, f"{name} gave no score on {fixture}"
    order = max(rel(run_proxy(name, shuffled(inp, s), **opts).score, base) for s in range(3))
    names = max(rel(run_proxy(name, renamed(inp, s), **opts).score, base) for s in range(3))
    assert names <= RTOL, f"{name}: renaming the classes moved the score by {names:.1e}"
    assert order <= max(RTOL, spec.order_tolerance), f"{name}: row order moved it by {order:.1e}"


@pytest.mark.parametrize("name", [n for n, s in PROXIES.items() if s.order_tolerance > 0])
def test_declared_order_dependence_is_real_and_within_its_size(name):
    """A declared tolerance is not a blanket: the proxy does move with the order on the ReLU
    input, and never beyond what its spec says over twelve shuffles."""
    inp, opts = _relu_input(), OPTIONS.get(name, {})
    base = run_proxy(name, inp, **opts).score
    moves = [rel(run_proxy(name, shuffled(inp, s), **opts).score, base) for s in range(12)]
    assert max(moves) > RTOL
    assert max(moves) <= PROXIES[name].order_tolerance


def _relu_pool() -> dict[str, ProxyInput]:
    """Four "models" of one task: ReLU maps of different width and scale of the same rows."""
    x, y = relu_embedding(seed=1, n=100, d=150, c=3, rank=80)
    rng = np.random.default_rng(2)
    pool = {}
    for k, (dim, scale) in enumerate([(150, 1.0), (40, 3.0), (200, 0.5), (90, 2.0)]):
        f = np.maximum(x @ rng.normal(size=(150, dim)) / 12.0, 0.0) * scale
        pool[f"r{k}"] = ProxyInput(f.astype(np.float32), y, f[:6].astype(np.float32), y[:6], 3)
    return pool


@pytest.mark.parametrize("pool_maker", [projected_pool, _relu_pool])
@pytest.mark.parametrize("name", [n for n, s in PROXIES.items() if s.pool_combine is not None])
def test_pool_combined_scores_ignore_row_order_and_class_names(name, pool_maker):
    """NCTI and ETran rank a pool by min-maxed terms: the pool's scores are invariant too (the
    same row permutation and renaming applied to every model's embedding of the task)."""
    pool = pool_maker()

    def scores(inputs: dict[str, ProxyInput]) -> np.ndarray:
        res = [run_proxy(name, inp) for inp in inputs.values()]
        return P.pool_scores(name, [r.score for r in res], [r.runs for r in res], list(inputs))

    base = scores(pool)
    assert len(base) >= 4 and np.all(np.isfinite(base))
    for s in range(2):
        for change in (shuffled, renamed):
            got = scores({m: change(inp, s) for m, inp in pool.items()})
            np.testing.assert_allclose(got, base, rtol=RTOL, atol=1e-9, err_msg=change.__name__)
