"""tools/two_expiry.py: calendars and diagonals valued at the near expiry on the fitted surface."""
from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

import numpy as np
import pytest
from scipy.stats import norm

from tools.density import SmileDensity
from tools.pricing import black76_price
from tools.structures import LegSpec
from tools.svi import SVIParams
from tools.two_expiry import (
    MIN_FORWARD_VOL,
    FarSmile,
    TwoExpiryModel,
    numeric_extremes,
    pnl_at_near_expiry,
    probability_of_profit,
)

NEAR, FAR = date(2024, 3, 15), date(2024, 4, 19)
T1, T2 = 30 / 365, 65 / 365
F = 100.0


def flat(vol: float, t: float) -> SVIParams:
    return SVIParams(a=vol * vol * t, b=0.0, rho=0.0, m=0.0, sigma=1.0)


def model(near_vol=0.20, far_vol=0.20, far_params=None) -> TwoExpiryModel:
    return TwoExpiryModel(SmileDensity(flat(near_vol, T1), T1, F), 1.0,
                          FarSmile(far_params or flat(far_vol, T2), T2, F, 1.0))


CALENDAR = [LegSpec(100, "C", "sell", 1, NEAR), LegSpec(100, "C", "buy", 1, FAR)]


def test_far_leg_on_a_flat_surface_is_black_scholes_over_the_remaining_time():
    m = model()
    prices = np.array([80.0, 95.0, 100.0, 110.0])
    expected = black76_price(prices, 100.0, T2 - T1, 0.0, 0.20, True)
    np.testing.assert_allclose(m.far_value(100.0, True, prices), expected, rtol=1e-12)
    # Term structure: the forward vol is sqrt((w2 - w1) / (t2 - t1)); 20% then 30% total.
    rising = model(0.20, 0.25)
    forward_vol = math.sqrt((0.25 ** 2 * T2 - 0.20 ** 2 * T1) / (T2 - T1))
    assert float(rising.forward_vol(100.0, np.array([100.0]))[0]) == pytest.approx(forward_vol)
    # Calendar arbitrage (far variance below near): floored, never imaginary.
    inverted = model(0.40, 0.10)
    assert float(inverted.forward_vol(100.0, np.array([100.0]))[0]) == pytest.approx(MIN_FORWARD_VOL)


def test_calendar_extremes_and_breakevens_found_numerically():
    m = model()
    debit = float(black76_price(F, 100.0, T2, 0.0, 0.20, True) - black76_price(F, 100.0, T1, 0.0, 0.20, True))
    ex = numeric_extremes(CALENDAR, debit, m)
    # Max profit at the strike: the far call's remaining time value less the debit.
    assert ex.profit_at == pytest.approx(100.0, rel=1e-4)
    assert ex.max_profit == pytest.approx(float(black76_price(100.0, 100.0, T2 - T1, 0.0, 0.2, True)) - debit, rel=1e-6)
    assert ex.max_loss == pytest.approx(debit, rel=1e-6)  # far from the strike both legs are worth ~0 net
    lo, hi = ex.breakevens
    assert lo < 100.0 < hi
    for be in ex.breakevens:
        assert float(pnl_at_near_expiry(CALENDAR, debit, [be], m)[0]) == pytest.approx(0.0, abs=1e-7)
    # Probability of profit: the lognormal mass between the breakevens (flat near smile).
    sd = 0.2 * math.sqrt(T1)
    want = norm.cdf((math.log(hi / F) + sd * sd / 2) / sd) - norm.cdf((math.log(lo / F) + sd * sd / 2) / sd)
    assert probability_of_profit(CALENDAR, debit, m) == pytest.approx(want, abs=1e-9)


def test_skewed_surface_probability_matches_monte_carlo():
    near = SVIParams(a=0.0005, b=0.03, rho=-0.7, m=0.02, sigma=0.08)
    far = SVIParams(a=0.001, b=0.045, rho=-0.6, m=0.03, sigma=0.12)
    m = TwoExpiryModel(SmileDensity(near, T1, F), 0.998, FarSmile(far, T2, F * 1.001, 0.996))
    diagonal = [LegSpec(103, "C", "sell", 1, NEAR), LegSpec(100, "C", "buy", 1, FAR)]
    debit = Decimal("2.10")
    # Draw S at the near expiry by inverting the near smile's survival function numerically.
    grid = F * np.exp(np.linspace(-1.2, 1.2, 200_001))
    cdf = 1.0 - m.near.survival(grid)
    u = np.random.default_rng(5).random(300_000)
    sample = np.interp(u, cdf, grid)
    mc = float((pnl_at_near_expiry(diagonal, debit, sample, m) > 0).mean())
    assert probability_of_profit(diagonal, debit, m) == pytest.approx(mc, abs=4 * math.sqrt(mc * (1 - mc) / len(u)) + 1e-3)
    ex = numeric_extremes(diagonal, debit, m)
    dense = pnl_at_near_expiry(diagonal, debit, np.linspace(50, 200, 300_001), m)
    assert ex.max_profit >= dense.max() - 1e-9 and ex.max_profit == pytest.approx(dense.max(), abs=1e-4)
    assert ex.max_loss >= -dense.min() - 1e-9


def test_bad_two_expiry_input():
    with pytest.raises(ValueError, match="two expiries"):
        pnl_at_near_expiry([LegSpec(100, "C", "buy", 1, NEAR)], 1.0, [100.0], model())
    with pytest.raises(ValueError, match="after the near"):
        TwoExpiryModel(SmileDensity(flat(0.2, T2), T2, F), 1.0, FarSmile(flat(0.2, T1), T1, F, 1.0))
