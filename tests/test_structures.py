"""tools/structures.py: expiry payoff, P&L extremes, breakevens, PoP and net Greeks."""
from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from domain.decision import OptionLeg
from tools.structures import (
    LegSpec,
    breakevens,
    has_naked_short,
    max_profit_loss,
    net_greeks,
    payoff_at_expiry,
    pnl_at_expiry,
    probability_of_profit,
    profit_intervals,
)

D = Decimal
EXP = date(2024, 3, 15)


def leg(strike, right, side, ratio=1):
    return LegSpec(strike=strike, right=right, side=side, ratio=ratio, expiry=EXP)


BULL_PUT = [leg(95, "P", "buy"), leg(100, "P", "sell")]
BEAR_CALL = [leg(105, "C", "sell"), leg(110, "C", "buy")]
BULL_CALL = [leg(100, "C", "buy"), leg(110, "C", "sell")]
BEAR_PUT = [leg(90, "P", "sell"), leg(100, "P", "buy")]
CONDOR = [leg(90, "P", "buy"), leg(95, "P", "sell"), leg(105, "C", "sell"), leg(110, "C", "buy")]
BUTTERFLY = [leg(95, "C", "buy"), leg(100, "C", "sell", 2), leg(105, "C", "buy")]

# (legs, net debit, max profit, max loss, breakevens) — all worked by hand, per share.
HAND_CASES = [
    (BULL_PUT, "-1.50", "1.50", "3.50", [98.5]),
    (BEAR_CALL, "-1.20", "1.20", "3.80", [106.2]),
    (BULL_CALL, "4.00", "6.00", "4.00", [104.0]),
    (BEAR_PUT, "3.50", "6.50", "3.50", [96.5]),
    (CONDOR, "-2.00", "2.00", "3.00", [93.0, 107.0]),
    # unequal wings: the wider (call) side sets the loss, 10 - 2
    ([leg(90, "P", "buy"), leg(95, "P", "sell"), leg(105, "C", "sell"), leg(115, "C", "buy")],
     "-2.00", "2.00", "8.00", [93.0, 107.0]),
    (BUTTERFLY, "1.50", "3.50", "1.50", [96.5, 103.5]),
    ([leg(100, "P", "buy")], "3.00", "97.00", "3.00", [97.0]),  # long put: profit capped at K - debit
    ([leg(100, "P", "sell")], "-2.00", "2.00", "98.00", [98.0]),  # naked put: bounded but large
]


@pytest.mark.parametrize("legs, debit, profit, loss, bes", HAND_CASES)
def test_extremes_and_breakevens_match_hand_calculations(legs, debit, profit, loss, bes):
    pl = max_profit_loss(legs, D(debit))
    assert pl.max_profit == D(profit) and pl.max_loss == D(loss)
    assert not pl.profit_unbounded and not pl.loss_unbounded
    assert breakevens(legs, D(debit)) == pytest.approx(bes, abs=1e-12)
    # the P&L really is zero at each breakeven and hits the extremes on a fine grid
    assert pnl_at_expiry(legs, bes, D(debit)) == pytest.approx(0.0, abs=1e-9)
    grid = np.linspace(0, 250, 250_001)
    pnl = pnl_at_expiry(legs, grid, D(debit))
    assert pnl.max() == pytest.approx(float(profit), abs=1e-9)
    assert -pnl.min() == pytest.approx(float(loss), abs=1e-9)


def test_payoff_values_by_hand():
    prices = [80, 90, 93, 95, 100, 105, 107, 110, 130]
    assert payoff_at_expiry(CONDOR, prices).tolist() == [-5, -5, -2, 0, 0, 0, -2, -5, -5]
    assert payoff_at_expiry(BUTTERFLY, prices).tolist() == [0, 0, 0, 0, 5, 0, 0, 0, 0]
    assert payoff_at_expiry(BULL_PUT, np.array([[90.0], [97.0]])).tolist() == [[-5.0], [-3.0]]
    assert pnl_at_expiry(BULL_CALL, [100, 105, 120], D("4")).tolist() == [-4, 1, 6]


def test_long_call_profit_is_flagged_unbounded():
    pl = max_profit_loss([leg(100, "C", "buy")], D("3"))
    assert pl.profit_unbounded and pl.max_profit == D("Infinity")
    assert pl.max_loss == D("3") and not pl.loss_unbounded
    assert breakevens([leg(100, "C", "buy")], D("3")) == [103.0]
    assert profit_intervals([leg(100, "C", "buy")], D("3")) == [(103.0, math.inf)]


def test_naked_short_call_loss_is_flagged_unbounded():
    legs = [leg(100, "C", "sell")]
    pl = max_profit_loss(legs, D("-2"))
    assert pl.loss_unbounded and pl.max_loss == D("Infinity") and pl.max_profit == D("2")
    assert has_naked_short(legs)
    # a ratio call spread (1x2) is short one call net: unbounded too
    ratio = [leg(100, "C", "buy"), leg(105, "C", "sell", 2)]
    assert max_profit_loss(ratio, D("0.5")).loss_unbounded and has_naked_short(ratio)
    assert has_naked_short([leg(100, "P", "sell")])
    for covered in (BULL_PUT, BEAR_CALL, CONDOR, BUTTERFLY):
        assert not has_naked_short(covered)


def test_dollars_applies_the_multiplier():
    pl = max_profit_loss(CONDOR, D("-2.05")).dollars(100)
    assert (pl.max_profit, pl.max_loss) == (D("205.00"), D("295.00"))


def test_debit_above_width_means_no_profit_and_no_breakeven():
    pl = max_profit_loss(BULL_CALL, D("10.50"))
    assert pl.max_profit == D("-0.50") and pl.max_loss == D("10.50")
    assert breakevens(BULL_CALL, D("10.50")) == []
    assert profit_intervals(BULL_CALL, D("10.50")) == []
    assert probability_of_profit(BULL_CALL, D("10.50"), 100, 0.1, 0.2) == 0.0


def test_flat_zero_segment_reports_both_ends():
    # a bull call spread for free: P&L is exactly 0 on [0, 100] (S = 0 is not a breakeven)
    assert breakevens(BULL_CALL, D("0")) == [100.0]
    # a bull put spread for no credit: P&L is exactly 0 from 100 upwards
    assert breakevens(BULL_PUT, D("0")) == [100.0]
    # a debit equal to the spread width: flat at zero from 110 upwards
    assert breakevens(BULL_CALL, D("10")) == [110.0]


def _d2_prob_above(level, spot, t, vol, r, q):
    forward = spot * math.exp((r - q) * t)
    return norm.cdf((math.log(forward / level) - 0.5 * vol * vol * t) / (vol * math.sqrt(t)))


def test_pop_matches_closed_form_for_vertical_and_condor():
    spot, t, vol, r, q = 100.0, 30 / 365, 0.25, 0.04, 0.01
    got = probability_of_profit(BULL_PUT, D("-1.50"), spot, t, vol, r, q)
    assert got == pytest.approx(_d2_prob_above(98.5, spot, t, vol, r, q), abs=1e-12)
    got = probability_of_profit(CONDOR, D("-2"), spot, t, vol, r, q)
    want = _d2_prob_above(93.0, spot, t, vol, r, q) - _d2_prob_above(107.0, spot, t, vol, r, q)
    assert got == pytest.approx(want, abs=1e-12)


def test_pop_matches_seeded_monte_carlo_for_butterfly():
    spot, t, vol, r, q = 100.0, 45 / 365, 0.3, 0.05, 0.0
    rng = np.random.default_rng(20240315)
    n = 400_000
    z = rng.standard_normal(n)
    st_ = spot * np.exp((r - q - 0.5 * vol * vol) * t + vol * math.sqrt(t) * z)
    mc = float(np.mean(pnl_at_expiry(BUTTERFLY, st_, D("1.5")) > 0))
    exact = probability_of_profit(BUTTERFLY, D("1.5"), spot, t, vol, r, q)
    se = math.sqrt(mc * (1 - mc) / n)
    assert abs(exact - mc) < 4 * se


def test_pop_vectorizes_and_handles_degenerate_inputs():
    spots = np.array([90.0, 100.0, 110.0])
    out = probability_of_profit(BULL_PUT, D("-1.5"), spots, 0.1, 0.2)
    assert out.shape == (3,)
    assert out.tolist() == pytest.approx([probability_of_profit(BULL_PUT, D("-1.5"), s, 0.1, 0.2) for s in spots])
    assert np.all(np.diff(out) > 0)  # a bullish structure gains PoP as spot rises
    # zero time or zero vol: the deterministic forward decides
    assert probability_of_profit(BULL_PUT, D("-1.5"), 99.0, 0.0, 0.2) == 1.0
    assert probability_of_profit(BULL_PUT, D("-1.5"), 98.0, 0.1, 0.0) == 0.0
    # bad input is NaN element-wise, not an exception
    bad = probability_of_profit(BULL_PUT, D("-1.5"), [100.0, -1.0, np.nan], 0.1, [0.2, 0.2, 0.2])
    assert bad[0] > 0 and math.isnan(bad[1]) and math.isnan(bad[2])
    assert math.isnan(probability_of_profit(BULL_PUT, D("-1.5"), 100.0, -0.1, 0.2))
    assert math.isnan(probability_of_profit(BULL_PUT, D("-1.5"), 100.0, 0.1, -0.2))


def test_bad_legs_are_clear_errors():
    with pytest.raises(ValueError, match="at least one leg"):
        max_profit_loss([], D("1"))
    with pytest.raises(ValueError, match="expiries"):
        payoff_at_expiry([LegSpec(100, "C", "buy", 1, date(2024, 3, 15)),
                          LegSpec(100, "C", "sell", 1, date(2024, 4, 19))], [100.0])
    with pytest.raises(ValueError, match="ratio"):
        breakevens([LegSpec(100, "C", "buy", 0)], D("1"))
    with pytest.raises(ValueError, match="right"):
        breakevens([LegSpec(100, "X", "buy")], D("1"))
    with pytest.raises(ValueError, match="strike"):
        breakevens([LegSpec(-5, "C", "buy")], D("1"))
    with pytest.raises(ValueError, match=">= 0"):
        payoff_at_expiry(BULL_PUT, [-1.0])
    with pytest.raises(ValueError, match="finite"):
        max_profit_loss(BULL_PUT, float("nan"))


def test_accepts_schema_option_legs():
    legs = [
        OptionLeg(expiry=EXP, strike=D("95"), right="P", side="buy", bid=D("0.9"), ask=D("1.0"), mid=D("0.95")),
        OptionLeg(expiry=EXP, strike=D("100"), right="P", side="sell", bid=D("2.4"), ask=D("2.5"), mid=D("2.45")),
    ]
    pl = max_profit_loss(legs, D("-1.50"))
    assert (pl.max_profit, pl.max_loss) == (D("1.50"), D("3.50"))
    assert breakevens(legs, D("-1.50")) == [98.5]


# --------------------------------------------------------------------------- properties

strike_st = st.integers(min_value=20, max_value=400).map(lambda k: D(k) / 2)


@st.composite
def verticals(draw):
    k1 = draw(strike_st)
    k2 = draw(strike_st.filter(lambda k: k != k1))
    lo, hi = min(k1, k2), max(k1, k2)
    right = draw(st.sampled_from(["C", "P"]))
    bullish = draw(st.booleans())
    # bull call / bear put are debits; bear call / bull put are credits
    if right == "C":
        legs = [LegSpec(lo, "C", "buy" if bullish else "sell"), LegSpec(hi, "C", "sell" if bullish else "buy")]
        debit_structure = bullish
    else:
        legs = [LegSpec(lo, "P", "buy" if bullish else "sell"), LegSpec(hi, "P", "sell" if bullish else "buy")]
        debit_structure = not bullish
    width = hi - lo
    cents = draw(st.integers(min_value=1, max_value=int(width * 100) - 1))
    premium = D(cents) / 100
    net_debit = premium if debit_structure else -premium
    return legs, net_debit, lo, hi, width


@settings(max_examples=150, deadline=None)
@given(verticals())
def test_vertical_profit_plus_loss_is_the_width(v):
    legs, net_debit, lo, hi, width = v
    pl = max_profit_loss(legs, net_debit)
    assert pl.max_profit > 0 and pl.max_loss > 0
    assert pl.max_profit + pl.max_loss == width
    dollars = pl.dollars(100)
    assert dollars.max_profit + dollars.max_loss == width * 100
    bes = breakevens(legs, net_debit)
    assert len(bes) == 1 and float(lo) < bes[0] < float(hi)


@settings(max_examples=60, deadline=None)
@given(verticals(), st.floats(20, 200), st.floats(0.01, 1.0), st.floats(0.05, 1.0))
def test_pop_of_a_trade_and_its_mirror_sum_to_one(v, spot, t, vol):
    legs, net_debit, *_ = v
    mirror = [LegSpec(x.strike, x.right, "sell" if x.side == "buy" else "buy") for x in legs]
    p = probability_of_profit(legs, net_debit, spot, t, vol, 0.03, 0.01)
    p_mirror = probability_of_profit(mirror, -net_debit, spot, t, vol, 0.03, 0.01)
    assert 0.0 <= p <= 1.0
    assert p + p_mirror == pytest.approx(1.0, abs=1e-12)


greek_st = st.floats(-50, 50, allow_nan=False)


@st.composite
def greek_legs(draw):
    n = draw(st.integers(1, 5))
    out = []
    for _ in range(n):
        out.append(OptionLeg(
            expiry=EXP, strike=draw(strike_st), right=draw(st.sampled_from(["C", "P"])),
            side=draw(st.sampled_from(["buy", "sell"])), ratio=draw(st.integers(1, 3)),
            bid=D("1.00"), ask=D("1.10"), mid=D("1.05"),
            delta=draw(greek_st), gamma=draw(greek_st), vega=draw(greek_st), theta=draw(greek_st),
        ))
    return out


@settings(max_examples=100, deadline=None)
@given(greek_legs())
def test_net_greeks_are_the_signed_ratio_weighted_sum(legs):
    g = net_greeks(legs)
    for name in ("delta", "gamma", "vega", "theta"):
        want = math.fsum((1 if x.side == "buy" else -1) * x.ratio * getattr(x, name) for x in legs)
        assert getattr(g, name) == pytest.approx(want, abs=1e-9)


def test_net_greeks_nan_when_a_leg_lacks_one():
    legs = [
        OptionLeg(expiry=EXP, strike=D("95"), right="P", side="buy", bid=D("1"), ask=D("1.1"), mid=D("1.05"),
                  delta=-0.2, gamma=0.01, vega=0.1, theta=-3.0),
        OptionLeg(expiry=EXP, strike=D("100"), right="P", side="sell", bid=D("2"), ask=D("2.1"), mid=D("2.05"),
                  delta=-0.35, gamma=0.02, vega=None, theta=-4.0),
    ]
    g = net_greeks(legs)
    assert g.delta == pytest.approx(0.15) and g.gamma == pytest.approx(-0.01) and g.theta == pytest.approx(1.0)
    assert math.isnan(g.vega)
