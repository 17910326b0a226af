"""tools/density.py: the SVI smile's terminal law against Black–Scholes, Monte Carlo and itself."""
from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

import numpy as np
import pytest
from scipy.stats import norm

from tools import structures
from tools.density import SmileDensity, View, market_distribution, pnl_distribution, probability_of_profit, tilt
from tools.pricing import black76_price
from tools.structures import LegSpec
from tools.svi import SVIParams

EXP = date(2024, 3, 15)
T = 35 / 365
F = 4500.0
# A steep equity skew: about 19% ATM, puts far richer than calls (SPX-like).
SKEW = SVIParams(a=0.0005, b=0.045, rho=-0.85, m=0.03, sigma=0.07)


def leg(strike, right, side, ratio=1):
    return LegSpec(strike=strike, right=right, side=side, ratio=ratio, expiry=EXP)


def test_flat_smile_reproduces_black_scholes():
    density = SmileDensity.flat(0.2, T, F)
    strikes = np.array([3000.0, 4200.0, 4500.0, 4700.0, 6000.0])
    sd = 0.2 * math.sqrt(T)
    d2 = -np.log(strikes / F) / sd - 0.5 * sd
    np.testing.assert_allclose(density.survival(strikes), norm.cdf(d2), atol=1e-12)
    np.testing.assert_allclose(density.call_price(strikes), black76_price(F, strikes, T, 0.0, 0.2, True), rtol=1e-10)
    for legs, debit in [([leg(4300, "P", "buy"), leg(4400, "P", "sell")], "-30"),
                        ([leg(4400, "P", "buy"), leg(4500, "P", "sell"), leg(4600, "C", "sell"), leg(4700, "C", "buy")], "-50"),
                        ([leg(4500, "C", "buy")], "90")]:
        lognormal = structures.probability_of_profit(legs, Decimal(debit), F, T, 0.2)
        assert probability_of_profit(legs, Decimal(debit), density) == pytest.approx(lognormal, abs=1e-12)
        assert pnl_distribution(legs, Decimal(debit), density).probability_of_profit == pytest.approx(lognormal, abs=2e-3)


def test_grid_is_exact_in_mean_and_on_strikes():
    density = SmileDensity(SKEW, T, F)
    strikes = [4100.0, 4300.0, 4650.0]
    dist = market_distribution(density, strikes)
    assert dist.probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert dist.expectation(dist.prices) == pytest.approx(F, rel=1e-9)
    for k in strikes:  # Breeden–Litzenberger backwards: the law prices the calls it came from
        assert dist.expectation(np.maximum(dist.prices - k, 0.0)) == pytest.approx(float(density.call_price(k)), rel=1e-7)
        vol = float(SKEW.implied_vol(math.log(k / F), T))
        assert float(density.call_price(k)) == pytest.approx(float(black76_price(F, k, T, 0.0, vol, True)), rel=1e-10)


def _monte_carlo_sample(params: SVIParams, n: int, seed: int) -> np.ndarray:
    """Terminal prices drawn from Gatheral's density g(k)/sqrt(2 pi w) exp(-d2^2/2) (an independent
    formula: no survival function), by inverting its numerically integrated CDF."""
    sd = math.sqrt(params.total_variance(0.0))
    k = np.linspace(-14 * sd, 10 * sd, 200_001)
    w, dw, d2w = params.derivatives(k)
    g = (1 - k * dw / (2 * w)) ** 2 - 0.25 * dw * dw * (1 / w + 0.25) + 0.5 * d2w
    d2 = -k / np.sqrt(w) - 0.5 * np.sqrt(w)
    pdf = np.maximum(g, 0) / np.sqrt(2 * math.pi * w) * np.exp(-0.5 * d2 * d2)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(k))])
    cdf /= cdf[-1]
    u = np.random.default_rng(seed).random(n)
    return F * np.exp(np.interp(u, cdf, k))


def test_skewed_smile_matches_monte_carlo():
    density = SmileDensity(SKEW, T, F)
    sample = _monte_carlo_sample(SKEW, 400_000, seed=11)
    n = len(sample)
    cases = [
        ([leg(4150, "P", "buy"), leg(4250, "P", "sell")], Decimal("-18.5")),  # ~16-delta put spread
        ([leg(4300, "P", "buy"), leg(4400, "P", "sell"), leg(4600, "C", "sell"), leg(4700, "C", "buy")], Decimal("-40")),
        ([leg(4400, "C", "buy"), leg(4500, "C", "sell", 2), leg(4600, "C", "buy")], Decimal("20")),
    ]
    for legs, debit in cases:
        mc_pnl = structures.pnl_at_expiry(legs, sample, debit)
        mc_pop = float((mc_pnl > 0).mean())
        pop_se = math.sqrt(mc_pop * (1 - mc_pop) / n)
        assert probability_of_profit(legs, debit, density) == pytest.approx(mc_pop, abs=4 * pop_se + 1e-3)
        dist = pnl_distribution(legs, debit, density)
        assert dist.probability_of_profit == pytest.approx(mc_pop, abs=4 * pop_se + 2e-3)
        assert dist.mean == pytest.approx(float(mc_pnl.mean()), abs=4 * mc_pnl.std() / math.sqrt(n) + 0.05)


def test_steep_put_skew_lowers_a_put_spreads_probability_of_profit_below_lognormal_atm():
    """A 16-delta put spread (delta on the smile) sold at its fair credit: the lognormal law at
    the ATM vol misses the fat left tail the skew prices, and overstates the chance of profit."""
    density = SmileDensity(SKEW, T, F)
    strikes = np.arange(3500.0, 4500.0, 5.0)
    sd = SKEW.implied_vol(np.log(strikes / F), T) * math.sqrt(T)
    put_delta = norm.cdf(-np.log(strikes / F) / sd + sd / 2) - 1
    short = float(strikes[np.argmin(np.abs(np.abs(put_delta) - 0.16))])
    long_ = short - 50

    def put(k):  # undiscounted put by parity
        return float(density.call_price(k)) - F + k

    legs = [leg(long_, "P", "buy"), leg(short, "P", "sell")]
    credit = Decimal(str(round(put(short) - put(long_), 6)))
    lognormal = structures.probability_of_profit(legs, -credit, F, T, density.atm_vol)
    skewed = probability_of_profit(legs, -credit, density)
    assert skewed < lognormal - 0.01
    # Fairly priced under the smile: the expected P&L is zero (the grid is exact on strikes).
    assert pnl_distribution(legs, -credit, density).mean == pytest.approx(0.0, abs=1e-5)


def test_view_tilt_moves_the_mean_and_keeps_exact_and_grid_probabilities_together():
    density = SmileDensity(SKEW, T, F)
    legs, debit = [leg(4400, "C", "buy"), leg(4600, "C", "sell")], Decimal("80")
    market = probability_of_profit(legs, debit, density)
    for view in (View(drift=0.2), View(drift=-0.1, vol_scale=0.7), View(vol_scale=1.5)):
        dist = tilt(market_distribution(density), view, T)
        assert dist.expectation(dist.prices) == pytest.approx(F * math.exp(view.drift * T), rel=1e-9)
        exact = probability_of_profit(legs, debit, density, view)
        grid = pnl_distribution(legs, debit, density, view).probability_of_profit
        assert exact == pytest.approx(grid, abs=3e-3)
    assert probability_of_profit(legs, debit, density, View(drift=0.3)) > market  # bullish view, call spread
    assert probability_of_profit(legs, debit, density, View(drift=-0.3)) < market


@pytest.mark.parametrize("bad", [dict(drift=math.nan), dict(vol_scale=0.0), dict(vol_scale=10.0)])
def test_view_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        View(**bad)


def test_density_rejects_bad_input():
    with pytest.raises(ValueError):
        SmileDensity(SKEW, 0.0, F)
    with pytest.raises(ValueError):
        SmileDensity(SKEW, T, -1.0)
    with pytest.raises(ValueError):
        SmileDensity.flat(0.0, T, F)
