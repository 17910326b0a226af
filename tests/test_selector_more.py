"""agents/selector.py: iron fly, butterflies and long options, and the choice rules that pick them.

Built on the same put-skewed synthetic chain as tests/test_selector.py (spot 100, 1-point
strikes, 20 % ATM vol, 35 DTE chosen); expected values are worked out by hand from the legs.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from agents.selector import (
    DELTA_TOLERANCE,
    LONG_CALL_PROFIT_CAP_SD,
    build_proposal,
    choose_structure,
    choose_structure_with_reason,
)
from tests.test_selector import (
    AS_OF,
    CONFIG,
    DIV,
    RATE,
    SPOT,
    listed_deltas,
    oracle_delta,
    synthetic_chain,
)
from tools.chain import OptionChain, years_to_expiry
from tools.pricing import bsm_price

W = Decimal(CONFIG.wing_width_steps)  # 1-point grid: wing width in dollars == steps
CENT = Decimal("0.01")

# structure: [(right, side, ratio)] by ascending strike (C before P at one strike), credit?
EXPECTED_SHAPE = {
    "iron_fly": ([("P", "buy", 1), ("C", "sell", 1), ("P", "sell", 1), ("C", "buy", 1)], True),
    "call_butterfly": ([("C", "buy", 1), ("C", "sell", 2), ("C", "buy", 1)], False),
    "put_butterfly": ([("P", "buy", 1), ("P", "sell", 2), ("P", "buy", 1)], False),
    "long_call": ([("C", "buy", 1)], False),
    "long_put": ([("P", "buy", 1)], False),
}


@pytest.fixture(scope="module")
def base():
    return synthetic_chain()


def build(structure, chain, iv, config=CONFIG, rationale="test"):
    return build_proposal(structure, "SYN", chain, iv, config, rationale)


def expiry_t(chain, p):
    expiry = np.datetime64(p.legs[0].expiry)
    return expiry, float(chain.time_to_expiry[chain.expiry == expiry][0])


def prob_above(level, t, atm=0.20):
    """Risk-neutral lognormal P(S_T > level) at the smile's ATM vol."""
    forward = SPOT * math.exp((RATE - DIV) * t)
    return norm.cdf((math.log(forward / level) - 0.5 * atm * atm * t) / (atm * math.sqrt(t)))


@pytest.mark.parametrize("structure", list(EXPECTED_SHAPE))
def test_new_structures_on_the_skewed_synthetic_chain(base, structure):
    chain, iv = base
    result = build(structure, chain, iv)
    assert result.ok, result.reason
    p = result.proposal
    shape, is_credit = EXPECTED_SHAPE[structure]
    assert [(leg.right, leg.side, leg.ratio) for leg in p.legs] == shape
    assert p.structure == structure and p.dte == 35 and p.multiplier == 100
    expiry, t = expiry_t(chain, p)
    forward = SPOT * math.exp((RATE - DIV) * t)
    for leg in p.legs:
        assert leg.bid <= leg.mid <= leg.ask and leg.mid == leg.mid.quantize(CENT)
        assert leg.delta == pytest.approx(oracle_delta(leg, t), abs=1e-10)

    # the limit and natural prices are the ratio-weighted signed sums of the leg quotes
    assert p.net_debit == sum(leg.sign * leg.ratio * leg.mid for leg in p.legs)
    assert p.natural_debit == sum(leg.sign * leg.ratio * (leg.ask if leg.side == "buy" else leg.bid)
                                  for leg in p.legs)
    assert p.natural_debit > p.net_debit
    assert (p.net_debit < 0) == is_credit
    for name in ("delta", "gamma", "vega", "theta"):
        assert getattr(p, name) == pytest.approx(
            sum(leg.sign * leg.ratio * getattr(leg, name) for leg in p.legs), abs=1e-12)

    strikes = [leg.strike for leg in p.legs]
    debit = p.net_debit
    bes = p.breakevens
    if structure in ("iron_fly", "call_butterfly", "put_butterfly"):
        body = strikes[1]
        # the body is the listed strike nearest the forward (100 vs F = 100.29); wings 2 out
        assert body == Decimal(100) and abs(float(body) - forward) < 0.5
        assert strikes[0] == body - W and strikes[-1] == body + W
        if structure == "iron_fly":
            assert strikes[2] == body
            credit = -debit
            assert 0 < credit < W
            assert p.max_profit == credit * 100 and p.max_loss == (W - credit) * 100
            assert bes == [float(body - credit), float(body + credit)]
        else:
            assert 0 < debit < W
            assert p.max_loss == debit * 100 and p.max_profit == (W - debit) * 100
            assert bes == [float(strikes[0] + debit), float(strikes[-1] - debit)]
        # a short ATM body: short gamma and vega, long theta, about delta-neutral
        assert p.vega < 0 and p.theta > 0 and p.gamma < 0 and abs(p.delta) < 0.05
        want = prob_above(bes[0], t) - prob_above(bes[1], t)
    else:
        (leg,) = p.legs
        strikes_listed, deltas = listed_deltas(chain, iv, expiry, leg.right)
        assert float(leg.strike) == strikes_listed[np.argmin(np.abs(np.abs(deltas) - CONFIG.long_delta))]
        assert abs(abs(leg.delta) - CONFIG.long_delta) < 0.03
        assert debit == leg.mid > 0 and p.max_loss == debit * 100
        assert p.vega > 0 and p.theta < 0 and p.gamma > 0
        assert len(bes) == 1
        if structure == "long_put":
            assert p.delta < 0
            assert p.max_profit == (leg.strike - debit) * 100  # exact: the underlying goes to 0
            assert bes[0] == float(leg.strike - debit)
            want = 1 - prob_above(bes[0], t)
            assert p.rationale == "test"
        else:
            assert p.delta > 0
            assert bes[0] == float(leg.strike + debit)
            want = prob_above(bes[0], t)
            # unbounded profit, shown at the +3 SD price, and the rationale says so
            match = re.search(r"unbounded, shown at the \+3 SD price ([0-9.]+)", p.rationale)
            assert match and p.rationale.startswith("test; ")
            cap = Decimal(match.group(1))
            hand_cap = forward * math.exp(LONG_CALL_PROFIT_CAP_SD * 0.20 * math.sqrt(t))
            assert float(cap) == pytest.approx(hand_cap, abs=0.05)  # ATM vol read off mids ~ 0.20
            assert p.max_profit == (cap - leg.strike - debit) * 100
    assert p.probability_of_profit == pytest.approx(want, abs=2e-3)


def test_iron_fly_collects_more_than_the_condor_and_pays_more_than_the_butterfly(base):
    chain, iv = base
    fly = build("iron_fly", chain, iv).proposal
    condor = build("iron_condor", chain, iv).proposal
    butterfly = build("call_butterfly", chain, iv).proposal
    assert -fly.net_debit > -condor.net_debit  # the reason to choose it with very rich vol
    assert fly.probability_of_profit < condor.probability_of_profit  # narrower profit zone
    # same strikes: an iron fly and a call butterfly have the same payoff shape, up to financing
    assert [leg.strike for leg in fly.legs][::3] == [butterfly.legs[0].strike, butterfly.legs[2].strike]


# --------------------------------------------------------------------------- rejections


def rejected(structure, chain, iv, config=CONFIG):
    result = build(structure, chain, iv, config)
    assert result.proposal is None and result.reason and result.code
    return result


@pytest.mark.parametrize("structure", list(EXPECTED_SHAPE))
def test_wide_spreads_and_thin_open_interest_are_illiquid(structure):
    chain, iv = synthetic_chain(half_spread_pct=0.20)
    r = rejected(structure, chain, iv)
    assert r.code == "illiquid_leg" and "spread" in r.reason
    chain, iv = synthetic_chain(open_interest=5.0)
    r = rejected(structure, chain, iv)
    assert r.code == "illiquid_leg" and "open interest" in r.reason
    assert build(structure, chain, iv, CONFIG.with_overrides({"min_open_interest": 0})).ok


def body_rows(chain, strike=100.0, dte=35):
    return (chain.strike == strike) & (chain.expiry == np.datetime64(AS_OF.date() + timedelta(days=dte)))


@pytest.mark.parametrize("structure, right", [("iron_fly", "C"), ("iron_fly", "P"),
                                              ("call_butterfly", "C"), ("put_butterfly", "P")])
def test_zero_bid_on_the_sold_body_is_illiquid(base, structure, right):
    chain, iv = base
    row = body_rows(chain) & (chain.is_call == (right == "C"))
    bid = np.where(row, 0.0, chain.bid)
    ask = np.where(row, 1e-9, chain.ask)
    r = rejected(structure, replace(chain, bid=bid, ask=ask), iv, CONFIG.with_overrides({"max_spread_pct": 5.0}))
    assert r.code == "illiquid_leg" and "zero bid" in r.reason and f"sell 100{right}" in r.reason


@pytest.mark.parametrize("structure", ["long_call", "long_put"])
def test_an_illiquid_long_option_strike_gives_way_to_the_next_best(base, structure):
    chain, iv = base
    (leg,) = build(structure, chain, iv).proposal.legs
    row = body_rows(chain, float(leg.strike)) & (chain.is_call == (leg.right == "C"))
    p = build(structure, replace(chain, open_interest=np.where(row, 0.0, chain.open_interest)), iv).proposal
    (other,) = p.legs
    assert other.strike != leg.strike and abs(abs(other.delta) - CONFIG.long_delta) <= DELTA_TOLERANCE


@pytest.mark.parametrize("structure", ["iron_fly", "call_butterfly", "put_butterfly"])
def test_an_illiquid_body_is_not_moved_off_the_money(base, structure):
    chain, iv = base
    oi = np.where(body_rows(chain), 0.0, chain.open_interest)
    r = rejected(structure, replace(chain, open_interest=oi), iv)
    assert r.code == "illiquid_leg" and "100" in r.reason


@pytest.mark.parametrize("structure", ["iron_fly", "call_butterfly", "put_butterfly"])
def test_body_wings_off_the_listed_strikes_and_nan_body_iv(base, structure):
    chain, iv = base
    keep = (chain.strike >= 99.0) & (chain.strike <= 101.0)  # body 100, wings need 98 and 102
    r = rejected(structure, chain.select(keep), iv[keep])
    assert r.code == "no_wing_strike" and "2 steps" in r.reason
    r = rejected(structure, chain, np.where(body_rows(chain), np.nan, iv))
    assert r.code == "nan_iv" and "body at 100" in r.reason
    r = rejected(structure, chain, np.where(body_rows(chain, 102.0) | body_rows(chain, 98.0), np.nan, iv))
    assert r.code == "nan_iv" and "wing at" in r.reason


def test_butterfly_debit_at_or_above_the_wing_width(base):
    chain, iv = base
    row = body_rows(chain) & chain.is_call  # a near-free body: the fly would cost 3.84 + 1.68 - 0.22
    bid, ask = np.where(row, 0.10, chain.bid), np.where(row, 0.12, chain.ask)
    r = rejected("call_butterfly", replace(chain, bid=bid, ask=ask), iv)
    assert r.code == "debit_exceeds_width" and "2" in r.reason


def test_iron_fly_without_credit(base):
    chain, iv = base
    row = body_rows(chain)  # body quoted at 0.10/0.12 on both rights: the wings cost more
    bid, ask = np.where(row, 0.10, chain.bid), np.where(row, 0.12, chain.ask)
    assert rejected("iron_fly", replace(chain, bid=bid, ask=ask), iv).code == "no_credit"


def test_long_option_with_zero_mid_has_no_debit(base):
    chain, iv = base
    calls = chain.is_call  # 0.00 / 0.01: the mid rounds (half-even) to 0.00
    bid, ask = np.where(calls, 0.0, chain.bid), np.where(calls, 0.01, chain.ask)
    r = rejected("long_call", replace(chain, bid=bid, ask=ask), iv, CONFIG.with_overrides({"max_spread_pct": 5.0}))
    assert r.code == "no_debit"


def test_long_option_without_a_strike_near_the_delta(base):
    chain, iv = synthetic_chain(strikes=np.array([60.0, 80.0, 120.0, 140.0]))
    assert rejected("long_put", chain, iv).code == "no_strike_near_delta"


# --------------------------------------------------------------------------- choice rules


@pytest.mark.parametrize("price_view, vol_view, regime, iv_rank, expected", [
    ("neutral", "rich", "low_vol", 0.75, "iron_fly"),       # boundary: >= 0.75
    ("neutral", "neutral", "neutral", 0.90, "iron_fly"),    # rank alone makes vol rich
    ("neutral", "rich", "neutral", 0.74, "iron_condor"),
    ("neutral", "rich", "neutral", None, "iron_condor"),
    ("neutral", "rich", "high_vol", 0.95, "iron_condor"),   # not in a high-vol regime
    ("neutral", "rich", "crisis", 0.95, None),
    ("neutral", "cheap", "neutral", 0.90, None),            # explicit cheap view wins over rank
    ("bullish", "cheap", "neutral", 0.15, "long_call"),     # boundary: <= 0.15
    ("bullish", "cheap", "crisis", 0.00, "long_call"),
    ("bullish", "cheap", "neutral", 0.16, "bull_call_spread"),
    ("bullish", "cheap", "neutral", None, "bull_call_spread"),
    ("bullish", "neutral", "neutral", 0.05, "bull_call_spread"),  # low rank alone: keep the spread
    ("bullish", "rich", "low_vol", 0.05, "bull_put_spread"),
    ("bearish", "cheap", "low_vol", 0.10, "long_put"),
    ("bearish", "cheap", "high_vol", 0.20, "bear_put_spread"),
    ("bearish", "neutral", "neutral", 0.10, "bear_put_spread"),
    ("inconclusive", "cheap", "neutral", 0.05, None),
])
def test_new_choice_rules(price_view, vol_view, regime, iv_rank, expected):
    assert choose_structure(price_view, vol_view, regime, iv_rank, pin=None) == expected
    assert choose_structure(price_view, vol_view, regime, iv_rank) == expected
    choice = choose_structure_with_reason(price_view, vol_view, regime, iv_rank)
    assert choice.structure == expected and choice.reason
    if expected in ("iron_fly", "long_call", "long_put"):
        assert f"{iv_rank:.2f}" in choice.reason


def test_every_chosen_structure_builds_on_the_synthetic_chain(base):
    chain, iv = base
    chosen = {choose_structure(pv, vv, rg, rank)
              for pv in ("bullish", "bearish", "neutral", "inconclusive")
              for vv in ("rich", "cheap", "neutral")
              for rg in ("low_vol", "neutral", "high_vol", "crisis")
              for rank in (None, 0.0, 0.1, 0.3, 0.6, 0.8, 1.0)} - {None}
    pinned = {choose_structure("neutral", vv, rg, rank, pin)
              for vv in ("cheap", "neutral") for rg in ("low_vol", "neutral", "high_vol")
              for rank in (None, 0.1, 0.3) for pin in (-0.01, 0.0, 0.015)}
    assert {"iron_fly", "long_call", "long_put", "iron_condor"} <= chosen
    assert not chosen & {"call_butterfly", "put_butterfly"}  # only with a pin expected
    assert pinned == {"call_butterfly", "put_butterfly"}
    for structure in chosen | pinned:
        assert build(structure, chain, iv).ok, structure


# --------------------------------------------------------------------------- butterfly property


def flat_chain(spot, vol, spacing, n_strikes, half_spread_pct) -> tuple[OptionChain, np.ndarray]:
    """One 35-DTE expiry, strikes `spacing` apart around spot, quotes around flat-vol BSM prices."""
    center = round(spot / spacing) * spacing
    strikes = center + spacing * np.arange(-n_strikes, n_strikes + 1, dtype=float)
    strikes = strikes[strikes > 0]
    expiry = np.datetime64(AS_OF.date() + timedelta(days=35))
    k = np.concatenate([strikes, strikes])
    call = np.concatenate([np.ones(len(strikes), bool), np.zeros(len(strikes), bool)])
    exp = np.full(len(k), expiry, dtype="datetime64[D]")
    t = years_to_expiry(exp, AS_OF)
    price = bsm_price(spot, k, t, RATE, DIV, vol, call)
    half = np.maximum(0.01, half_spread_pct * price)
    bid = np.maximum(np.floor((price - half) * 100) / 100, 0.0)
    ask = np.ceil((price + half) * 100) / 100
    n = len(k)
    chain = OptionChain(underlying="SYN", as_of=AS_OF, spot=spot, expiry=exp, strike=k, is_call=call,
                        bid=bid, ask=ask, last=np.full(n, np.nan), volume=np.full(n, 50.0),
                        open_interest=np.full(n, 1000.0), rate=RATE, dividend_yield=DIV, source="synthetic")
    return chain, np.full(n, vol)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    structure=st.sampled_from(["call_butterfly", "put_butterfly"]),
    spot=st.floats(20.0, 600.0),
    vol=st.floats(0.08, 0.80),
    spacing=st.sampled_from([0.5, 1.0, 2.5, 5.0, 10.0]),
    steps=st.integers(1, 4),
    half_spread_pct=st.floats(0.0, 0.08),
)
def test_butterfly_loss_is_the_debit_and_profit_the_width_less_the_debit(
        structure, spot, vol, spacing, steps, half_spread_pct):
    assume(spacing * 13 < spot)  # every listed strike positive: no wing falls off the grid
    chain, iv = flat_chain(spot, vol, spacing, n_strikes=12, half_spread_pct=half_spread_pct)
    result = build(structure, chain, iv, CONFIG.with_overrides({"wing_width_steps": steps}))
    if not result.ok:
        # the only honest refusals on a clean chain: a penny-wide quote on a cheap wing, a debit
        # eaten by rounding, or no profit possible
        assert result.code in ("illiquid_leg", "debit_exceeds_width", "no_debit"), result.reason
        assume(False)
    p = result.proposal
    low, body, high = (leg.strike for leg in p.legs)
    width = high - body
    assert body - low == width == Decimal(str(spacing)) * steps
    assert [leg.ratio for leg in p.legs] == [1, 2, 1]
    debit = p.net_debit
    assert p.max_loss == debit * p.multiplier
    assert p.max_profit == (width - debit) * p.multiplier
    assert p.breakevens == [float(low + debit), float(high - debit)]
    assert 0.0 < p.probability_of_profit < 1.0


# --------------------------------------------------------------------------- real chains


# On 2022-02-04 the SPX 4490 put (the lower wing of the 4500-body flies) has open interest 5.
REAL_REJECTIONS = {
    "spy_quotedata_2023-09-14.csv": {},
    "spx_quotedata_2022-02-04.csv": {"iron_fly": "buy 4490P: open interest 5.0 below 10",
                                     "put_butterfly": "buy 4490P: open interest 5.0 below 10"},
}


@pytest.mark.parametrize("filename", list(REAL_REJECTIONS))
def test_new_structures_on_real_cboe_chains(shared_data, filename):
    from tools.cboe import read_cboe_quote_table
    from tools.implied_vol import chain_implied_vol

    chain = read_cboe_quote_table(shared_data / "cboe" / filename)
    iv = chain_implied_vol(chain).vol
    for structure, (shape, is_credit) in EXPECTED_SHAPE.items():
        result = build(structure, chain, iv, rationale="real chain")
        if structure in REAL_REJECTIONS[filename]:
            assert (result.code, result.reason) == ("illiquid_leg", REAL_REJECTIONS[filename][structure])
            result = build(structure, chain, iv, CONFIG.with_overrides({"min_open_interest": 0}), "real chain")
        assert result.ok, f"{structure}: {result.code} {result.reason}"
        p = result.proposal
        assert [(leg.right, leg.side, leg.ratio) for leg in p.legs] == shape
        assert (p.net_debit < 0) == is_credit and p.max_loss > 0 and p.max_profit > 0
        assert 0.0 < p.probability_of_profit < 1.0
        if structure == "long_call":
            assert "unbounded" in p.rationale
        if len(p.legs) > 1:  # ATM body within one strike step of the forward
            body = float(p.legs[1].strike)
            step = float(p.legs[-1].strike - p.legs[1].strike) / CONFIG.wing_width_steps
            assert abs(body - p.underlying_price) <= step + 1.0


@pytest.mark.parametrize("price_view, vol_view, regime, iv_rank, pin, expected", [
    ("neutral", "neutral", "neutral", 0.30, 0.005, "call_butterfly"),
    ("neutral", "cheap", "low_vol", 0.10, -0.012, "put_butterfly"),
    ("neutral", "neutral", "high_vol", None, 0.02, "call_butterfly"),   # boundary: within 2%
    ("neutral", "neutral", "neutral", 0.30, 0.021, None),               # pin too far
    ("neutral", "neutral", "crisis", 0.30, 0.0, None),                  # not into a crisis
    ("neutral", "rich", "neutral", 0.60, 0.0, "iron_condor"),           # rich vol: sell the range
    ("bullish", "neutral", "neutral", 0.30, 0.0, "bull_call_spread"),   # a direction wins over a pin
])
def test_a_pin_buys_a_butterfly_on_a_neutral_view(price_view, vol_view, regime, iv_rank, pin, expected):
    choice = choose_structure_with_reason(price_view, vol_view, regime, iv_rank, pin)
    assert choice.structure == expected
    if expected in ("call_butterfly", "put_butterfly"):
        assert "max pain" in choice.reason and "pin" in choice.reason
    with pytest.raises(ValueError, match="pin"):
        choose_structure_with_reason(price_view, vol_view, regime, iv_rank, math.nan)


def test_expected_pin_on_real_chains(shared_data):
    from agents.selector import expected_pin
    from tools.cboe import read_cboe_quote_table
    from tools.chain_analysis import analyze_chain

    chain = read_cboe_quote_table(shared_data / "cboe" / "spy_quotedata_2023-09-14.csv")
    flow = analyze_chain(chain).flow
    pin = expected_pin(flow, chain.spot, chain.as_of, CONFIG.target_dte)
    if chain.spot > flow.zero_gamma_level:
        assert pin is not None and abs(pin) < 0.1
    else:
        assert pin is None
    assert expected_pin(flow, flow.zero_gamma_level * 0.99, chain.as_of, CONFIG.target_dte) is None  # short gamma
    assert expected_pin(None, chain.spot, chain.as_of, CONFIG.target_dte) is None
