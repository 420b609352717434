"""Task-aware proxies behind one interface (docs/design.md §1 task-aware, §5 more proxies).

A proxy takes the train/validation embeddings and labels of one (model, task), plus the
source-class probabilities where it needs them, and returns a score where higher is better and
per-run detail. ``PROXIES`` is the one registry; ``run_proxy`` validates the inputs, times the
call and guarantees a finite score or ``None`` (not applicable, with a reason).

- ``knn`` (paper): k-NN accuracy on validation, labelled from training.
- ``linear`` (paper): SGD logistic regression on frozen embeddings, lr grid × repetitions run as
  one batched computation; ``linear_sequential`` is the faithful one-config-at-a-time loop.
- ``logme``, ``hscore_reg``, ``gbc``: label-aware scores of the training split.
- ``leep``, ``nce``: need source-class probabilities (a model with a source head).
- ``sfda``, ``ncti``, ``etran``, ``parc``: newer estimators (SFDA, NCTI, ETran, PARC), each
  checked against a transcription of its authors' code. NCTI and ETran score one (model, task)
  by the raw sum of their terms and put the terms in ``runs``; their ``ProxySpec.pool_combine``
  min-maxes the terms across the model pool of a task as the authors do, and ``pool_scores``
  is the one place every ranking of a pool (analysis, search, progressive rungs) applies it.

The scores computed on one split (LogME, H-score, GBC, LEEP, NCE) use the training split, as the
papers do ("computed on the target training set"); ``split="trainval"`` pools both splits.

The package: ``base`` (inputs, result, shared helpers), one module per family of scorers
(``probes``: kNN and the linear probe, with torch; ``evidence``: LogME, H-score, GBC; ``source``:
LEEP, NCE; ``discriminant``: SFDA, NCTI, ETran, PARC; ``pool``: the pool-level combination), and
this module: the registry and the checked entry point. Importing it does not import torch: the
torch scorers load on their first call, so the driver's analysis can rank by the registry.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from whichmodel.actors.proxies.base import ProxyInput, ProxyResult
from whichmodel.actors.proxies.discriminant import etran, ncti, parc, sfda
from whichmodel.actors.proxies.evidence import gbc, hscore_reg, logme
from whichmodel.actors.proxies.pool import MissingTerm, etran_pool, minmax_pool, ncti_pool
from whichmodel.actors.proxies.source import leep, nce
from whichmodel.core.registry import STRATEGY_PREFIXES, Registry

__all__ = [
    "PROXIES",
    "MissingTerm",
    "ProxyInput",
    "ProxyResult",
    "ProxySpec",
    "etran_pool",
    "minmax_pool",
    "ncti_pool",
    "pool_scores",
    "run_proxy",
    "validate_input",
]

_FAMILIES = ("base", "probes", "evidence", "source", "discriminant", "pool")


def __getattr__(name: str) -> Any:
    """Any scorer or helper of the families (``proxies.linear_grid``, ``proxies.knn_predict``),
    imported on first use so that the registry stays torch-free."""
    for family in _FAMILIES:
        module = importlib.import_module(f"{__name__}.{family}")
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(family: str, name: str) -> Callable[..., ProxyResult]:
    """``family.name``, imported on its first call (the torch scorers)."""

    def call(inp: ProxyInput, **options: Any) -> ProxyResult:
        return getattr(importlib.import_module(f"{__name__}.{family}"), name)(inp, **options)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``whichmodel.actors.proxies.{family}.{name}`` (imported on first call)."
    return call


knn = _lazy("probes", "knn")
linear = _lazy("probes", "linear")


@dataclass(frozen=True)
class ProxySpec:
    """A task-aware proxy and what the rest of the engine needs to know about it.

    ``fn(inp, **options) -> ProxyResult``; ``label``: its name in reports and search output;
    ``needs_val``: scores on the validation split (refused without one); ``needs_source_probs``:
    needs the model's source-class probabilities (other models get "not applicable");
    ``preset_section``: the preset table its options come from (``[NAME.<section>]``), if any;
    ``default``: run by a benchmark whose config names no proxies; ``pool_combine``: for a
    proxy whose authors normalise across the model pool, the pool's scores from its models'
    run dicts (one per model, None where not applicable; ``pool_scores`` applies it);
    ``order_tolerance``: 0 for a proxy whose score does not depend on the order of the training
    rows (to rounding; tests/test_proxy_contract.py holds every such proxy to 1e-6 relative),
    else the relative change a row shuffle caused by its authors' design, as measured there."""

    name: str
    fn: Callable[..., ProxyResult]
    label: str
    needs_val: bool = False
    needs_source_probs: bool = False
    preset_section: str | None = None
    default: bool = False
    pool_combine: Callable[[Sequence[Mapping | None]], np.ndarray] | None = None
    order_tolerance: float = 0.0


# The registry: the built-in proxies, then plugins (``whichmodel.register_proxy``, entry points of
# the group ``whichmodel.proxies``, loaded on first read: whichmodel.core.registry).
PROXIES: Registry[ProxySpec] = Registry(
    "whichmodel.proxies",
    "proxy",
    ProxySpec,
    ((spec.name, spec) for spec in (
        ProxySpec("knn", knn, "kNN", needs_val=True, preset_section="knn", default=True),
        # SGD minibatches are drawn by row position (``batch_indices``), as the paper's tf.data
        # shuffle: a row shuffle changes the batches. Measured: up to 0.21 relative (val accuracy,
        # 20 val rows) over 12 shuffles of the contract test's 60-row ReLU fixture.
        ProxySpec(
            "linear",
            linear,
            "linear-probe",
            needs_val=True,
            preset_section="linear",
            default=True,
            order_tolerance=0.25,
        ),  # fmt: skip
        ProxySpec("logme", logme, "LogME"),
        ProxySpec("hscore_reg", hscore_reg, "H-score"),
        ProxySpec("gbc", gbc, "GBC"),
        ProxySpec("leep", leep, "LEEP", needs_source_probs=True),
        ProxySpec("nce", nce, "NCE", needs_source_probs=True),
        ProxySpec("sfda", sfda, "SFDA"),
        ProxySpec("ncti", ncti, "NCTI", pool_combine=ncti_pool),
        ProxySpec("etran", etran, "ETran", pool_combine=etran_pool),
        # randomised PCA (the authors' feature_reduce): its seeded random projection meets the
        # rows in their order. Measured: up to 0.057 relative over 12 shuffles of the contract
        # test's ReLU fixture (D > N); ~2 % on a demo embedding (issue 19).
        ProxySpec("parc", parc, "PARC", order_tolerance=0.08),
    )),
    reserved_prefixes=STRATEGY_PREFIXES,
)  # fmt: skip


def _check_xy(name: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> None:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"{name}_x must be 2-D (n, d), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{name}_y must be 1-D with {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}_x must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}_x has non-finite values (NaN or inf)")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}_y must hold integer labels, got dtype {y.dtype}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name}_y has labels outside 0..{num_classes - 1} (min {y.min()}, max {y.max()})"
        )


def _check_probs(name: str, probs: np.ndarray | None, n: int, k: int | None) -> None:
    if probs is None:
        return
    p = np.asarray(probs)
    if p.ndim != 2 or len(p) != n or (k is not None and p.shape[1] != k):
        raise ValueError(f"{name}_probs must have shape ({n}, K), got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError(f"{name}_probs must be finite and non-negative")
    if n and not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError(f"{name}_probs rows must sum to 1 (source-class probabilities)")


def validate_input(inp: ProxyInput) -> None:
    """Raise ValueError naming the first problem with ``inp`` (shapes, finiteness, labels)."""
    if int(inp.num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {inp.num_classes}")
    _check_xy("train", inp.train_x, inp.train_y, inp.num_classes)
    _check_xy("val", inp.val_x, inp.val_y, inp.num_classes)
    if len(inp.train_y) == 0:
        raise ValueError("train split is empty")
    d_train, d_val = np.asarray(inp.train_x).shape[1], np.asarray(inp.val_x).shape[1]
    if d_train != d_val:
        raise ValueError(f"train_x has {d_train} dimensions but val_x has {d_val}")
    if inp.train_probs is None and inp.val_probs is not None:
        raise ValueError("val_probs given without train_probs")
    _check_probs("train", inp.train_probs, len(inp.train_y), None)
    k = None if inp.train_probs is None else np.asarray(inp.train_probs).shape[1]
    _check_probs("val", inp.val_probs, len(inp.val_y), k)


def run_proxy(name: str, inp: ProxyInput, **options) -> ProxyResult:
    """Validate ``inp``, run proxy ``name`` with ``options``, time it; the score is finite or None.

    Raises ValueError for an unknown proxy, invalid inputs, or a proxy that produced NaN/inf.
    """
    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}")
    validate_input(inp)
    spec = PROXIES[name]
    if spec.needs_val and len(inp.val_y) == 0:
        raise ValueError(f"{name} needs a non-empty validation split")
    start = time.perf_counter()
    result = spec.fn(inp, **options)
    seconds = time.perf_counter() - start
    if result.score is not None:
        if not math.isfinite(result.score):
            raise ValueError(f"proxy {name!r} produced a non-finite score ({result.score})")
        result = replace(result, score=float(result.score))
    elif not result.reason:
        raise ValueError(f"proxy {name!r} returned no score and no reason")
    return replace(result, seconds=seconds)


def pool_scores(
    proxy: str,
    scores: Sequence[float | None] | np.ndarray,
    runs: Sequence[Sequence[Mapping] | None],
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """The scores by which ``proxy`` ranks the models of ONE pool on ONE task.

    ``scores``: each model's score as the proxy returned it (None/NaN: not applicable);
    ``runs``: each model's ``ProxyResult.runs``. A proxy without ``pool_combine`` (also a name
    outside the registry, e.g. ``progressive_<proxy>``) ranks by ``scores`` as they are; one
    with it by ``pool_combine`` of the first run dict of every scored model (NaN stays NaN).
    Raises ValueError naming the model (``names``, else its position) whose runs lack a term.
    """
    raw = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    spec = PROXIES.get(proxy)
    if spec is None or spec.pool_combine is None:
        return raw
    if len(runs) != len(raw):
        raise ValueError(f"{proxy}: {len(raw)} scores but {len(runs)} runs")
    # a scored model with no runs gets {}: its missing terms are named below
    terms = [None if np.isnan(s) else (r[0] if r else {}) for s, r in zip(raw, runs, strict=True)]
    try:
        out = np.asarray(spec.pool_combine(terms), dtype=np.float64)
    except MissingTerm as e:
        who = repr(names[e.index]) if names is not None else f"number {e.index + 1}"
        raise ValueError(
            f"{proxy}: model {who} has a score but no finite {e.key!r} term in its runs"
        ) from None
    return np.where(np.isnan(raw), np.nan, out)
