"""agents/allocator.py: the payoff distribution under the analysts' view, and Kelly sizing on it."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agents.allocator import VIEW_DRIFT, view_distribution
from agents.selector import build_proposal
from config.settings import DecisionConfig
from domain.decision import Verdict
from risk.kelly import size_trade
from risk.limits import load_risk_matrix
from tests.risk_factories import account, proposal, regime
from tools.chain_analysis import analyze_chain
from tools.cboe import read_cboe_quote_table

AS_OF = datetime(2022, 2, 4, 20, 0, tzinfo=timezone.utc)


def verdict(view: str, confidence: float) -> Verdict:
    return Verdict(ticker="SPX", price_view=view, vol_view="neutral", confidence=confidence, rationale="test",
                   debater="deterministic", rounds=1, transcript=[])


@pytest.fixture(scope="module")
def spx_call_spread(shared_data):
    chain = read_cboe_quote_table(shared_data / "cboe" / "spx_quotedata_2022-02-04.csv")
    analysis = analyze_chain(chain)
    result = build_proposal("bull_call_spread", "SPX", chain, analysis.chain_iv.vol, DecisionConfig(),
                            rationale="test", surface=analysis.surface)
    assert result.ok, result.reason
    return result.proposal


def test_the_market_law_alone_gives_no_edge_and_a_bullish_view_gives_one(spx_call_spread):
    p = spx_call_spread
    atm = (p.smile.a + p.smile.b * (p.smile.rho * -p.smile.m + (p.smile.m ** 2 + p.smile.sigma ** 2) ** 0.5))
    atm_vol = (atm / p.smile.t) ** 0.5
    market = view_distribution(p, None, None)
    assert market.source == "svi_density" and market.view_drift == 0 and market.view_vol_scale == 1.0
    # Bought at mid above the smile's fair value: the market law says the P&L expectation is negative.
    assert market.mean == pytest.approx(float(p.expected_pnl), abs=0.02)
    assert market.mean < 0
    matrix, config = load_risk_matrix(), DecisionConfig()
    flat = size_trade(p, account(), regime("neutral"), matrix, config, market, as_of=AS_OF)
    assert flat.contracts == 0 and flat.caps_applied == ["no_edge"]

    bullish = view_distribution(p, verdict("bullish", 1.0), atm_vol)
    assert bullish.view_drift == pytest.approx(VIEW_DRIFT) and bullish.view_vol_scale == pytest.approx(1.0)
    assert bullish.mean > 0 and bullish.win_rate > market.win_rate
    sized = size_trade(p, account(nlv="1000000"), regime("neutral"), matrix, config, bullish, as_of=AS_OF)
    assert sized.contracts > 0 and sized.inputs.distribution == "svi_density"
    assert sized.inputs.model_expected_pnl > 0 and sized.inputs.expected_log_growth > 0
    bearish = view_distribution(p, verdict("bearish", 1.0), atm_vol)
    assert bearish.mean < market.mean


def test_realized_vol_scales_the_dispersion(spx_call_spread):
    p = spx_call_spread
    calm = view_distribution(p, None, 0.05)
    assert 0.25 <= calm.view_vol_scale < 1.0
    wild = view_distribution(p, None, 5.0)
    assert wild.view_vol_scale == 4.0  # clipped


def test_without_a_smile_the_law_is_lognormal_at_realized_then_leg_vol_else_none():
    prop = proposal()  # no smile, legs without IVs
    assert view_distribution(prop, None, 0.2).source == "lognormal_realized_vol"
    with_iv = prop.model_copy(update={"legs": [leg.model_copy(update={"iv": 0.25}) for leg in prop.legs]})
    assert view_distribution(with_iv, None, None).source == "lognormal_leg_iv"
    assert view_distribution(prop, None, None) is None
    dist = view_distribution(prop, None, 0.2)
    assert dist.pnl.max() == pytest.approx(150.0) and dist.pnl.min() == pytest.approx(-350.0)
