"""Label-aware scores of the features: LogME, regularised H-score, GBC (NumPy)."""

from __future__ import annotations

import numpy as np

from whichmodel.actors.proxies.base import (
    ProxyInput,
    ProxyResult,
    _split,
)

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
