"""agents/selector.py with the chain's fitted surface: skew-aware probability of profit on real chains."""
from __future__ import annotations

import pytest

from agents.selector import build_proposal
from config.settings import DecisionConfig
from tools.chain_analysis import analyze_chain
from tools.cboe import read_cboe_quote_table


@pytest.fixture(scope="module")
def spx(shared_data):
    chain = read_cboe_quote_table(shared_data / "cboe" / "spx_quotedata_2022-02-04.csv")
    return chain, analyze_chain(chain)


def test_sixteen_delta_put_spread_on_real_spx_is_less_likely_to_profit_than_lognormal_atm_says(spx):
    chain, analysis = spx
    config = DecisionConfig(short_delta=0.16, wing_width_steps=4)
    result = build_proposal("bull_put_spread", "SPX", chain, analysis.chain_iv.vol, config,
                            rationale="real chain", surface=analysis.surface)
    assert result.ok, result.reason
    p = result.proposal
    assert p.pop_model == "svi_density" and p.smile is not None
    # Steep SPX put skew: the fitted smile's law puts more weight below the short strike than
    # one lognormal at the ATM vol does; both figures are on the proposal for the approver.
    assert p.probability_of_profit < p.probability_of_profit_lognormal - 0.01
    assert 0.5 < p.probability_of_profit < 1.0
    # Expected P&L at mid under the smile is small against the credit (mids sit near the fit).
    assert p.expected_pnl is not None and abs(p.expected_pnl) < abs(p.net_debit) * p.multiplier


def test_without_a_surface_the_lognormal_atm_figure_is_the_probability(spx):
    chain, analysis = spx
    result = build_proposal("bull_put_spread", "SPX", chain, analysis.chain_iv.vol, DecisionConfig(short_delta=0.16),
                            rationale="real chain")
    p = result.proposal
    assert p.pop_model == "lognormal_atm" and p.smile is None and p.expected_pnl is None
    assert p.probability_of_profit == p.probability_of_profit_lognormal


def test_legs_against_the_fitted_surface_on_real_spx(spx):
    import math
    from decimal import Decimal

    import numpy as np

    from tools.pricing import bsm_greeks

    chain, analysis = spx
    # The condor with the verticals' settings (its own default reaches an untraded SPX call: test_selector.py).
    config = DecisionConfig(condor_short_delta=0.25, condor_wing_width_expected_move=0.15,
                            condor_target_dte=35).for_structure("iron_condor")
    p = build_proposal("iron_condor", "SPX", chain, analysis.chain_iv.vol, config,
                       rationale="real chain", surface=analysis.surface).proposal
    sl = analysis.surface.slice_for(p.legs[0].expiry)
    for leg in p.legs:
        k = float(leg.strike)
        fitted_vol = float(sl.implied_vol(k))
        assert leg.iv == pytest.approx(fitted_vol)  # strikes and Greeks from the fit, not raw quotes
        assert leg.bid <= leg.limit <= leg.ask  # the fitted value clipped to the quote
        assert leg.limit == min(max(leg.fit_value, leg.bid), leg.ask)
        assert leg.edge_vs_fit == leg.sign * (leg.fit_value - leg.limit)
    assert p.net_debit == sum(leg.sign * leg.ratio * leg.limit for leg in p.legs)
    # Short strikes by delta on the fitted smile.
    t = sl.t
    for leg in (leg for leg in p.legs if leg.side == "sell"):
        delta = float(bsm_greeks(chain.spot, float(leg.strike), t, chain.rate, chain.dividend_yield, leg.iv,
                                 leg.right == "C").delta)
        assert abs(abs(delta) - config.short_delta) <= 0.10
    # Wings about `wing_width_expected_move` of the expected move beyond the short strikes (nearest listed strike).
    expected_move = sl.forward * sl.atm_vol * math.sqrt(sl.t)
    target = config.wing_width_expected_move * expected_move
    for right in ("P", "C"):
        strikes = sorted(float(leg.strike) for leg in p.legs if leg.right == right)
        listed = np.unique(chain.strike[(chain.expiry == np.datetime64(p.legs[0].expiry)) & (chain.is_call == (right == "C"))])
        short = strikes[1] if right == "P" else strikes[0]
        beyond = listed[listed < short] if right == "P" else listed[listed > short]
        best = np.min(np.abs(np.abs(beyond - short) - target))
        assert abs((strikes[1] - strikes[0]) - target) == pytest.approx(best)
    # The expected P&L at the limits under the fitted law is the summed edge against the fit, up to
    # cents rounding of each leg's value and discounting (the expectation is at expiry).
    assert Decimal(p.expected_pnl) == pytest.approx(
        sum(leg.edge_vs_fit * leg.ratio for leg in p.legs) * p.multiplier, abs=Decimal("5"))
