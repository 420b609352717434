"""The paper's proxies, run with torch: kNN and the SGD linear probe (lr grid × repetitions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from whichmodel.actors.models import to_tensor
from whichmodel.actors.proxies.base import (
    ProxyInput,
    ProxyResult,
)
from whichmodel.actors.sampling import batch_indices


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    known = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in known:
        raise ValueError(f"dtype must be one of {sorted(known)}, got {dtype!r}")
    return known[dtype]


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).double().mean().item())


# ---------------------------------------------------------------------------------------------
# kNN (paper)


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Unit rows; all-zero rows stay zero (as scikit-learn's ``normalize``)."""
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    num_classes: int,
    *,
    k: int = 1,
    metric: str = "euclidean",
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """k-NN labels of ``query_x`` by brute force (matrix products in float64, chunked).

    Matches ``KNeighborsClassifier(algorithm='brute')``: euclidean distance as
    ``|q|² - 2 q·x + |x|²`` (what scikit-learn's ArgKmin computes, also in float64), cosine
    distance ``1 - q̂·x̂`` (zero rows stay zero). Equidistant neighbours: the smallest training
    index wins, as scikit-learn's euclidean k=1 (for k>1 its heap, and for cosine its
    ``argpartition``, may keep another of exactly tied neighbours; its cosine distances are in the
    input dtype, so float32 near-ties may also resolve differently). Vote ties go to the smallest
    label, as in scikit-learn.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    if not 1 <= k <= len(train_x):
        raise ValueError(f"k={k} must be between 1 and the number of training examples")
    dev = _device(device)
    xt = to_tensor(train_x, dev).to(torch.float64)
    xq = to_tensor(query_x, dev).to(torch.float64)
    yt = to_tensor(train_y, dev, np.int64)
    if metric == "cosine":
        xt, xq = _normalize_rows(xt), _normalize_rows(xq)
    xt_sq = (xt * xt).sum(1)
    # bound one block of distances to ~2**25 entries (256 MiB) whatever the split sizes
    rows = max(1, min(int(chunk), 2**25 // max(1, len(xt))))
    preds = []
    for start in range(0, len(xq), rows):
        q = xq[start : start + rows]
        if metric == "euclidean":
            dist = (q * q).sum(1, keepdim=True) - 2.0 * (q @ xt.T) + xt_sq
            dist = dist.clamp_min_(0.0)
        else:
            dist = (1.0 - q @ xt.T).clamp_(0.0, 2.0)
        if k == 1:
            idx = dist.argmin(dim=1, keepdim=True)  # first (smallest) index among ties
        else:
            idx = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        votes = F.one_hot(yt[idx], num_classes).sum(1)
        preds.append(votes.argmax(dim=1))  # first maximum: smallest label among vote ties
    return torch.cat(preds).cpu().numpy()


def knn(
    inp: ProxyInput,
    *,
    k: int = 1,
    metric: str = "euclidean",
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> ProxyResult:
    """Paper kNN proxy: validation accuracy of k-NN (default 1-NN, euclidean) on training."""
    pred = knn_predict(
        inp.train_x, inp.train_y, inp.val_x, inp.num_classes,
        k=k, metric=metric, chunk=chunk, device=device,
    )  # fmt: skip
    acc = float(np.mean(pred == np.asarray(inp.val_y)))
    return ProxyResult(acc, runs=[{"k": k, "metric": metric, "val_acc": acc}])


# ---------------------------------------------------------------------------------------------
# linear (paper)


def _check_linear_options(lrs: Sequence[float], steps: int, batch_size: int, reps: int) -> None:
    if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ValueError(f"lrs must be non-empty positive numbers, got {lrs!r}")
    if steps < 1 or batch_size < 1 or reps < 1:
        raise ValueError("steps, batch_size and reps must be >= 1")


def linear_sequential(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    *,
    lrs: Sequence[float] = (0.1, 0.01),
    steps: int = 2500,
    batch_size: int = 512,
    reps: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
) -> list[dict]:
    """The faithful reference: one (lr, rep) at a time, ``nn.Linear`` + ``optim.SGD`` + autograd.

    Zero-initialised weights and bias, plain SGD (no momentum, no weight decay) on the mean
    softmax cross-entropy of each minibatch; repetition ``r`` draws its batches with seed
    ``seed + r`` (the same for every lr). Returns one row per (lr, rep) in lr-major order:
    ``{"lr", "rep", "val_acc"}``.
    """
    _check_linear_options(lrs, steps, batch_size, reps)
    dev, dt = _device(device), _dtype(dtype)
    x = to_tensor(train_x, dev).to(dt)
    y = to_tensor(train_y, dev, np.int64)
    xv = to_tensor(val_x, dev).to(dt)
    yv = to_tensor(val_y, dev, np.int64)
    rows = []
    for lr in lrs:
        for rep in range(reps):
            idx = batch_indices(len(x), batch_size, steps, seed + rep).to(dev)
            layer = torch.nn.Linear(x.shape[1], num_classes, device=dev, dtype=dt)
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
            opt = torch.optim.SGD(layer.parameters(), lr=lr)
            for t in range(steps):
                loss = F.cross_entropy(layer(x[idx[t]]), y[idx[t]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                acc = _acc(layer(xv).argmax(1), yv)
            rows.append({"lr": float(lr), "rep": rep, "val_acc": acc})
    return rows


def _sgd_grid(
    feats: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    lrs: Sequence[float],
    num_classes: int,
    dual: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (rep, lr) SGD runs at once; returns parameters (R, d or n, L*C) and bias (R, L*C).

    Columns hold the L lrs side by side (``[lr0: C classes | lr1: C classes | ...]``) so one
    batched matmul serves every lr of a repetition (they share its batches). Primal: ``feats`` is
    X (n, d), parameters W (R, d, L*C). Dual: ``feats`` is the Gram matrix X Xᵀ (n, n) and the
    parameters A (R, n, L*C) with W = Xᵀ A: a zero-initialised SGD weight always lies in the
    span of the training rows, and a step adds Xᵀ S where S puts each batch row's gradient on
    its training index (``index_add_`` sums repeated indices), so both forms are the same SGD.
    """
    reps, steps, bsz = idx.shape
    n, cols = feats.shape[0], len(lrs) * num_classes
    dev, dt = feats.device, feats.dtype
    scale = torch.tensor(list(lrs), device=dev, dtype=dt).repeat_interleave(num_classes) / bsz
    params = torch.zeros(reps, feats.shape[1] if not dual else n, cols, device=dev, dtype=dt)
    bias = torch.zeros(reps, cols, device=dev, dtype=dt)
    offset = (torch.arange(reps, device=dev) * n)[:, None]
    flat = params.view(reps * n, cols) if dual else None
    for t in range(steps):
        it = idx[:, t]  # (R, B)
        rows = feats[it]  # (R, B, d) primal, (R, B, n) dual
        logits = torch.baddbmm(bias[:, None, :], rows, params)
        probs = torch.softmax(logits.view(reps, bsz, len(lrs), num_classes), dim=-1)
        target = F.one_hot(y[it], num_classes).to(dt)[:, :, None, :]
        grad = (probs - target).view(reps, bsz, cols) * scale  # lr × d(mean CE)/d(logits)
        if dual:
            flat.index_add_(0, (it + offset).reshape(-1), grad.reshape(-1, cols), alpha=-1.0)
        else:
            params.baddbmm_(rows.transpose(1, 2), grad, alpha=-1.0)
        bias.sub_(grad.sum(1))
    return params, bias


def linear_grid(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    *,
    lrs: Sequence[float] = (0.1, 0.01),
    steps: int = 2500,
    batch_size: int = 512,
    reps: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    dual: str = "auto",
) -> tuple[list[dict], str]:
    """Vectorised twin of ``linear_sequential`` (same batches, same rows); returns (rows, form).

    ``dual``: "auto" uses the Gram (dual) form when d > n, "always"/"never" force it.
    """
    _check_linear_options(lrs, steps, batch_size, reps)
    if dual not in ("auto", "always", "never"):
        raise ValueError(f"dual must be 'auto', 'always' or 'never', got {dual!r}")
    dev, dt = _device(device), _dtype(dtype)
    x = to_tensor(train_x, dev).to(dt)
    y = to_tensor(train_y, dev, np.int64)
    xv = to_tensor(val_x, dev).to(dt)
    yv = to_tensor(val_y, dev, np.int64)
    n, d = x.shape
    use_dual = dual == "always" or (dual == "auto" and d > n)
    idx = torch.stack([batch_indices(n, batch_size, steps, seed + r) for r in range(reps)], 0)
    idx = idx.to(dev)
    with torch.no_grad():
        feats = x @ x.T if use_dual else x
        params, bias = _sgd_grid(feats, y, idx, lrs, num_classes, use_dual)
        val_feats = xv @ x.T if use_dual else xv
        logits = (val_feats @ params + bias[:, None, :]).view(reps, len(xv), len(lrs), -1)
        acc = (logits.argmax(-1) == yv[None, :, None]).to(torch.float64).mean(1)  # (R, L)
    acc = acc.cpu().numpy()
    rows = [
        {"lr": float(lr), "rep": r, "val_acc": float(acc[r, j])}
        for j, lr in enumerate(lrs)
        for r in range(reps)
    ]
    return rows, "dual" if use_dual else "primal"


def select_linear(rows: list[dict]) -> tuple[float, list[dict]]:
    """Paper rule: per rep keep the lr with the best val accuracy; score = median over reps.

    Ties between lrs keep the smaller lr (the score is the same either way). Returns the score
    and the rows with a ``kept`` flag.
    """
    best: dict[int, int] = {}
    for i, row in enumerate(rows):
        j = best.get(row["rep"])
        if j is None or (row["val_acc"], -row["lr"]) > (rows[j]["val_acc"], -rows[j]["lr"]):
            best[row["rep"]] = i
    kept = set(best.values())
    out = [{**r, "kept": i in kept} for i, r in enumerate(rows)]
    score = float(np.median([rows[i]["val_acc"] for i in best.values()]))
    return score, out


def linear(
    inp: ProxyInput,
    *,
    lrs: Sequence[float] = (0.1, 0.01),
    steps: int = 2500,
    batch_size: int = 512,
    reps: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    dual: str = "auto",
) -> ProxyResult:
    """Paper linear proxy: median over reps of the best-lr val accuracy (see ``linear_grid``).

    The defaults are the paper's grid (lr ∈ {0.1, 0.01}, 2500 steps, batch 512, 5 reps); a preset
    passes its own numbers.
    """
    rows, form = linear_grid(
        inp.train_x, inp.train_y, inp.val_x, inp.val_y, inp.num_classes,
        lrs=lrs, steps=steps, batch_size=batch_size, reps=reps, seed=seed,
        device=device, dtype=dtype, dual=dual,
    )  # fmt: skip
    score, runs = select_linear(rows)
    return ProxyResult(score, runs=[{**r, "form": form} for r in runs])
