"""Broken-wing butterflies and the jade lizard: exact payoffs, choice rules, no naked shorts, real chains."""
from __future__ import annotations

import random
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.selector import build_proposal, choose_structure_with_reason
from config.settings import DecisionConfig
from risk.gate import uncovered_short_legs
from tests.test_selector_more import flat_chain
from tools.structures import LegSpec, breakevens, has_naked_short, max_profit_loss, pnl_at_expiry

D = Decimal
EXP = date(2024, 3, 15)
LIZARD_OK = DecisionConfig(jade_lizard_short_put="cash_secured")


def leg(strike, right, side, ratio=1):
    return LegSpec(strike=strike, right=right, side=side, ratio=ratio, expiry=EXP)


# Hand-worked, per share: call BWB 90/100x2/105 for 2.00; put BWB 95/100x2/110 for 1.50;
# jade lizard: short 90 put, short 105 / long 110 call spread, for 6.00 of credit.
CALL_BWB = [leg(90, "C", "buy"), leg(100, "C", "sell", 2), leg(105, "C", "buy")]
PUT_BWB = [leg(95, "P", "buy"), leg(100, "P", "sell", 2), leg(110, "P", "buy")]
LIZARD = [leg(90, "P", "sell"), leg(105, "C", "sell"), leg(110, "C", "buy")]


@pytest.mark.parametrize("legs, debit, profit, loss, bes, samples", [
    # call BWB: -2 below 90, +8 at 100, +3 above 105 (the skipped strike keeps paying above the body)
    (CALL_BWB, "2.00", "8.00", "2.00", [92.0], {80: -2, 92: 0, 100: 8, 103: 5, 120: 3}),
    # put BWB: +3.5 below 95, +8.5 at 100, -1.5 above 110
    (PUT_BWB, "1.50", "8.50", "1.50", [108.5], {50: 3.5, 100: 8.5, 108.5: 0, 130: -1.5}),
    # lizard: credit 6 >= call width 5, so +1 at worst above 110; the put's loss 90 - 6 = 84 at S = 0
    (LIZARD, "-6.00", "6.00", "84.00", [84.0], {0: -84, 84: 0, 100: 6, 108: 3, 200: 1}),
])
def test_exact_payoff_extremes_and_breakevens(legs, debit, profit, loss, bes, samples):
    pl = max_profit_loss(legs, D(debit))
    assert (pl.max_profit, pl.max_loss, pl.profit_unbounded, pl.loss_unbounded) == (D(profit), D(loss), False, False)
    assert breakevens(legs, D(debit)) == bes
    for price, expected in samples.items():
        assert float(pnl_at_expiry(legs, [price], D(debit))[0]) == pytest.approx(expected)


def test_lizard_without_enough_credit_has_upside_risk():
    assert float(pnl_at_expiry(LIZARD, [500.0], D("-4.00"))[0]) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def synthetic():
    return flat_chain(100.0, 0.25, 1.0, 40, 0.02)


def test_broken_wings_and_lizard_build_on_a_synthetic_chain(synthetic):
    chain, iv = synthetic
    call = build_proposal("call_broken_wing_butterfly", "T", chain, iv, DecisionConfig(), "t", target=103.0).proposal
    assert [(l.side, l.ratio, l.strike, l.right) for l in call.legs] == [
        ("buy", 1, D(99), "C"), ("sell", 2, D(103), "C"), ("buy", 1, D(105), "C")]
    assert call.max_loss == call.net_debit * 100 and call.max_profit == (4 - call.net_debit) * 100
    put = build_proposal("put_broken_wing_butterfly", "T", chain, iv, DecisionConfig(), "t", target=97.0).proposal
    assert [(l.side, l.ratio, l.strike) for l in put.legs] == [("buy", 1, D(95)), ("sell", 2, D(97)), ("buy", 1, D(101))]
    refused = build_proposal("jade_lizard", "T", chain, iv, DecisionConfig(), "t")
    assert refused.code == "naked_short_refused"
    # A flat 25% smile pays 1.47 for a 2-wide call spread plus the put: upside risk, refused.
    lizard = build_proposal("jade_lizard", "T", chain, iv, LIZARD_OK, "t")
    assert lizard.code == "lizard_upside_risk" and "below the call spread width 2" in lizard.reason


@settings(max_examples=60, deadline=None)
@given(structure=st.sampled_from(["call_broken_wing_butterfly", "put_broken_wing_butterfly", "jade_lizard"]),
       steps=st.integers(1, 4), target=st.floats(90, 110), short_delta=st.floats(0.10, 0.35),
       vol=st.floats(0.15, 0.9), seed=st.integers(0, 1000))
def test_leg_order_and_signs_never_make_a_naked_short(structure, steps, target, short_delta, vol, seed):
    chain, iv = flat_chain(100.0, vol, 1.0, 40, 0.02)
    config = LIZARD_OK.with_overrides({"wing_width_steps": steps, "short_delta": short_delta})
    result = build_proposal(structure, "T", chain, iv, config, "t", target=target)
    if not result.ok:
        return
    legs = list(result.proposal.legs)
    random.Random(seed).shuffle(legs)  # order must not matter
    if structure == "jade_lizard":
        # Only the put is uncovered (the gate vetoes it); the call side is always a covered spread.
        uncovered = uncovered_short_legs(legs)
        assert [(l.right, n) for l, n in uncovered] == [("P", 1)]
        assert -result.proposal.net_debit >= max(l.strike for l in legs if l.right == "C") - min(
            l.strike for l in legs if l.right == "C")
    else:
        assert not has_naked_short(legs) and uncovered_short_legs(legs) == []
        assert not max_profit_loss(legs, result.proposal.net_debit).loss_unbounded


@pytest.mark.parametrize("price_view, vol_view, iv_rank, pin, rr, allow, expected", [
    ("bullish", "neutral", 0.3, 0.01, None, False, "call_broken_wing_butterfly"),
    ("bullish", "neutral", 0.3, -0.01, None, False, "bull_call_spread"),     # target on the wrong side
    ("bullish", "neutral", 0.3, 0.003, None, False, "bull_call_spread"),     # too close to be a target
    ("bearish", "rich", 0.7, -0.015, None, False, "put_broken_wing_butterfly"),
    ("bullish", "rich", 0.7, None, -0.06, True, "jade_lizard"),
    ("bullish", "rich", 0.7, None, -0.06, False, "bull_put_spread"),         # lizard not allowed
    ("bullish", "rich", 0.7, None, -0.02, True, "bull_put_spread"),          # put skew not rich
    ("bullish", "cheap", 0.1, 0.01, None, False, "long_call"),               # very cheap vol first
])
def test_choice_of_broken_wings_and_lizard(price_view, vol_view, iv_rank, pin, rr, allow, expected):
    choice = choose_structure_with_reason(price_view, vol_view, "neutral", iv_rank, pin, rr, allow)
    assert choice.structure == expected and choice.reason
    assert choose_structure_with_reason(price_view, vol_view, "crisis", iv_rank, pin, None, False).structure != (
        "call_broken_wing_butterfly")


@pytest.mark.parametrize("filename", ["spx_quotedata_2022-02-04.csv", "spy_quotedata_2023-09-14.csv"])
def test_new_structures_on_real_chains(shared_data, filename):
    from tools.cboe import read_cboe_quote_table
    from tools.chain_analysis import analyze_chain

    chain = read_cboe_quote_table(shared_data / "cboe" / filename)
    analysis = analyze_chain(chain)
    config = LIZARD_OK.with_overrides({"min_open_interest": 0})
    for structure in ("call_broken_wing_butterfly", "put_broken_wing_butterfly", "jade_lizard"):
        result = build_proposal(structure, "X", chain, analysis.chain_iv.vol, config, "real", surface=analysis.surface)
        assert result.ok, f"{structure}: {result.code} {result.reason}"
        p = result.proposal
        assert p.max_loss > 0 and p.max_profit > 0 and 0 < p.probability_of_profit < 1
        assert p.pop_model == "svi_density"
        if structure == "jade_lizard":
            assert [l.right for l, _ in uncovered_short_legs(p.legs)] == ["P"]
            calls = [l.strike for l in p.legs if l.right == "C"]
            assert -p.net_debit >= max(calls) - min(calls)  # the skew pays for no upside risk
            put_strike = next(l.strike for l in p.legs if l.right == "P")
            assert p.max_loss == (put_strike + p.net_debit) * p.multiplier  # cash-secured: strike less credit
        else:
            assert not has_naked_short(p.legs)


# --------------------------------------------------------------------------- calendars and diagonals


@pytest.mark.parametrize("price_view, regime_name, expected", [
    ("neutral", "neutral", "call_calendar"),
    ("bullish", "high_vol", "call_diagonal"),
    ("bearish", "low_vol", "put_diagonal"),
    ("neutral", "crisis", None),  # not into a crisis: the rich-vol cell says no condor either
])
def test_an_inverted_term_structure_chooses_calendars_and_diagonals(price_view, regime_name, expected):
    choice = choose_structure_with_reason(price_view, "rich", regime_name, 0.6, term_inverted=True)
    assert choice.structure == expected
    if expected:
        assert "term structure inverted" in choice.reason
    assert choose_structure_with_reason(price_view, "rich", regime_name, 0.6).structure != expected or expected is None


@pytest.mark.parametrize("filename, structures", [
    ("spy_quotedata_2023-09-14.csv", ("call_calendar", "put_calendar", "call_diagonal", "put_diagonal")),
    ("spx_quotedata_2022-02-04.csv", ("call_calendar", "call_diagonal", "put_diagonal")),
])
def test_calendars_and_diagonals_on_real_chains(shared_data, filename, structures):
    from agents.allocator import view_distribution
    from domain.orders import OptionContract
    from brokers.margin import margin_requirement
    from tools.cboe import read_cboe_quote_table
    from tools.chain_analysis import analyze_chain
    from tools.two_expiry import FarSmile, TwoExpiryModel, pnl_at_near_expiry
    from tools.density import SmileDensity
    from tools.svi import SVIParams

    chain = read_cboe_quote_table(shared_data / "cboe" / filename)
    analysis = analyze_chain(chain)
    for structure in structures:
        result = build_proposal(structure, "X", chain, analysis.chain_iv.vol, DecisionConfig(), "real",
                                surface=analysis.surface)
        assert result.ok, f"{structure}: {result.code} {result.reason}"
        p = result.proposal
        short, long_ = p.legs
        assert (short.side, long_.side) == ("sell", "buy") and short.expiry < long_.expiry
        assert short.right == long_.right == ("C" if structure.startswith("call") else "P")
        if structure.endswith("calendar"):
            assert short.strike == long_.strike
        else:  # the near short sits beyond the far long: nothing at risk between the strikes
            assert (short.strike > long_.strike) if short.right == "C" else (short.strike < long_.strike)
        assert p.net_debit > 0 and p.max_profit > 0 and p.max_loss > 0
        assert "numerically" in p.rationale and p.smile_far is not None
        assert set(p.vega_by_expiry) == {short.expiry.isoformat(), long_.expiry.isoformat()}
        assert sum(p.vega_by_expiry.values()) == pytest.approx(p.vega)
        assert p.vega_by_expiry[long_.expiry.isoformat()] > 0 > p.vega_by_expiry[short.expiry.isoformat()]
        near, far = p.smile, p.smile_far
        model = TwoExpiryModel(SmileDensity(SVIParams(near.a, near.b, near.rho, near.m, near.sigma), near.t, near.forward),
                               near.discount, FarSmile(SVIParams(far.a, far.b, far.rho, far.m, far.sigma), far.t,
                                                       far.forward, far.discount))
        for be in p.breakevens:
            assert float(pnl_at_near_expiry(p.legs, p.net_debit, [be], model)[0]) == pytest.approx(0.0, abs=1e-6)
        assert not uncovered_short_legs(p.legs)  # the gate sees a covered short
        # Margin across two expiries: the pair needs nothing at risk, so the debit paid.
        holdings = [(OptionContract("X", leg.expiry, leg.strike, leg.right), leg.sign) for leg in p.legs]
        margin = margin_requirement(holdings, p.net_debit * p.multiplier)
        assert margin.method == "reg_t" and margin.requirement == p.net_debit * p.multiplier
        # Kelly's distribution under the market's own law has the proposal's expected P&L.
        dist = view_distribution(p, None, None)
        assert dist.mean == pytest.approx(float(p.expected_pnl), abs=0.05)


def test_term_inversion_needs_two_vol_points():
    from agents.selector import term_inverted

    assert term_inverted(0.32, 0.30) and term_inverted(0.40, 0.25)
    assert not term_inverted(0.31, 0.30) and not term_inverted(0.25, 0.30)
    assert not term_inverted(None, 0.30) and not term_inverted(0.30, None)
