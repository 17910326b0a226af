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
