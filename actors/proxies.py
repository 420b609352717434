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
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import cho_factor, cho_solve

from whichmodel.actors.models import to_tensor
from whichmodel.actors.sampling import batch_indices
from whichmodel.core.registry import STRATEGY_PREFIXES, Registry


@dataclass(frozen=True)
class ProxyInput:
    """Embeddings and labels of one (model, task)."""

    train_x: np.ndarray  # (n, d) float32
    train_y: np.ndarray  # (n,) int64 in 0..C-1
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int  # C (classes of the task; some may be absent from a split)
    train_probs: np.ndarray | None = None  # (n, K) source-class probabilities
    val_probs: np.ndarray | None = None


@dataclass(frozen=True)
class ProxyResult:
    """A proxy's score (higher is better; ``None`` = not applicable, see ``reason``)."""

    score: float | None
    reason: str = ""
    runs: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# shared helpers


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


def _split(inp: ProxyInput, split: str, probs: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Features (or source probabilities) and labels of the split a one-split score uses."""
    if split == "train":
        x = inp.train_probs if probs else inp.train_x
        return np.asarray(x, dtype=np.float64), np.asarray(inp.train_y, dtype=np.int64)
    if split == "trainval":
        xs = (inp.train_probs, inp.val_probs) if probs else (inp.train_x, inp.val_x)
        if probs and xs[1] is None:
            raise ValueError("split='trainval' needs val_probs")
        x = np.concatenate([np.asarray(a, dtype=np.float64) for a in xs])
        return x, np.concatenate([inp.train_y, inp.val_y]).astype(np.int64)
    raise ValueError(f"split must be 'train' or 'trainval', got {split!r}")


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


# ---------------------------------------------------------------------------------------------
# LogME


def _logme_basis(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and singular values, as thuml/LogME's ``_fit_fixed_point``.

    n > d: eigen-decomposition of fᵀf (thuml's ``truncated_svd``: keeps s > 1e-10); otherwise the
    thin SVD of f with all n singular values (zeros included).
    """
    n, d = f.shape
    if n > d:
        _, s, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(s)
        k = int(np.sum(s > 1e-10))
        return (f @ vh[:k].T) / s[:k], s[:k]
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    return u, s


def logme_evidences(f: np.ndarray, targets: np.ndarray, exact: bool = False) -> np.ndarray:
    """Per-target maximum evidence / n, thuml/LogME ``LogME._fit_fixed_point`` (vectorised).

    Fixed-point iterations on t = α/β from α = β = 1 (at most 11, stop when t moves by
    ≤ 0.1 %, 1e-5 added to both denominators); like thuml, the final evidence uses the last α, β
    with the residual and ‖m‖² of the iteration that produced them. thuml takes log|A| over the
    k = min(n, d) (n > d: non-zero) singular values only; ``exact=True`` adds the (d - k)
    eigenvalues α of A = αI + βFᵀF, giving the exact evidence when d > n.
    """
    n, d = f.shape
    u, s = _logme_basis(f)
    sigma = (s**2)[:, None]  # (k, 1)
    x2 = (u.T @ targets) ** 2  # (k, T)
    res_x2 = (targets**2).sum(0) - x2.sum(0)
    m = targets.shape[1]
    alpha, beta = np.ones(m), np.ones(m)
    m2, res2 = np.zeros(m), np.zeros(m)
    active = np.ones(m, dtype=bool)
    for _ in range(11):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum(0)
        new_m2 = (sigma * x2 / (t + sigma) ** 2).sum(0)
        new_res2 = (x2 / (1 + sigma / t) ** 2).sum(0) + res_x2
        new_alpha = gamma / (new_m2 + 1e-5)
        new_beta = (n - gamma) / (new_res2 + 1e-5)
        alpha = np.where(active, new_alpha, alpha)
        beta = np.where(active, new_beta, beta)
        m2 = np.where(active, new_m2, m2)
        res2 = np.where(active, new_res2, res2)
        active &= np.abs(new_alpha / new_beta - t) / t > 1e-3
        if not active.any():
            break
    logdet = np.log(alpha + beta * sigma).sum(0)
    if exact:
        logdet = logdet + (d - len(s)) * np.log(alpha)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * logdet
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * np.log(2 * np.pi)
    )
    return evidence / n


def logme(inp: ProxyInput, *, exact: bool = False, split: str = "train") -> ProxyResult:
    """LogME (You et al., ICML 2021), as thuml/LogME ``LogME.fit`` (LogME.py, fixed-point).

    Classification: one one-hot target per class, score = mean of the per-class evidence / n.
    Classes absent from the split are skipped (thuml loops over ``range(y.max() + 1)``, which
    would score an all-zero target, whose evidence is an artefact of the 1e-5 terms).
    """
    f, y = _split(inp, split)
    if not np.any(f):
        raise ValueError("logme: every training feature is zero (no evidence to compute)")
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)
    ev = logme_evidences(f, targets, exact=exact)
    runs = [{"class": int(c), "evidence": float(e)} for c, e in zip(classes, ev, strict=True)]
    return ProxyResult(float(np.mean(ev)), runs=runs)


# ---------------------------------------------------------------------------------------------
# regularized H-score


def ledoit_wolf_shrinkage(xc: np.ndarray) -> float:
    """scikit-learn's ``ledoit_wolf_shrinkage`` of centred data, via the smaller Gram matrix.

    Σ_jk (X²ᵀX²)_jk = Σ_i ‖x_i‖⁴ and ‖XᵀX‖_F = ‖XXᵀ‖_F, so no d×d matrix is formed.
    """
    n, d = xc.shape
    if d == 1:
        return 0.0
    x2 = xc**2
    emp_cov_trace = x2.sum(0) / n
    mu = emp_cov_trace.sum() / d
    beta_ = float((x2.sum(1) ** 2).sum())
    gram = xc @ xc.T if n <= d else xc.T @ xc
    delta_ = float((gram**2).sum()) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + d * mu**2) / d
    if delta <= 0:  # S = μI exactly: nothing to shrink (scikit-learn would divide by zero)
        return 0.0
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _class_means(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), f.shape[1]))
    np.add.at(sums, inv, f)
    return sums / counts[:, None], counts


def hscore_reg(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """Regularized H-score (Ibrahim et al. 2022), as Transfer-Learning-Library
    ``tllib/ranking/hscore.py::regularized_h_score``.

    tr(pinv(Σ_α) (1-α) cov(E[f|y])) with centred f, Σ_α the Ledoit-Wolf covariance (shrinkage α)
    and ``np.cov`` (ddof=1) of the class-mean features. Same value, computed without the d×d
    matrices when n < d: the class means lie in the span of the training rows, so the trace
    reduces to the n×n Gram matrix (Woodbury). ``pinv``'s cut-off (rcond=1e-15) is kept.
    """
    f, y = _split(inp, split)
    n, d = f.shape
    if n < 2:
        raise ValueError("hscore_reg needs at least 2 examples")
    f = f - f.mean(0, keepdims=True)
    alpha = ledoit_wolf_shrinkage(f)
    means, counts = _class_means(f, y)
    mc = means - (counts @ means) / n  # rows of the centred class-mean matrix g
    c = alpha * float((f**2).sum()) / (n * d)  # shrinkage × μ, μ = tr(S)/d
    if n >= d:
        cov = (1.0 - alpha) * (f.T @ f) / n + c * np.eye(d)
        covg = (mc.T * counts) @ mc / (n - 1)
        quad = float(np.sum(np.linalg.pinv(cov, rcond=1e-15) * ((1.0 - alpha) * covg)))
        return ProxyResult(quad, runs=[{"shrinkage": alpha}])
    e, u = np.linalg.eigh(f @ f.T)
    e = np.clip(e, 0.0, None)
    lam = (1.0 - alpha) * e / n + c  # eigenvalues of Σ_α on the span of the rows
    top = max(float(lam.max()), c)
    if top <= 0:  # all features constant: Σ_α = 0, pinv = 0
        return ProxyResult(0.0, runs=[{"shrinkage": alpha}])
    q2 = ((mc @ f.T) @ u) ** 2  # (C, n): (mc · f_rowsᵀ u_i)²
    if c > 1e-15 * top:
        per = (mc**2).sum(1) / c - (1.0 - alpha) / (n * c) * (q2 / lam).sum(1)
    else:  # Σ_α singular: pinv drops the null space and eigenvalues under the cut-off
        keep = (lam > 1e-15 * top) & (e > 0)
        per = (q2[:, keep] / (e[keep] * lam[keep])).sum(1)
    score = (1.0 - alpha) * float(counts @ per) / (n - 1)
    return ProxyResult(score, runs=[{"shrinkage": alpha}])


# ---------------------------------------------------------------------------------------------
# GBC


def gbc(
    inp: ProxyInput,
    *,
    gaussian_type: str = "spherical",
    pca: float | None = None,
    split: str = "train",
) -> ProxyResult:
    """Gaussian Bhattacharyya coefficient (Pándy et al., CVPR 2022), as google-research
    ``stable_transfer/transferability/gbc.py::get_gbc_score``.

    Per present class: mean and population variance per dimension, floored at 1e-4; spherical =
    the mean of those floored variances. D_B = Σ(μ1-μ2)²/σ̄ / 8 + ½[Σlog σ̄ - ½Σlog σ1 - ½Σlog σ2]
    with σ̄ = (σ1+σ2)/2; score = -Σ over ordered class pairs (c1 ≠ c2) of exp(-D_B). Their
    spherical log term is a single scalar (not × d), kept as is. ``pca``: their optional
    ``pca_reduction`` (scikit-learn PCA, full SVD) before scoring.
    """
    if gaussian_type not in ("spherical", "diagonal"):
        raise ValueError(f"gaussian_type must be 'spherical' or 'diagonal', got {gaussian_type!r}")
    f, y = _split(inp, split)
    if pca is not None:
        from sklearn.decomposition import PCA

        f = PCA(n_components=pca, svd_solver="full").fit_transform(f)
    means, _ = _class_means(f, y)
    classes = np.unique(y)
    var = np.stack([f[y == c].var(0) for c in classes])
    var = np.maximum(var, 1e-4)
    if gaussian_type == "spherical":
        var = var.mean(1, keepdims=True)
    log_var = np.log(var).sum(1)
    total = 0.0
    for i in range(len(classes)):
        avg = (var[i] + var) / 2.0
        first = ((means[i] - means) ** 2 / avg).sum(1) / 8.0
        second = np.log(avg).sum(1) - 0.5 * log_var[i] - 0.5 * log_var
        bc = np.exp(-(first + 0.5 * second))
        bc[i] = 0.0  # only c1 != c2 (subtracting exp(0) = 1 would cancel tiny sums)
        total += float(bc.sum())
    return ProxyResult(-total, runs=[{"gaussian_type": gaussian_type, "classes": len(classes)}])


# ---------------------------------------------------------------------------------------------
# LEEP and NCE (need a source head)


def _no_head(name: str) -> ProxyResult:
    return ProxyResult(
        None, reason=f"model has no source head ({name} needs source-class probabilities)"
    )


def _source_target_joint(weights: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical joint P(y, z) (C, K) from per-example source weights (probs or one-hot)."""
    joint = np.zeros((num_classes, weights.shape[1]))
    np.add.at(joint, y, weights)
    return joint / len(y)


def leep(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """LEEP (Nguyen et al., ICML 2020): mean log Σ_z P̂(y_i|z) θ(x_i)_z on the training split.

    P̂(y|z) = P̂(y, z) / P̂(z) with P̂(y, z) = Σ_{i: y_i = y} θ(x_i)_z / n; a source class that no
    example reaches (P̂(z) = 0) contributes 0 (thuml/LogME ``LEEP.py`` and TLlib
    ``tllib/ranking/leep.py`` would give NaN there; google-research stable_transfer ``leep.py``
    uses divide_no_nan, as here).
    """
    if inp.train_probs is None:
        return _no_head("LEEP")
    theta, y = _split(inp, split, probs=True)
    joint = _source_target_joint(theta, y, inp.num_classes)
    pz = joint.sum(0)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y|z), (C, K)
    eep = np.einsum("ik,ik->i", theta, cond[y])
    if np.any(eep <= 0):
        raise ValueError("leep: an example has zero expected empirical prediction")
    return ProxyResult(float(np.mean(np.log(eep))), runs=[{"source_classes": theta.shape[1]}])


def nce(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """NCE (Tran et al., ICCV 2019): -H(Y|Z) with Z = argmax source prediction (first on ties).

    H(Y|Z) = -Σ P̂(y, z) log(P̂(y, z) / P̂(z)); empty cells and unreached source classes
    contribute 0, as TLlib ``tllib/ranking/nce.py`` (which masks P̂(z) = 0 and adds 1e-20 inside
    the log; thuml/LogME ``NCE.py`` would give NaN there).
    """
    if inp.train_probs is None:
        return _no_head("NCE")
    theta, y = _split(inp, split, probs=True)
    z = theta.argmax(1)
    onehot = np.zeros_like(theta)
    onehot[np.arange(len(z)), z] = 1.0
    joint = _source_target_joint(onehot, y, inp.num_classes)
    pz = np.broadcast_to(joint.sum(0, keepdims=True), joint.shape)
    nz = joint > 0
    cond_entropy = -float(np.sum(joint[nz] * np.log(joint[nz] / pz[nz])))
    return ProxyResult(-cond_entropy + 0.0, runs=[{"source_classes_hit": int(len(set(z)))}])


# ---------------------------------------------------------------------------------------------
# SFDA, NCTI, ETran, PARC (newer estimators; scored on one split, like LogME)


def _present_classes(y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Present classes, each example's position among them, and the class counts."""
    classes, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"{name} needs at least 2 classes in the scored split")
    return classes, inv, counts


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(1, keepdims=True)


def _power_top_eigenvalue(a: np.ndarray, iterations: int = 3) -> float:
    """TencentARC/SFDA ``utils.py::iterative_A``: 3 power steps from the row sums, xᵀAy.

    A zero matrix gives 0 (their code would divide 0 by 0)."""
    x = a.sum(1)
    y = x
    for _ in range(iterations):
        t = a @ x
        norm = np.linalg.norm(t)
        if norm == 0:
            return 0.0
        y = t / norm
        t = a @ y
        norm = np.linalg.norm(t)
        if norm == 0:
            return 0.0
        x = t / norm
    return float(x @ a @ y)


def _sfda_posteriors(
    f: np.ndarray, inv: np.ndarray, counts: np.ndarray, shrinkage: float | None
) -> tuple[np.ndarray, float, np.ndarray]:
    """One regularised Fisher discriminant of SFDA: (posteriors (n, C), shrinkage, class means).

    S_w = Σ_c π_c cov(X_c) (population covariances), shrunk as (1-λ)S_w + λ tr(S_w)/d I with
    λ = max(exp(-5 σ_max(S_w)), 1e-10) unless given. The authors keep *every* generalised
    eigenvector V of (S_b, S_w,λ) (VᵀS_w,λV = I), so their coef = μVVᵀ = μ S_w,λ⁻¹: the
    projection is LDA with the shrunk within-class scatter, solved here without the eigenproblem
    by a Cholesky factorisation of S_w,λ (symmetric positive definite). At the 1e-10 floor with
    d > n, S_w,λ has a condition number near 1e13: a general LU solve (``np.linalg.solve``, used
    before) then moved the score with the row order (0.43-0.85 on one real embedding), while the
    Cholesky route equals the authors' ``scipy.linalg.eigh(S_b, S_w,λ)`` to ~2e-8
    (tests/test_proxies.py, ill-conditioned fixture).
    """
    n, d = f.shape
    means = np.zeros((len(counts), d))
    np.add.at(means, inv, f)
    means /= counts[:, None]
    within = f - means[inv]
    sw = within.T @ within / n  # Σ_c (n_c/n) cov_pop(X_c)
    if shrinkage is None:
        shrinkage = max(math.exp(-5.0 * _power_top_eigenvalue(sw)), 1e-10)
    mu = float(np.trace(sw)) / d
    if mu == 0:  # no within-class spread at all: shrink towards the identity
        mu = 1.0
    sw_shrunk = (1.0 - shrinkage) * sw
    sw_shrunk.flat[:: d + 1] += shrinkage * mu
    try:
        coef = cho_solve(cho_factor(sw_shrunk), means.T).T  # μ S_w,λ⁻¹ (S_w,λ SPD)
    except np.linalg.LinAlgError:  # not numerically positive definite: its eigenbasis
        vals, vecs = np.linalg.eigh(sw_shrunk)
        vals = np.clip(vals, shrinkage * mu, None)
        coef = ((means @ vecs) / vals) @ vecs.T
    priors = counts / n
    intercept = -0.5 * np.einsum("cd,cd->c", means, coef) + np.log(priors)
    return _softmax_rows(f @ coef.T + intercept), shrinkage, means


def sfda(inp: ProxyInput, *, split: str = "train") -> ProxyResult:
    """SFDA (Shao et al., ECCV 2022, "Not All Models Are Equal"), as TencentARC/SFDA
    ``metrics.py::SFDA_Score`` (commit eb1eee0).

    A regularised Fisher discriminant gives p(y|x); the probabilities are softened by a second
    softmax; ConfMix moves each example towards the mean of the *other* classes' means by
    (1 - p(y_i|x_i)); a second discriminant with the same λ is fitted on the mixed features and
    the score is the mean p(y_i|x̃_i) (their code drops the log, "in case of instability").
    Classes are indexed by position among the present ones (their loop assumes labels 0..C-1).
    The rows are put in a canonical (lexicographic) order first: the score is a mean over rows,
    and where S_w,λ is ill-conditioned (condition ~1e13) the rounding of the sums would otherwise
    still move it by ~1e-6 with the order the rows come in.
    """
    f, y = _split(inp, split)
    order = np.lexsort(np.vstack([y, f.T[::-1]]))  # by the features, first column first
    f, y = f[order], y[order]
    _, inv, counts = _present_classes(y, "sfda")
    prob, lam, means = _sfda_posteriors(f, inv, counts, None)
    prob = _softmax_rows(prob)  # "soften the probability using softmax"
    others = (means.sum(0, keepdims=True) - means) / (len(counts) - 1)
    p_true = prob[np.arange(len(y)), inv][:, None]
    mixed = p_true * f + (1.0 - p_true) * others[inv]
    prob2, _, _ = _sfda_posteriors(mixed, inv, counts, lam)
    score = float(prob2[np.arange(len(y)), inv].mean())
    return ProxyResult(score, runs=[{"shrinkage": lam, "classes": len(counts)}])


def _pca_exact(f: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the top-k principal components (exact) and all explained variances.

    Eigendecomposition of the smaller of the n×n and d×d Gram matrices (an SVD with vectors of
    an 800×2048 matrix is ~30x slower on the CPU); component signs do not matter downstream.
    """
    fc = f - f.mean(0, keepdims=True)
    n, d = fc.shape
    evals, evecs = np.linalg.eigh(fc @ fc.T if n <= d else fc.T @ fc)
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    scores = evecs[:, :k] * np.sqrt(evals[:k]) if n <= d else fc @ evecs[:, :k]
    return scores, evals / max(n - 1, 1)


def _lda_fit(
    x: np.ndarray, inv: np.ndarray, counts: np.ndarray, shrinkage: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LinearDiscriminantAnalysis in closed form: (transform, predict_proba).

    Shared covariance Σ: with ``shrinkage`` (solver 'eigen') Σ_c π_c [(1-s)S_c + s tr(S_c)/p I]
    with S_c the class's population covariance; without (solver 'svd') XcᵀXc/n of the
    class-centred rows (scikit-learn 1.9; older releases divided by n - C).
    Posteriors: softmax((x-x̄)Σ⁻¹(μ_c-x̄) - ½‖μ_c-x̄‖²_Σ⁻¹ + log π_c).
    Transform: centred x on the top min(C-1, rank) generalised eigenvectors of (S_b, Σ),
    normalised to VᵀΣV = I (what both solvers' ``scalings_`` are); for 'eigen' S_b is their
    shrunk total covariance minus Σ, i.e. (1-s) S_b + s tr(S_b)/p I. Σ is whitened on its
    numerically non-zero eigenvalues, so a singular Σ stays finite. Known departure ('svd'):
    scikit-learn keeps the directions whose singular value, after scaling each feature by its
    within-class std, exceeds 1e-4, so it also keeps rounding-noise components blown up to unit
    scale; on rank-deficient inputs with n <= 64 (a 60-row ReLU fixture of issue 19) the two
    then differ (S_ncc 0.96 here, 0.42 theirs). Following their rule made the score move with
    the row order (1e-3 to 1e-2 relative), so this rule is kept.
    """
    n, p = x.shape
    c = len(counts)
    priors = counts / n
    means = np.zeros((c, p))
    np.add.at(means, inv, x)
    means /= counts[:, None]
    xc = x - means[inv]
    if shrinkage is None:
        sigma = xc.T @ xc / n
    else:
        sigma = np.zeros((p, p))
        for j in range(c):
            rows = xc[inv == j]
            s_c = rows.T @ rows / len(rows)
            sigma += priors[j] * ((1.0 - shrinkage) * s_c)
            sigma.flat[:: p + 1] += priors[j] * shrinkage * float(np.trace(s_c)) / p
    evals, evecs = np.linalg.eigh(sigma)
    top = float(evals.max()) if evals.size else 0.0
    keep = evals > max(top, 0.0) * 1e-12
    white = evecs[:, keep] / np.sqrt(evals[keep])  # WᵀΣW = I
    xbar = priors @ means
    mw = (means - xbar) @ white  # class centres, whitened
    zw = (x - xbar) @ white
    logits = zw @ mw.T - 0.5 * (mw**2).sum(1) + np.log(priors)
    between = np.sqrt(counts)[:, None] * mw
    if shrinkage is not None and between.size:  # 'eigen': S_b = shrunk S_t - Σ, full rank
        sb_trace = float(counts @ ((means - xbar) ** 2).sum(1)) / n
        sbw = (
            1.0 - shrinkage
        ) * between.T @ between / n + shrinkage * sb_trace / p * white.T @ white
        vals, vecs = np.linalg.eigh(sbw)
        low = zw @ vecs[:, ::-1][:, : min(c - 1, p)]
    elif between.size:
        _, s, vt = np.linalg.svd(between, full_matrices=False)
        rank = int(np.sum(s > 1e-4 * s[0])) if s.size and s[0] > 0 else 0
        k = min(c - 1, rank)
        low = zw @ vt[:k].T
    else:
        low = np.zeros((n, 0))
    return low, _softmax_rows(logits)


def ncti(inp: ProxyInput, *, pca_dims: int = 64, split: str = "train") -> ProxyResult:
    """NCTI (Wang et al., CVPR 2023, "How Far Pre-trained Models Are from Neural Collapse on the
    Target Dataset Informs their Transferability"), as BUserName/NCTI ``metrics.py::NCTI_Score``
    and ``evaluate_metric_group1_cpu.py`` (commit 770be72).

    PCA to 64 dimensions; shrinkage s = max(exp(-Σ top-32 explained variances), 1e-10), and
    scikit-learn LDA with that shrinkage ('eigen') or, when s hits 1e-10, without ('svd').
    Three terms: S_seli = nuclear norm of the centred LDA projection (within-class collapse),
    S_ncc = mean LDA posterior of the true class (nearest-centre classifiability) and
    S_vc = log Σ_c nuclear norm of class c's posterior rows. The authors min-max normalise each
    term over the *model pool* of a task and score S_ncc + S_seli - S_vc; a per-(model, task)
    proxy cannot see the pool, so this score is the raw S_ncc + S_seli - S_vc (the three terms
    are in ``runs``). ``ncti_pool`` is the authors' pool step, applied wherever a pool is ranked.
    Deviations: the PCA is exact (their scikit-learn default may pick the randomised solver,
    which their script seeds through ``fix_python_seed(1)``; exact and randomised agree to
    rounding on well-separated spectra) and keeps at most min(64, n, d) components; classes are
    indexed among the present ones.
    """
    if pca_dims < 1:
        raise ValueError(f"ncti: pca_dims must be >= 1, got {pca_dims}")
    f, y = _split(inp, split)
    _, inv, counts = _present_classes(y, "ncti")
    k = min(pca_dims, f.shape[0], f.shape[1])
    x, explained = _pca_exact(f, k)
    temp = max(math.exp(-float(explained[:k][:32].sum())), 1e-10)
    shrinkage = None if temp == 1e-10 else temp
    low, prob = _lda_fit(x, inv, counts, shrinkage)
    low = low - low.mean(0, keepdims=True)
    seli = float(np.linalg.norm(low, ord="nuc")) if low.size else 0.0
    ncc = float(prob[np.arange(len(y)), inv].mean())
    vc_sum = sum(float(np.linalg.norm(prob[inv == j], ord="nuc")) for j in range(len(counts)))
    vc = math.log(vc_sum)
    run = {"seli": seli, "ncc": ncc, "vc": vc, "shrinkage": shrinkage, "pca_dims": k}
    return ProxyResult(ncc + seli - vc, runs=[run])


def etran(inp: ProxyInput, *, energy_weight: float = 0.15, split: str = "train") -> ProxyResult:
    """ETran (Gholami et al., ICCV 2023, "ETran: Energy-Based Transferability Estimation"), as
    mgholamikn/ETran ``metrics.py::Energy_Score``/``LDA_Score`` and ``tw.py`` (commit a63361e).

    S_en: the energy logsumexp(f) of each example's *features* (their code feeds features as
    logits), averaged over the lowest 0.5 % (``Energy_Score(X, 0.5, 'bot')``: 5n//1000 examples,
    here at least 1). S_lda: mean p(y_i|x_i) of their ``LDA`` class. Quirk kept: it projects
    with the eigenvectors of ``np.linalg.eigh(inv(S_w) @ S_b)``, which are orthonormal, so its
    coef = μVVᵀ = μ and the posterior is softmax(x·μ_c - ½‖μ_c‖² + log π_c), whatever S_w.
    Score 0.15 S_en + 0.85 S_lda; the authors min-max normalise both terms over the model pool
    of a task first (``tw.py``), which a per-pair proxy cannot, so the terms are in ``runs`` and
    ``etran_pool`` is that pool step, applied wherever a pool is ranked.
    The paper's SVD term is for detection and absent from their classification code; left out.
    """
    if not 0.0 <= energy_weight <= 1.0:
        raise ValueError(f"etran: energy_weight must be in [0, 1], got {energy_weight}")
    f, y = _split(inp, split)
    _, inv, counts = _present_classes(y, "etran")
    top = f.max(1, keepdims=True)
    energy = (top + np.log(np.exp(f - top).sum(1, keepdims=True)))[:, 0]
    m = max(1, 5 * len(energy) // 1000)
    s_en = float(np.sort(energy, kind="stable")[:m].mean())
    means = np.zeros((len(counts), f.shape[1]))
    np.add.at(means, inv, f)
    means /= counts[:, None]
    logits = f @ means.T - 0.5 * (means**2).sum(1) + np.log(counts / len(y))
    s_lda = float(_softmax_rows(logits)[np.arange(len(y)), inv].mean())
    score = energy_weight * s_en + (1.0 - energy_weight) * s_lda
    run = {"energy": s_en, "lda": s_lda, "energy_examples": m, "energy_weight": energy_weight}
    return ProxyResult(score, runs=[run])


def _rank_average(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy's ``rankdata``)."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], len(v)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(v))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _row_correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation between rows; a constant row correlates 0 with everything."""
    xc = x - x.mean(1, keepdims=True)
    norm = np.linalg.norm(xc, axis=1, keepdims=True)
    xc = xc / np.where(norm > 0, norm, 1.0)
    return xc @ xc.T


def parc(inp: ProxyInput, *, n_dims: int = 32, split: str = "train") -> ProxyResult:
    """PARC (Bolya et al., NeurIPS 2021, "Scalable Diverse Model Selection for Accessible
    Transfer Learning"), as dbolya/parc ``methods.py::PARC`` (commit b05d062), n_dims=32 as in
    its ``demo.py`` and TencentARC/SFDA's ``PARC_Score``.

    Features: their ``feature_reduce`` (scikit-learn randomised PCA, random_state=1919,
    iterated_power=1, kept as is) then standardised. Dissimilarities 1 - Pearson between
    examples, of the features and of the one-hot labels; the score is 100 × the Spearman
    correlation of the two upper triangles (the paper says Pearson of the pairwise matrices; its
    code ranks them). Deviations: at most min(n_dims, n, d) components (their PCA would fail for
    d < n_dims); the label dissimilarities are exact (``np.corrcoef`` leaves ~1e-16 noise in
    them, which splits their ties arbitrarily and moves the score in the 3rd digit); components
    without spread (std <= 1e-10 of the largest component's: features of rank below ``n_dims``)
    are dropped (they hold rounding noise, ~1e-17 on demo embeddings) where the authors'
    ``StandardScaler`` blows that noise up to unit variance, so
    their PARC then correlates noise (efficientnet_lite2 on the demo's ``science``, rank 23 < 32
    components: theirs 8.25, ours 15.97, 15.87 with this project's earlier rule that kept them
    as zeros; the same ranking of the models there).
    """
    if n_dims < 1:
        raise ValueError(f"parc: n_dims must be >= 1, got {n_dims}")
    f, y = _split(inp, split)
    _present_classes(y, "parc")
    k = min(n_dims, f.shape[0], f.shape[1])
    from sklearn.decomposition import PCA

    f = PCA(n_components=k, svd_solver="randomized", random_state=1919,
            iterated_power=1).fit_transform(f)  # fmt: skip
    std = f.std(0)
    spread = std > 1e-10 * float(std.max(initial=0.0))  # relative: PARC ignores the scale
    f = (f[:, spread] - f[:, spread].mean(0)) / std[spread]
    iu = np.triu_indices(len(y), 1)
    a = _rank_average(1.0 - _row_correlation(f)[iu])
    # 1 - Pearson of one-hot rows is exactly 0 (same class) or 1 + 1/(C-1): ranks need only that
    b = _rank_average((y[iu[0]] != y[iu[1]]).astype(np.float64))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / denom if denom > 0 else 0.0
    return ProxyResult(100.0 * rho, runs=[{"n_dims": k, "kept_dims": int(spread.sum())}])


# ---------------------------------------------------------------------------------------------
# pool-level combination (NCTI, ETran): the authors min-max each term over the models of a pool


class MissingTerm(ValueError):
    """A scored model of a pool whose runs lack a term its proxy's ``pool_combine`` needs."""

    def __init__(self, index: int, key: str):
        super().__init__(f"pool model {index} has no finite {key!r} term")
        self.index, self.key = index, key


def minmax_pool(values: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min) over the finite entries, as both authors' pool loops compute it.

    NaN (a model without terms) stays NaN and takes no part in the min and max. A term equal
    on every model (max == min, also a pool of one) gives 0 for all: the authors' code divides
    by zero there (NCTI's NumPy gives NaN, ETran's Python floats raise), and a constant term
    cannot change a ranking, so 0 keeps the other terms' order."""
    v = np.asarray(values, dtype=np.float64)
    out = np.full(v.shape, np.nan)
    ok = ~np.isnan(v)
    if ok.any():
        lo, hi = float(v[ok].min()), float(v[ok].max())
        out[ok] = (v[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _pool_terms(terms: Sequence[Mapping | None], keys: Sequence[str]) -> np.ndarray:
    """(models × keys) array of the terms; a NaN row for a model without terms (None)."""
    out = np.full((len(terms), len(keys)), np.nan)
    for i, t in enumerate(terms):
        if t is None:
            continue
        for j, key in enumerate(keys):
            v = t.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MissingTerm(i, key)
            out[i, j] = v
    return out


def ncti_pool(terms: Sequence[Mapping | None]) -> np.ndarray:
    """NCTI over a pool as BUserName/NCTI ``evaluate_metric_group1_cpu.py`` (commit 770be72)
    scores it: each of S_seli, S_ncc, S_vc min-maxed over the pool's models
    (``(x - x.min()) / (x.max() - x.min())``), then S_ncc + S_seli - S_vc. ``terms``: per model
    the ``ncti`` run dict, or None (no score: NaN, out of the min and max); ``minmax_pool``
    says what a constant term gives."""
    t = _pool_terms(terms, ("seli", "ncc", "vc"))
    seli, ncc, vc = (minmax_pool(t[:, j]) for j in range(3))
    return ncc + seli - vc


def etran_pool(terms: Sequence[Mapping | None]) -> np.ndarray:
    """ETran over a pool as mgholamikn/ETran ``tw.py`` (commit a63361e) scores it: ``scale``
    min-maxes S_en (their ``energy`` scores) and S_lda (``lda``) over the pool's models, then
    0.15 S_en + 0.85 S_lda (the weight: the runs' ``energy_weight``, 0.15 where absent, one for
    the whole pool). ``terms``: per model the ``etran`` run dict, or None (NaN, out of the min
    and max); ``minmax_pool`` says what a constant term gives."""
    t = _pool_terms(terms, ("energy", "lda"))
    weights = {float(d.get("energy_weight", 0.15)) for d in terms if d is not None}
    if len(weights) > 1:
        raise ValueError(f"etran: the pool's models were scored with energy weights {weights}")
    w = weights.pop() if weights else 0.15
    return w * minmax_pool(t[:, 0]) + (1.0 - w) * minmax_pool(t[:, 1])


# ---------------------------------------------------------------------------------------------
# registry and the checked entry point


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
