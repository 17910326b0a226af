"""1-day VaR: delta-gamma-normal closed forms and simulated moments; historical quantile."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from risk.var import delta_gamma_normal_var, historical_var

Z95 = norm.ppf(0.95)


def test_linear_position_closed_form():
    # 100 shares of a $450 stock at 20% vol: one-day sd 100 * 450 * 0.2 / sqrt(252).
    sd = 100 * 450 * 0.2 / math.sqrt(252)
    result = delta_gamma_normal_var([100.0], [0.0], [450.0], [0.2])
    assert result.std == pytest.approx(sd)
    assert result.mean == 0.0
    assert result.var == pytest.approx(Z95 * sd)
    assert result.var == pytest.approx(932.55, abs=0.01)
    assert delta_gamma_normal_var([-100.0], [0.0], [450.0], [0.2]).var == pytest.approx(result.var)
    # sqrt-time scaling and confidence.
    assert delta_gamma_normal_var([100.0], [0.0], [450.0], [0.2], horizon_days=4).var == pytest.approx(2 * result.var)
    assert delta_gamma_normal_var([100.0], [0.0], [450.0], [0.2], confidence=0.99).var == pytest.approx(
        norm.ppf(0.99) * sd)


def test_correlation_hedges_and_diversifies():
    args = ([100.0, -100.0], [0.0, 0.0], [100.0, 100.0], [0.3, 0.3])
    hedged = delta_gamma_normal_var(*args)  # default: one common factor
    assert hedged.var == pytest.approx(0.0, abs=1e-9)
    independent = delta_gamma_normal_var(*args, correlation=np.eye(2))
    single = delta_gamma_normal_var([100.0], [0.0], [100.0], [0.3])
    assert independent.var == pytest.approx(math.sqrt(2) * single.var)


def test_short_gamma_moments_match_simulation():
    rng = np.random.default_rng(7)
    delta = np.array([-40.0, 25.0, 10.0])
    gamma = np.array([-6.0, -2.5, 1.0])
    spot = np.array([450.0, 380.0, 190.0])
    vol = np.array([0.18, 0.25, 0.35])
    corr = np.array([[1.0, 0.8, 0.5], [0.8, 1.0, 0.4], [0.5, 0.4, 1.0]])
    result = delta_gamma_normal_var(delta, gamma, spot, vol, correlation=corr)

    sd = spot * vol / math.sqrt(252)
    moves = rng.multivariate_normal(np.zeros(3), corr * np.outer(sd, sd), size=400_000)
    pnl = moves @ delta + 0.5 * (moves**2) @ gamma
    assert result.mean == pytest.approx(pnl.mean(), rel=0.02)
    assert result.std == pytest.approx(pnl.std(), rel=0.01)
    assert result.mean < 0  # net short gamma drifts down
    assert result.var == pytest.approx(Z95 * result.std - result.mean)
    # Moments are exact; the normal shape is not: a net short-gamma P&L is skewed to the left, so
    # the delta-gamma-normal VaR understates the simulated tail (here by about 9%).
    simulated = -np.quantile(pnl, 0.05)
    assert 0.85 * simulated < result.var < simulated


def test_empty_book_has_no_var():
    assert delta_gamma_normal_var([], [], [], []).var == 0.0


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"delta": [math.nan]}, "delta has NaN"),
        ({"gamma": [0.0, 1.0]}, "gamma has 2 entries"),
        ({"vol": [-0.2]}, "non-negative"),
        ({"confidence": 1.0}, "confidence"),
        ({"horizon_days": 0}, "horizon_days"),
        ({"correlation": [[1.0, 0.5]]}, "must be 1x1"),
    ],
)
def test_bad_input_is_rejected(kwargs, pattern):
    args = {"delta": [1.0], "gamma": [0.0], "spot": [100.0], "vol": [0.2], **kwargs}
    with pytest.raises(ValueError, match=pattern):
        delta_gamma_normal_var(**args)


def test_invalid_correlation_matrix_is_rejected():
    not_psd = [[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]]
    with pytest.raises(ValueError, match="positive semidefinite"):
        delta_gamma_normal_var([1, 1, 1], [0, 0, 0], [1, 1, 1], [0.2] * 3, correlation=not_psd)
    with pytest.raises(ValueError, match="unit diagonal"):
        delta_gamma_normal_var([1, 1], [0, 0], [1, 1], [0.2] * 2, correlation=[[1, 0.2], [0.3, 1]])


def test_historical_var_is_the_empirical_tail_loss():
    pnl = np.arange(1, 101) - 50.0  # -49 .. 50
    assert historical_var(pnl) == 45.0  # 5th worst of 100
    assert historical_var(pnl, confidence=0.99) == 49.0
    assert historical_var(np.full(10, 5.0)) == -5.0  # every outcome a gain
    rng = np.random.default_rng(3)
    normal = rng.normal(0.0, 1000.0, 200_000)
    assert historical_var(normal) == pytest.approx(Z95 * 1000.0, rel=0.02)
    with pytest.raises(ValueError, match="at least one"):
        historical_var([])
    with pytest.raises(ValueError, match="NaN"):
        historical_var([1.0, math.nan])
