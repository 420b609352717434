"""Regret formulas against hand computations (paper §3, App. C)."""

import math

import numpy as np
import pytest

from whichmodel.analysis.regret import abs_regret, logit, rel_delta, rel_regret


def test_relative_regret_hand_cases():
    # Oracle 0.9, picked 0.8: 0.1 of the 0.2 error left by the pick → 0.5.
    assert rel_regret(0.9, 0.8) == pytest.approx(0.5)
    assert abs_regret(0.9, 0.8) == pytest.approx(0.1)
    np.testing.assert_allclose(abs_regret([0.9, 0.5], [0.8, 0.5]), [0.1, 0.0])
    assert rel_regret(0.5, 0.5) == 0.0
    assert rel_regret(1.0, 1.0) == 0.0  # both perfect: no regret, not 0/0
    assert rel_regret(1.0, 0.0) == pytest.approx(1.0)


def test_relative_delta_is_antisymmetric_and_bounded():
    assert rel_delta(0.9, 0.8) == pytest.approx(0.5)
    assert rel_delta(0.8, 0.9) == pytest.approx(-0.5)
    rng = np.random.default_rng(0)
    a, b = rng.random(1000), rng.random(1000)
    d = rel_delta(a, b)
    assert np.all(np.abs(d) <= 1.0)
    np.testing.assert_allclose(d, -rel_delta(b, a))
    expected = [(x - y) / (1 - min(x, y)) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(d, expected)


def test_log_odds_variant():
    lo = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert rel_regret(0.9, 0.8, log_odds=True) == pytest.approx(lo(0.9) - lo(0.8))
    assert rel_delta(0.6, 0.7, log_odds=True) == pytest.approx(lo(0.6) - lo(0.7))
    # Perfect accuracies stay finite.
    assert np.isfinite(logit(1.0)) and np.isfinite(logit(0.0))
    assert rel_regret(1.0, 0.99, log_odds=True) > 0
