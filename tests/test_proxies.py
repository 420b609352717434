"""Proxies against independent references: scikit-learn, and NumPy written here from the papers.

Every reference below is deliberately naive (explicit matrices, per-example loops) so that it
shares no code path with ``whichmodel.actors.proxies``. "Real embeddings" come from a random-init
timm
ResNet on scikit-learn digits upsampled to 32 px: real image features, cheap to compute.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from whichmodel.actors import proxies as P
from whichmodel.actors.proxies import PROXIES, ProxyInput, ProxyResult, discriminant, run_proxy

# ---------------------------------------------------------------------------------------------
# data


def blobs(seed, n, nv, d, c, sep=3.0, k_source=7):
    """Gaussian class blobs (float32) with Dirichlet source-class probabilities."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * sep / math.sqrt(d)
    y = np.arange(n) % c
    yv = rng.integers(0, c, nv)
    x = (centres[y] + rng.normal(size=(n, d)) / math.sqrt(d)).astype(np.float32)
    xv = (centres[yv] + rng.normal(size=(nv, d)) / math.sqrt(d)).astype(np.float32)
    probs = rng.dirichlet(np.ones(k_source), size=n)
    vprobs = rng.dirichlet(np.ones(k_source), size=nv)
    return ProxyInput(x, y.astype(np.int64), xv, yv.astype(np.int64), c, probs, vprobs)


@pytest.fixture(scope="module")
def real():
    """Digits through a random-init resnet10t: 200 train / 100 val, dim 512, 20 source classes."""
    import timm
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(digits.target))[:300]
    img = torch.tensor(digits.images[pick] / 16.0, dtype=torch.float32)[:, None]
    img = torch.nn.functional.interpolate(img, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=20)
    for m in model.modules():  # calibrate BatchNorm on the images: activations of a sane scale
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(img)
        model.eval()
        feats = model.forward_head(model.forward_features(img), pre_logits=True)
        probs = torch.softmax(model.forward_head(model.forward_features(img)), dim=1)
    x, p = feats.numpy().astype(np.float32), probs.double().numpy()
    y = digits.target[pick].astype(np.int64)
    return ProxyInput(x[:200], y[:200], x[200:], y[200:], 10, p[:200], p[200:])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small arrays: one thread (torch, BLAS) is as fast, and does not fight a concurrent job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# kNN: scikit-learn's brute-force KNeighborsClassifier, exactly


def sk_knn_acc(inp, k=1, metric="euclidean"):
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=metric)
    return float(np.mean(clf.fit(inp.train_x, inp.train_y).predict(inp.val_x) == inp.val_y))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_knn_predictions_identical_to_sklearn(metric, k):
    inp = blobs(1, 150, 90, 16, 5, sep=1.5)
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=metric)
    want = clf.fit(inp.train_x, inp.train_y).predict(inp.val_x)
    got = P.knn_predict(inp.train_x, inp.train_y, inp.val_x, 5, k=k, metric=metric, chunk=7)
    np.testing.assert_array_equal(got, want)
    assert run_proxy("knn", inp, k=k, metric=metric).score == sk_knn_acc(inp, k, metric)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_knn_real_embeddings_identical_to_sklearn(real, metric):
    clf = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric=metric)
    want = clf.fit(real.train_x, real.train_y).predict(real.val_x)
    got = P.knn_predict(real.train_x, real.train_y, real.val_x, 10, metric=metric, chunk=33)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 3),
    st.integers(2, 4),
    st.integers(1, 15),
    st.integers(0, 2**32 - 1),
)
def test_knn_ties_break_like_sklearn(n, d, c, nq, seed):
    """Integer grid data: equidistant neighbours and duplicated rows are everywhere."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    q = rng.integers(-2, 3, size=(nq, d)).astype(np.float32)
    want = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x, y).predict(q)
    np.testing.assert_array_equal(P.knn_predict(x, y, q, c, chunk=4), want)


# ---------------------------------------------------------------------------------------------
# linear: the vectorised grid equals the plain loop; accuracy close to scikit-learn


LIN = dict(lrs=(0.1, 0.01), steps=150, batch_size=32, reps=2, seed=3)


@pytest.mark.parametrize(
    ("n", "d", "batch", "dual"),
    [(80, 12, 32, "never"), (80, 12, 32, "always"), (40, 120, 32, "auto"), (30, 50, 64, "never")],
)
def test_linear_grid_equals_sequential_loop_float64(n, d, batch, dual):
    inp = blobs(2, n, 50, d, 4, sep=1.0)
    args = (inp.train_x, inp.train_y, inp.val_x, inp.val_y, 4)
    opts = dict(LIN, batch_size=batch, dtype="float64")
    seq = P.linear_sequential(*args, **opts)
    grid, form = P.linear_grid(*args, **opts, dual=dual)
    assert form == ("dual" if dual == "always" or (dual == "auto" and d > n) else "primal")
    assert [(r["lr"], r["rep"]) for r in grid] == [(r["lr"], r["rep"]) for r in seq]
    assert [r["val_acc"] for r in grid] == [r["val_acc"] for r in seq]


def test_linear_dual_weights_equal_primal_weights():
    """W = Xᵀ A after every step count: the Gram form is the same SGD, not an approximation."""
    inp = blobs(4, 30, 10, 70, 3)
    x = torch.tensor(inp.train_x, dtype=torch.float64)
    y = torch.tensor(inp.train_y)
    idx = torch.stack([P.batch_indices(30, 16, 60, s) for s in (0, 1)])
    w, bw = P._sgd_grid(x, y, idx, (0.1, 0.01), 3, dual=False)
    a, ba = P._sgd_grid(x @ x.T, y, idx, (0.1, 0.01), 3, dual=True)
    torch.testing.assert_close(x.T @ a, w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ba, bw, rtol=1e-10, atol=1e-12)


def test_linear_float32_grid_equals_sequential_loop_on_real_embeddings(real):
    args = (real.train_x, real.train_y, real.val_x, real.val_y, 10)
    seq = P.linear_sequential(*args, **LIN)
    for dual in ("always", "never"):
        grid, _ = P.linear_grid(*args, **LIN, dual=dual)
        assert [r["val_acc"] for r in grid] == [r["val_acc"] for r in seq], dual


def test_batch_indices_are_epoch_permutations():
    idx = P.batch_indices(10, 4, 5, seed=0)  # 20 draws = 2 epochs of 10
    assert idx.shape == (5, 4)
    flat = idx.reshape(-1)
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:].tolist()) == list(range(10))
    assert torch.equal(idx, P.batch_indices(10, 4, 5, seed=0))
    assert not torch.equal(idx, P.batch_indices(10, 4, 5, seed=1))


def standardise(inp):
    mu, sd = inp.train_x.mean(0), inp.train_x.std(0) + 1e-6
    return ProxyInput(
        (inp.train_x - mu) / sd, inp.train_y, (inp.val_x - mu) / sd, inp.val_y, inp.num_classes
    )


@pytest.mark.parametrize(("sep", "tol"), [(6.0, 0.02), (0.6, 0.05)])
def test_linear_close_to_sklearn(sep, tol):
    """Separable and overlapping blobs: the paper grid (2500 steps) vs scikit-learn's fits."""
    inp = standardise(blobs(5, 300, 300, 10, 3, sep=sep))
    res = run_proxy("linear", inp, batch_size=64, reps=3)  # paper lrs and steps
    refs = [
        LogisticRegression(C=1e4, max_iter=5000),
        SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=2000, tol=None, random_state=0),
    ]
    for ref in refs:
        acc = float(np.mean(ref.fit(inp.train_x, inp.train_y).predict(inp.val_x) == inp.val_y))
        assert abs(res.score - acc) <= tol, (type(ref).__name__, res.score, acc)
    if sep > 3:
        assert res.score >= 0.98


def test_linear_selection_rule_and_runs():
    rows = [
        {"lr": 0.1, "rep": 0, "val_acc": 0.5},
        {"lr": 0.1, "rep": 1, "val_acc": 0.9},
        {"lr": 0.1, "rep": 2, "val_acc": 0.7},
        {"lr": 0.01, "rep": 0, "val_acc": 0.6},
        {"lr": 0.01, "rep": 1, "val_acc": 0.9},  # tie with lr 0.1: the smaller lr is kept
        {"lr": 0.01, "rep": 2, "val_acc": 0.4},
    ]
    score, out = P.select_linear(rows)
    assert score == 0.7  # median of 0.6, 0.9, 0.7
    assert [r["kept"] for r in out] == [False, False, True, True, True, False]
    res = run_proxy("linear", blobs(6, 40, 20, 5, 2), steps=20, batch_size=8, reps=3)
    assert len(res.runs) == 6 and sum(r["kept"] for r in res.runs) == 3
    assert res.score == np.median([r["val_acc"] for r in res.runs if r["kept"]])
    assert {r["form"] for r in res.runs} == {"primal"} and res.seconds > 0


# ---------------------------------------------------------------------------------------------
# LogME: the paper's evidence maximisation with explicit d×d matrices


def ref_logme(f, y, exact=False):
    """You et al. (2021) Alg. 1 with explicit A = αI + βFᵀF; thuml's stopping rule and 1e-5s."""
    f = f.astype(np.float64)
    n, d = f.shape
    ftf = f.T @ f
    eig = np.clip(np.linalg.eigvalsh(ftf), 0, None)
    out = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        alpha = beta = 1.0
        for _ in range(11):
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * ftf, f.T @ t)
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            m2, res2 = m @ m, np.sum((t - f @ m) ** 2)
            new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) <= 1e-3
            alpha, beta = new_alpha, new_beta
            if done:
                break
        if d > n and not exact:  # thuml: log|A| over the n singular values of F only
            e_n = np.clip(np.linalg.eigvalsh(f @ f.T), 0, None)
            logdet = np.sum(np.log(alpha + beta * e_n))
        else:
            logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * ftf)[1]
        ev = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - logdet / 2
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * np.log(2 * np.pi)
        )
        out.append(ev / n)
    return float(np.mean(out))


@pytest.mark.parametrize(("n", "d"), [(120, 20), (40, 90)])
@pytest.mark.parametrize("exact", [False, True])
def test_logme_matches_formula_reference(n, d, exact):
    inp = blobs(7, n, 10, d, 4, sep=2.0)
    got = run_proxy("logme", inp, exact=exact).score
    assert got == pytest.approx(ref_logme(inp.train_x, inp.train_y, exact), rel=1e-7)


def test_logme_real_embeddings(real):
    for exact in (False, True):
        got = run_proxy("logme", real, exact=exact).score
        assert got == pytest.approx(ref_logme(real.train_x, real.train_y, exact), rel=1e-6)
    # d = 512 > n = 200: the exact evidence adds (d - n) log α / 2n per class
    assert run_proxy("logme", real, exact=True).score != run_proxy("logme", real).score


# ---------------------------------------------------------------------------------------------
# regularized H-score: the formula with scikit-learn's LedoitWolf and an explicit pinv


def ref_hscore_reg(f, y):
    f = f.astype(np.float64)
    f = f - f.mean(0)
    lw = LedoitWolf(assume_centered=False).fit(f)
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(0)
    covg = np.cov(g, rowvar=False)
    return float(
        np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * covg))
    )


@pytest.mark.parametrize(("n", "d"), [(150, 20), (40, 90), (60, 60)])
def test_hscore_reg_matches_formula_reference(n, d):
    inp = blobs(8, n, 10, d, 5, sep=2.0)
    got = run_proxy("hscore_reg", inp).score
    assert got == pytest.approx(ref_hscore_reg(inp.train_x, inp.train_y), rel=1e-7)


def test_hscore_reg_real_embeddings(real):
    got = run_proxy("hscore_reg", real).score
    assert got == pytest.approx(ref_hscore_reg(real.train_x, real.train_y), rel=1e-6)


@pytest.mark.parametrize("d", [5, 40])
def test_hscore_reg_singular_covariance_follows_pinv(d):
    """Shrinkage ≈ 0 (two points; ±v repeated): Σ_α is singular and pinv's cut-off decides."""
    v = np.random.default_rng(d).normal(size=(2, d)).astype(np.float32)
    for x, y in [(v, np.array([0, 1])), (np.stack([v[0], -v[0]] * 2), np.array([0, 1, 0, 1]))]:
        got = run_proxy("hscore_reg", ProxyInput(x, y, x, y, 2)).score
        assert got == pytest.approx(ref_hscore_reg(x, y), rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(50, 8), (20, 300), (30, 1)])
def test_ledoit_wolf_shrinkage_equals_sklearn(n, d):
    x = np.random.default_rng(9).normal(size=(n, d)) @ np.diag(np.linspace(0.1, 3, d))
    x = x - x.mean(0)
    want = LedoitWolf(assume_centered=True).fit(x).shrinkage_
    assert P.ledoit_wolf_shrinkage(x) == pytest.approx(want, rel=1e-9, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# GBC: the Bhattacharyya distance of two Gaussians, pair by pair


def ref_gbc(f, y, gaussian_type="spherical"):
    f = f.astype(np.float64)
    stats = {}
    for c in np.unique(y):
        fc = f[y == c]
        var = np.maximum(((fc - fc.mean(0)) ** 2).mean(0), 1e-4)  # population variance, floored
        stats[c] = (fc.mean(0), var)
    total = 0.0
    for c1, (m1, v1) in stats.items():
        for c2, (m2, v2) in stats.items():
            if c1 == c2:
                continue
            if gaussian_type == "diagonal":  # Bhattacharyya distance of N(m1, diag v1), N(m2, ..)
                v = (v1 + v2) / 2
                db = np.sum((m1 - m2) ** 2 / v) / 8 + 0.5 * np.log(np.prod(v / np.sqrt(v1 * v2)))
            else:  # stable_transfer's spherical form: σ² = mean variance, log term not × d
                s1, s2 = v1.mean(), v2.mean()
                s = (s1 + s2) / 2
                db = np.sum((m1 - m2) ** 2) / s / 8 + 0.5 * (np.log(s) - np.log(s1 * s2) / 2)
            total += np.exp(-db)
    return -total


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_matches_formula_reference(gaussian_type):
    inp = blobs(10, 120, 10, 6, 4, sep=0.8)
    got = run_proxy("gbc", inp, gaussian_type=gaussian_type).score
    assert got == pytest.approx(ref_gbc(inp.train_x, inp.train_y, gaussian_type), rel=1e-9)
    assert got < 0


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_real_embeddings(real, gaussian_type):
    got = run_proxy("gbc", real, gaussian_type=gaussian_type).score
    want = ref_gbc(real.train_x, real.train_y, gaussian_type)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_gbc_pca_option_reduces_dimensions(real):
    from sklearn.decomposition import PCA

    reduced = PCA(n_components=16, svd_solver="full").fit_transform(real.train_x)
    got = run_proxy("gbc", real, pca=16).score
    assert got == pytest.approx(ref_gbc(reduced, real.train_y), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["spherical", "diagonal"]))
def test_gbc_invariant_to_class_names_and_row_order(seed, gaussian_type):
    inp = blobs(seed, 40, 5, 4, 3, sep=1.0)
    rng = np.random.default_rng(seed)
    perm, rename = rng.permutation(40), rng.permutation(3)
    moved = ProxyInput(inp.train_x[perm], rename[inp.train_y[perm]], inp.val_x, inp.val_y, 3)
    a = P.gbc(inp, gaussian_type=gaussian_type).score
    assert P.gbc(moved, gaussian_type=gaussian_type).score == pytest.approx(a, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# LEEP and NCE: the papers' empirical formulas, example by example


def ref_leep(theta, y, c):
    n, k = theta.shape
    joint = np.zeros((c, k))
    for i in range(n):
        joint[y[i]] += theta[i] / n
    pz = joint.sum(0)
    total = 0.0
    for i in range(n):
        eep = sum(joint[y[i], z] / pz[z] * theta[i, z] for z in range(k) if pz[z] > 0)
        total += math.log(eep)
    return total / n


def ref_nce(theta, y):
    z = [int(np.argmax(row)) for row in theta]
    n = len(z)
    count_zy, count_z = {}, {}
    for zi, yi in zip(z, y, strict=True):
        count_zy[zi, int(yi)] = count_zy.get((zi, int(yi)), 0) + 1
        count_z[zi] = count_z.get(zi, 0) + 1
    h = -sum(cnt / n * math.log(cnt / count_z[zi]) for (zi, _), cnt in count_zy.items())
    return -h


def test_leep_nce_match_formula_reference():
    inp = blobs(11, 90, 10, 4, 5, k_source=12)
    assert run_proxy("leep", inp).score == pytest.approx(
        ref_leep(inp.train_probs, inp.train_y, 5), rel=1e-10
    )
    assert run_proxy("nce", inp).score == pytest.approx(
        ref_nce(inp.train_probs, inp.train_y), rel=1e-10
    )


def test_leep_nce_real_embeddings(real):
    assert run_proxy("leep", real).score == pytest.approx(
        ref_leep(real.train_probs, real.train_y, 10), rel=1e-10
    )
    assert run_proxy("nce", real).score == pytest.approx(
        ref_nce(real.train_probs, real.train_y), rel=1e-10, abs=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 6), st.integers(2, 9), st.booleans())
def test_leep_nce_random_and_sparse_probabilities(seed, c, k, sparse):
    """Sparse rows leave source classes that no example reaches: they contribute 0, not NaN."""
    rng = np.random.default_rng(seed)
    n = 25
    theta = rng.dirichlet(np.ones(k), size=n)
    if sparse:  # one-hot source predictions on the first half of the source classes only
        theta = np.eye(k)[rng.integers(0, max(1, k // 2), n)]
    y = rng.integers(0, c, n)
    inp = ProxyInput(np.zeros((n, 2), np.float32) + 1, y, np.ones((3, 2), np.float32),
                     np.zeros(3, np.int64), c, theta)  # fmt: skip
    assert run_proxy("leep", inp).score == pytest.approx(ref_leep(theta, y, c), rel=1e-10)
    got = run_proxy("nce", inp).score
    assert got == pytest.approx(ref_nce(theta, y), rel=1e-10, abs=1e-12)
    assert got <= 0


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_source_head_proxies_not_applicable_without_probs(name):
    inp = blobs(12, 30, 10, 4, 3)
    res = run_proxy(name, ProxyInput(inp.train_x, inp.train_y, inp.val_x, inp.val_y, 3))
    assert res.score is None
    assert "no source head" in res.reason and name.upper() in res.reason


# ---------------------------------------------------------------------------------------------
# degenerate inputs: finite scores or a clear error, never NaN


def degenerate_cases():
    base = blobs(13, 24, 12, 6, 4, sep=2.0)
    one = blobs(14, 4, 8, 6, 4)  # one training example per class
    wide = blobs(15, 10, 6, 50, 3)  # more dimensions than samples
    const_x = base.train_x.copy()
    const_x[:, 2] = 3.0
    dup = ProxyInput(
        np.concatenate([base.train_x, base.train_x]),
        np.concatenate([base.train_y, np.roll(base.train_y, 1)]),  # same rows, other labels too
        base.val_x, base.val_y, 4,
        np.concatenate([base.train_probs, base.train_probs]),
    )  # fmt: skip
    keep_val = base.val_y < 2
    no_val_class = ProxyInput(base.train_x, base.train_y, base.val_x[keep_val],
                              base.val_y[keep_val], 4, base.train_probs)  # fmt: skip
    keep_tr = base.train_y != 3
    no_train_class = ProxyInput(base.train_x[keep_tr], base.train_y[keep_tr], base.val_x,
                                base.val_y, 4, base.train_probs[keep_tr])  # fmt: skip
    return {
        "one_per_class": one,
        "dim_gt_n": wide,
        "constant_feature": ProxyInput(
            const_x, base.train_y, base.val_x, base.val_y, 4, base.train_probs
        ),  # fmt: skip
        "duplicates": dup,
        "class_absent_from_val": no_val_class,
        "class_absent_from_train": no_train_class,
    }


OPTS = {"linear": dict(steps=30, batch_size=8, reps=2)}


@pytest.mark.parametrize("case", list(degenerate_cases()))
@pytest.mark.parametrize("name", list(PROXIES))
def test_degenerate_inputs_give_finite_scores(name, case):
    inp = degenerate_cases()[case]
    res = run_proxy(name, inp, **OPTS.get(name, {}))
    assert isinstance(res.score, float) and math.isfinite(res.score), (name, case, res)


def test_logme_all_zero_features_is_a_clear_error():
    inp = blobs(16, 20, 5, 4, 2)
    zero = ProxyInput(np.zeros_like(inp.train_x), inp.train_y, inp.val_x, inp.val_y, 2)
    with pytest.raises(ValueError, match="zero"):
        run_proxy("logme", zero)
    assert run_proxy("hscore_reg", zero).score == 0.0  # no information, not NaN


# ---------------------------------------------------------------------------------------------
# run_proxy: validation and the finite-or-None guarantee


def test_run_proxy_rejects_bad_inputs():
    inp = blobs(17, 20, 6, 3, 2)
    x_nan = inp.train_x.copy()
    x_nan[0, 0] = np.nan
    bad = {
        "non-finite": ProxyInput(x_nan, inp.train_y, inp.val_x, inp.val_y, 2),
        "outside 0..1": ProxyInput(inp.train_x, inp.train_y + 1, inp.val_x, inp.val_y, 2),
        "dimensions": ProxyInput(inp.train_x, inp.train_y, inp.val_x[:, :2], inp.val_y, 2),
        "labels": ProxyInput(inp.train_x, inp.train_y[:-1], inp.val_x, inp.val_y, 2),
        "sum to 1": ProxyInput(
            inp.train_x, inp.train_y, inp.val_x, inp.val_y, 2, inp.train_probs * 2
        ),  # fmt: skip
        "integer": ProxyInput(inp.train_x, inp.train_y.astype(float), inp.val_x, inp.val_y, 2),
    }
    for message, case in bad.items():
        with pytest.raises(ValueError, match=message):
            run_proxy("knn", case)
    with pytest.raises(ValueError, match="unknown proxy"):
        run_proxy("nope", inp)
    empty_val = ProxyInput(inp.train_x, inp.train_y, inp.val_x[:0], inp.val_y[:0], 2)
    with pytest.raises(ValueError, match="validation"):
        run_proxy("linear", empty_val)
    assert math.isfinite(run_proxy("logme", empty_val).score)


def test_run_proxy_refuses_nan_scores(monkeypatch):
    nan = dataclasses.replace(PROXIES["knn"], fn=lambda inp, **kw: ProxyResult(float("nan")))
    monkeypatch.setitem(PROXIES, "knn", nan)
    with pytest.raises(ValueError, match="non-finite"):
        run_proxy("knn", blobs(18, 10, 4, 3, 2))


# ---------------------------------------------------------------------------------------------
# SFDA, NCTI, ETran, PARC: the authors' public code, transcribed line by line (NumPy, SciPy and
# scikit-learn as they call them; prints and file handling dropped). Each transcription names
# the repository, file and commit read. The pinned values below were computed with these
# transcriptions on the fixed inputs named next to them (NumPy 2.4, SciPy 1.17, scikit-learn
# 1.9) and guard against a silent change of either side.


def _ref_softmax(x):  # TencentARC/SFDA metrics.py::softmax (same in NCTI, ETran)
    x = np.copy(x)
    x -= np.max(x, axis=1).reshape((-1, 1))
    np.exp(x, x)
    x /= np.sum(x, axis=1).reshape((-1, 1))
    return x


def _ref_cov(x, shrinkage=-1):  # TencentARC/SFDA metrics.py::_cov
    emp_cov = np.cov(np.asarray(x).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    n_features = emp_cov.shape[0]
    mu = np.trace(emp_cov) / n_features
    shrunk_cov = (1.0 - shrinkage) * emp_cov
    shrunk_cov.flat[:: n_features + 1] += shrinkage * mu
    return shrunk_cov


def _ref_iterative_a(a, max_iterations=3):  # TencentARC/SFDA utils.py::iterative_A
    x = a.sum(axis=1)
    for _ in range(max_iterations):
        temp = np.dot(a, x)
        y = temp / np.linalg.norm(temp, 2)
        temp = np.dot(a, y)
        x = temp / np.linalg.norm(temp, 2)
    return np.dot(np.dot(x.T, a), y)


class _RefSFDA:
    """TencentARC/SFDA metrics.py::SFDA (commit eb1eee0a7e02883842d2e9fe387edb34345f202d)."""

    def __init__(self, shrinkage=None):
        self.shrinkage = shrinkage

    def fit(self, x, y):
        from scipy import linalg

        _, y_t = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(y_t) / float(len(y))
        classes, y = np.unique(y, return_inverse=True)
        cnt = np.bincount(y)
        means = np.zeros(shape=(len(classes), x.shape[1]))
        np.add.at(means, y, x)
        means /= cnt[:, None]
        self.means_ = means
        cov = np.zeros(shape=(x.shape[1], x.shape[1]))
        for idx, group in enumerate(classes):
            cov += self.priors_[idx] * np.atleast_2d(_ref_cov(x[y == group, :]))
        sw = cov
        if self.shrinkage is None:
            self.shrinkage = max(np.exp(-5 * _ref_iterative_a(sw, max_iterations=3)), 1e-10)
        st = _ref_cov(x, shrinkage=self.shrinkage)
        n_features = sw.shape[0]
        mu = np.trace(sw) / n_features
        shrunk_sw = (1.0 - self.shrinkage) * sw
        shrunk_sw.flat[:: n_features + 1] += self.shrinkage * mu
        sb = st - shrunk_sw
        evals, evecs = linalg.eigh(sb, shrunk_sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = np.dot(self.means_, evecs).dot(evecs.T)
        self.intercept_ = -0.5 * np.diag(np.dot(self.means_, self.coef_.T)) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _ref_softmax(np.dot(x, self.coef_.T) + self.intercept_)


def ref_sfda(x, y):
    """TencentARC/SFDA metrics.py::SFDA_Score (with _class_means), labels 0..C-1."""
    x = np.array(x, dtype=np.float64)
    n = len(y)
    num_classes = len(np.unique(y))
    first = _RefSFDA()
    prob = first.fit(x, y).predict_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    classes, yi = np.unique(y, return_inverse=True)
    cnt = np.bincount(yi)
    means = np.zeros(shape=(len(classes), x.shape[1]))
    np.add.at(means, yi, x)
    means /= cnt[:, None]
    means_ = np.zeros(shape=(len(classes), x.shape[1]))
    for i in range(len(classes)):
        means_[i] = (np.sum(means, axis=0) - means[i]) / (len(classes) - 1)
    for y_ in range(num_classes):
        indices = np.where(y == y_)[0]
        y_prob = np.take(prob, indices, axis=0)[:, y_]
        x[indices] = (
            y_prob.reshape(len(y_prob), 1) * x[indices]
            + (1 - y_prob.reshape(len(y_prob), 1)) * means_[y_]
        )
    second = _RefSFDA(shrinkage=first.shrinkage)
    prob = second.fit(x, y).predict_proba(x)
    return np.sum(prob[np.arange(n), y]) / n


def ref_ncti_terms(x, y):
    """BUserName/NCTI metrics.py::NCTI_Score (commit 770be727e6ab3d085073c70f0d5537a544e9c1b7).

    One change: PCA(svd_solver='full') where theirs leaves the solver to scikit-learn's 'auto'
    (randomised and unseeded at these sizes), and min(64, n, d) components."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = np.asarray(x, dtype=np.float64)
    c = np.unique(y).shape[0]
    pca = PCA(n_components=min(64, *x.shape), svd_solver="full")
    x = pca.fit_transform(x, y)
    temp = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if temp == 1e-10:
        clf = LinearDiscriminantAnalysis(solver="svd")
    else:
        clf = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(temp))
    low_feat = clf.fit_transform(x, y)
    low_feat = low_feat - np.mean(low_feat, axis=0, keepdims=True)
    all_lowfeat_nuc = np.linalg.norm(low_feat, ord="nuc")
    low_pred = clf.predict_proba(x)
    sfda_score = np.sum(low_pred[np.arange(x.shape[0]), y]) / x.shape[0]
    class_pred_nuc = 0
    for k in range(c):
        class_pred_nuc += np.linalg.norm(low_pred[(y == k).flatten()], ord="nuc")
    return all_lowfeat_nuc, sfda_score, np.log(class_pred_nuc), temp


def ref_ncti(x, y):
    seli, ncc, vc, _ = ref_ncti_terms(x, y)
    return ncc + seli - vc  # their per-pool combination, without the pool's min-max


class _RefEtranLDA:
    """mgholamikn/ETran metrics.py::LDA (commit a63361e1cd0e090b9d0462bf6e3bdf4dc547b22d)."""

    def fit(self, x, y):
        _, y_t = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(y_t) / float(len(y))
        classes, y = np.unique(y, return_inverse=True)
        cnt = np.bincount(y)
        means = np.zeros(shape=(len(classes), x.shape[1]))
        np.add.at(means, y, x)
        means /= cnt[:, None]
        cov = np.zeros(shape=(x.shape[1], x.shape[1]))
        for idx, group in enumerate(classes):
            cov += self.priors_[idx] * np.atleast_2d(_ref_cov(x[y == group, :]))
        sw = cov
        shrinkage = max(np.exp(-5 * _ref_iterative_a(sw, max_iterations=3)), 1e-10)
        st = _ref_cov(x, shrinkage=shrinkage)
        n_features = sw.shape[0]
        mu = np.trace(sw) / n_features
        shrunk_sw = (1.0 - shrinkage) * sw
        shrunk_sw.flat[:: n_features + 1] += shrinkage * mu
        sb = st - shrunk_sw
        evals, evecs = np.linalg.eigh(np.linalg.inv(shrunk_sw) @ sb)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = np.dot(means, evecs).dot(evecs.T)
        self.intercept_ = -0.5 * np.diag(np.dot(means, self.coef_.T)) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _ref_softmax(np.dot(x, self.coef_.T) + self.intercept_)


def ref_etran_terms(x, y):
    """ETran's Energy_Score(X, 0.5, 'bot') (torch logsumexp on the features) and LDA_Score."""
    energy = torch.logsumexp(torch.from_numpy(np.asarray(x, dtype=np.float64)), dim=-1).numpy()
    chs = list(np.argsort(energy)[0 : max(1, int(0.5 * 10) * len(energy) // 1000)])
    s_en = energy[chs].mean()
    x = np.asarray(x, dtype=np.float64)
    prob = _RefEtranLDA().fit(x, y).predict_proba(x)
    s_lda = np.sum(prob[np.arange(len(y)), y]) / len(y)
    return s_en, s_lda


def ref_etran(x, y):
    s_en, s_lda = ref_etran_terms(x, y)
    return 0.15 * s_en + 0.85 * s_lda  # tw.py's weights, without the pool's min-max


def ref_parc(x, y, num_classes, n_dims=32):
    """dbolya/parc methods.py::feature_reduce + PARC.

    Commit b05d06288203905d2a57f19ddb83edddc80c182c."""
    import scipy.stats
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    f = min(n_dims, *np.shape(x))
    feats = PCA(n_components=f, svd_solver="randomized", random_state=1919,
                iterated_power=1).fit_transform(np.asarray(x, dtype=np.float64))  # fmt: skip
    labels = np.eye(num_classes)[y]
    feats = StandardScaler().fit_transform(feats)
    rdm1 = 1 - np.corrcoef(feats)
    rdm2 = 1 - np.corrcoef(labels)
    rdm2 = np.round(rdm2, 12)  # ours: drop np.corrcoef's ~1e-16 noise, which splits its ties
    iu = np.triu_indices(rdm1.shape[0], 1)
    return scipy.stats.spearmanr(rdm1[iu], rdm2[iu])[0] * 100


NEW_REFS = {
    "sfda": lambda inp: ref_sfda(inp.train_x, inp.train_y),
    "ncti": lambda inp: ref_ncti(inp.train_x, inp.train_y),
    "etran": lambda inp: ref_etran(inp.train_x, inp.train_y),
    "parc": lambda inp: ref_parc(inp.train_x, inp.train_y, inp.num_classes),
}


NEW_CASES = [(120, 20, 4, 1.0), (60, 90, 5, 2.0), (200, 30, 6, 0.4)]  # blobs(19, n, 10, d, c, sep)

# The transcriptions' values on those inputs and on the `real` fixture (computed by running
# NEW_REFS, 2026-12-04). NCTI takes the 'eigen' (shrinkage) path on the blobs and the 'svd' path
# on `real`; SFDA saturates at 1.0 where the classes separate (d > n, or far apart).
PINNED = {
    (120, 20, 4, 1.0): {"sfda": 0.9168756066530915, "ncti": 83.33416115180275,
                        "etran": 0.8184300830154868, "parc": 29.3173515883036},
    (60, 90, 5, 2.0): {"sfda": 1.0, "ncti": 927.6172357008188,
                       "etran": 1.429873797514048, "parc": 23.457699915512997},
    (200, 30, 6, 0.4): {"sfda": 0.48139246987571727, "ncti": 95.64453849379485,
                        "etran": 0.6640460191501063, "parc": 15.957812867343229},
    "real": {"sfda": 1.0, "ncti": 326.2315741081818,
             "etran": 1.7569277356389132, "parc": 23.11691506301063},
}  # fmt: skip


@pytest.mark.parametrize(("n", "d", "c", "sep"), NEW_CASES)
@pytest.mark.parametrize("name", list(NEW_REFS))
def test_new_proxies_match_authors_code(name, n, d, c, sep):
    inp = blobs(19, n, 10, d, c, sep=sep)
    got = run_proxy(name, inp).score
    want = NEW_REFS[name](inp)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert want == pytest.approx(PINNED[(n, d, c, sep)][name], rel=1e-6)


def test_ncti_takes_both_lda_solvers(real):
    """Shrinkage ('eigen') on small-variance blobs, none ('svd') on the real embeddings."""
    assert run_proxy("ncti", blobs(19, 120, 10, 20, 4, sep=1.0)).runs[0]["shrinkage"] > 0
    assert run_proxy("ncti", real).runs[0]["shrinkage"] is None
    assert ref_ncti_terms(real.train_x, real.train_y)[3] == 1e-10


def test_new_proxies_follow_the_class_labels():
    """Scores change when the labels are shuffled (they read the labels), not when renamed."""
    inp = blobs(20, 90, 10, 12, 3, sep=1.0)
    perm = np.array([2, 0, 1])
    renamed = ProxyInput(inp.train_x, perm[inp.train_y], inp.val_x, inp.val_y, 3)
    shuffled_y = np.random.default_rng(0).permutation(inp.train_y)
    shuffled = ProxyInput(inp.train_x, shuffled_y, inp.val_x, inp.val_y, 3)
    for name in NEW_REFS:
        base = run_proxy(name, inp).score
        assert run_proxy(name, renamed).score == pytest.approx(base, rel=1e-9), name
        assert run_proxy(name, shuffled).score < base, name


def test_new_proxies_need_two_classes():
    inp = blobs(21, 20, 4, 5, 2)
    one = ProxyInput(inp.train_x, np.zeros_like(inp.train_y), inp.val_x, inp.val_y, 2)
    for name in NEW_REFS:
        with pytest.raises(ValueError, match="at least 2 classes"):
            run_proxy(name, one)


@pytest.mark.parametrize("name", list(NEW_REFS))
def test_new_proxies_real_embeddings(real, name):
    got = run_proxy(name, real).score
    want = NEW_REFS[name](real)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    # `real` comes from a float32 CPU forward pass whose last bits vary from run to run (seen:
    # PARC 23.116885 against the pinned 23.116915 in one full-suite run): the pin guards the
    # transcription against a silent change, not the forward pass, so it allows 1e-5.
    assert want == pytest.approx(PINNED["real"][name], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# NCTI and ETran across a model pool: the authors' pool loops, transcribed (same commits)


def ref_ncti_pool(score_dict, models_hub):
    """BUserName/NCTI evaluate_metric_group1_cpu.py, the loop after every model of the hub is
    scored (commit 770be727e6ab3d085073c70f0d5537a544e9c1b7); ``score_dict[model]`` is
    NCTI_Score's (all_lowfeat_nuc, sfda_score, log class_pred_nuc) = (S_seli, S_ncc, S_vc)."""
    all_score = []
    cls_score = []
    cls_compact = []
    for model in models_hub:
        all_score.append(score_dict[model][0])
        cls_score.append(score_dict[model][1])
        cls_compact.append(score_dict[model][2])
    all_score = np.array(all_score)
    cls_score = np.array(cls_score)
    cls_compact = np.array(cls_compact)
    all_score_min = all_score.min()
    all_score_div = all_score.max() - all_score.min()
    cls_score_min = cls_score.min()
    cls_score_div = cls_score.max() - cls_score.min()
    cls_compact_min = cls_compact.min()
    cls_compact_div = cls_compact.max() - cls_compact_min
    for model in models_hub:
        mascore = (score_dict[model][0] - all_score_min) / all_score_div
        mcscore = (score_dict[model][1] - cls_score_min) / cls_score_div
        cpscore = (score_dict[model][2] - cls_compact_min) / cls_compact_div
        score_dict[model] = mcscore + mascore - cpscore
    return score_dict


def ref_etran_pool(score, score_labeled):
    """mgholamikn/ETran tw.py, ``metric == 'etran'`` (commit
    a63361e1cd0e090b9d0462bf6e3bdf4dc547b22d): ``score`` the energy scores of the pool's
    models, ``score_labeled`` their LDA scores (dicts model -> value, as load_score returns)."""

    def scale(score):
        min_score = 10e10
        max_score = -10e10
        for key in score.keys():  # noqa: SIM118 (as theirs)
            if score[key] < min_score:
                min_score = score[key]
            if score[key] > max_score:
                max_score = score[key]
        for key in score.keys():  # noqa: SIM118 (as theirs)
            score[key] = (score[key] - min_score) / (max_score - min_score)
        return score

    score = scale(score)
    score_labeled = scale(score_labeled)
    for key in score.keys():  # noqa: SIM118 (as theirs)
        score[key] = score[key] * 0.15 + score_labeled[key] * 0.85
    return score


# (projected dimension, scale, noise) of each "model": random projections of the same labelled
# data (blobs seed 19, 120 × 20, 4 classes); projection seed 6 is one where the pool's min-max
# moves both proxies' top pick (found by trying seeds 0..11; 6 and 11 do).
POOL_MODELS = [(16, 1.0, 0.0), (8, 4.0, 1.0), (24, 0.5, 0.0), (4, 2.0, 0.5), (20, 1.0, 0.2)]


def projected_pool(seed=6):
    base = blobs(19, 120, 10, 20, 4, sep=1.0)
    rng = np.random.default_rng(seed)
    pool = {}
    for k, (dim, scale, noise) in enumerate(POOL_MODELS):
        r = rng.normal(size=(20, dim)) * scale / math.sqrt(20)
        x = base.train_x @ r + noise * scale * rng.normal(size=(len(base.train_y), dim))
        xv = base.val_x @ r
        pool[f"m{k}"] = ProxyInput(
            x.astype(np.float32), base.train_y, xv.astype(np.float32), base.val_y, 4
        )
    return pool


@pytest.fixture(scope="module")
def pool_inputs():
    return projected_pool()


def test_pool_normalised_ncti_and_etran_equal_the_authors_pool_loops(pool_inputs):
    names = list(pool_inputs)
    x = {m: np.asarray(inp.train_x, dtype=np.float64) for m, inp in pool_inputs.items()}
    y = pool_inputs[names[0]].train_y
    et = {m: ref_etran_terms(x[m], y) for m in names}
    want = {
        "ncti": ref_ncti_pool({m: ref_ncti_terms(x[m], y)[:3] for m in names}, names),
        "etran": ref_etran_pool(
            {m: float(et[m][0]) for m in names}, {m: float(et[m][1]) for m in names}
        ),
    }
    for proxy in ("ncti", "etran"):
        results = [run_proxy(proxy, pool_inputs[m]) for m in names]
        raw = [r.score for r in results]
        got = P.pool_scores(proxy, raw, [r.runs for r in results], names)
        np.testing.assert_allclose(got, [want[proxy][m] for m in names], rtol=0, atol=1e-6)
        # the min-max moves the top pick against the raw sum: the test can tell them apart
        assert np.argmax(got) != np.argmax(raw), proxy
        assert names[int(np.argmax(got))] == max(want[proxy], key=want[proxy].get)


def test_pool_combine_leaves_out_models_without_terms_and_a_constant_term_gives_zero():
    terms = [
        {"seli": 3.0, "ncc": 0.5, "vc": 1.0},
        None,  # not applicable: NaN, and out of the min and max
        {"seli": 1.0, "ncc": 0.9, "vc": 1.0},
        {"seli": 2.0, "ncc": 0.7, "vc": 1.0},
    ]
    got = P.ncti_pool(terms)
    # seli → 1, 0, 0.5; ncc → 0, 1, 0.5; vc constant → 0 (their code would divide by zero)
    np.testing.assert_allclose(got, [1.0, np.nan, 1.0, 1.0])
    np.testing.assert_allclose(P.minmax_pool(np.array([np.nan, 2.0, 2.0])), [np.nan, 0.0, 0.0])
    energy = [{"energy": e, "lda": d} for e, d in ((5.0, 0.2), (1.0, 0.6), (3.0, 1.0))]
    np.testing.assert_allclose(P.etran_pool(energy), [0.15, 0.85 * 0.5, 0.15 * 0.5 + 0.85])
    # a proxy without pool_combine ranks by its scores as they are
    np.testing.assert_array_equal(P.pool_scores("knn", [0.5, None], [[], []]), [0.5, np.nan])
    # a scored model of the pool whose runs lack a term is named
    with pytest.raises(ValueError, match=r"'b' has a score but no finite 'vc' term"):
        P.pool_scores(
            "ncti", [1.0, 2.0], [[terms[0]], [{"seli": 1.0, "ncc": 0.1}]], names=["a", "b"]
        )
    with pytest.raises(ValueError, match="'b' has a score but no finite 'seli'"):
        P.pool_scores("ncti", [1.0, 2.0], [[terms[0]], []], names=["a", "b"])


# ---------------------------------------------------------------------------------------------
# SFDA on an ill-conditioned embedding: D > N, rank-deficient, shrinkage at its 1e-10 floor


def relu_embedding(seed=0, n=100, d=256, c=4, rank=95, dead=0.5, scale=50.0, dup=0.2, noise=3e-6):
    """ReLU-like features of rank < n < d: dead units, a large scale, and a fifth of the rows
    near-duplicates (1e-6 apart) of rows of other classes, so SFDA's posteriors are not
    saturated. S_w,λ's condition number is ~1e13 here; a general LU solve moved SFDA by ~1e-4
    with the row order on this input, the authors' eigh route by ~1e-8."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    z = rng.normal(size=(n, rank)) + 0.5 * rng.normal(size=(c, rank))[y]
    src, dst = rng.integers(0, n, int(dup * n)), rng.integers(0, n, int(dup * n))
    z[dst] = z[src] + noise * rng.normal(size=(len(dst), rank))
    x = np.maximum(z @ rng.normal(size=(rank, d)), 0.0) * scale
    x[:, rng.random(d) < dead] = 0.0
    return x.astype(np.float32), y.astype(np.int64)


def test_sfda_equals_the_authors_eigh_route_on_an_ill_conditioned_embedding_in_any_row_order():
    x, y = relu_embedding()
    xf = x.astype(np.float64)
    sw = sum(np.mean(y == k) * _ref_cov(xf[y == k]) for k in range(4))  # rank <= n - C < d
    sw.flat[:: len(sw) + 1] += 1e-10 * np.trace(sw) / len(sw)
    assert np.linalg.matrix_rank(xf) <= len(y) < x.shape[1] and np.linalg.cond(sw) > 1e11
    scores = []
    for seed in range(4):
        p = np.random.default_rng(100 + seed).permutation(len(y))
        got = run_proxy("sfda", ProxyInput(x[p], y[p], x[:4], y[:4], 4))
        assert got.runs[0]["shrinkage"] == 1e-10  # at the floor: the ill-conditioned case
        assert got.score == pytest.approx(ref_sfda(x[p], y[p]), rel=1e-6)
        scores.append(got.score)
    assert min(scores) > 0.5 and max(scores) < 0.99  # not saturated: the posteriors matter
    assert max(scores) - min(scores) < 1e-6 * max(scores)


def test_sfda_falls_back_to_the_eigenbasis_when_cholesky_refuses(monkeypatch):
    x, y = relu_embedding()

    def refuse(*args, **kwargs):
        raise np.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(discriminant, "cho_factor", refuse)
    got = run_proxy("sfda", ProxyInput(x, y, x[:4], y[:4], 4)).score
    assert got == pytest.approx(ref_sfda(x, y), rel=1e-5)


def test_parc_leaves_components_without_spread_alone():
    """Features of rank 10 < 32 PCA components: the 22 empty components are rounding noise. PARC
    scores the 10 real ones only (a NumPy reference that drops the rest); the authors'
    StandardScaler scales the noise to unit variance and gets another score."""
    import scipy.stats
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(3)
    y = np.arange(90) % 3
    z = rng.normal(size=(90, 10)) + 1.5 * rng.normal(size=(3, 10))[y]
    x = z @ rng.normal(size=(10, 48))  # float64: the empty components are ~1e-15 of the rest
    pcs = PCA(n_components=32, svd_solver="randomized", random_state=1919, iterated_power=1)
    f = pcs.fit_transform(x)
    assert np.sum(f.std(0) > 1e-6 * f.std(0).max()) == 10
    f = f[:, f.std(0) > 1e-6 * f.std(0).max()]
    f = (f - f.mean(0)) / f.std(0)
    iu = np.triu_indices(90, 1)
    want = 100 * scipy.stats.spearmanr((1 - np.corrcoef(f))[iu], (y[iu[0]] != y[iu[1]]))[0]
    for scale in (1.0, 0.01, 100.0):  # the rule is relative: the features' scale does not matter
        got = run_proxy("parc", ProxyInput(x * scale, y, x[:3], y[:3], 3)).score
        assert got == pytest.approx(want, rel=1e-6)
    assert abs(ref_parc(x, y, 3) - got) > 0.05 * abs(got)  # the authors' scaler: noise counted
