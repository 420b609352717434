"""Discriminant and geometry estimators, each as its authors' code: SFDA, NCTI, ETran, PARC
(NumPy/SciPy)."""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from whichmodel.actors.proxies.base import (
    ProxyInput,
    ProxyResult,
    _present_classes,
    _softmax_rows,
    _split,
)

# ---------------------------------------------------------------------------------------------
# SFDA, NCTI, ETran, PARC (newer estimators; scored on one split, like LogME)


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
