"""Analyst judgements on real instruments: bad quotes are rejected with reasons, never a crash;
missing data lowers conviction and says why; aggregation and the deterministic debate."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

from agents.aggregate import candidates_from_signals
from agents.analysts import flow_signal, social_signal, technical_signal, vol_surface_signal
from agents.debate import deterministic_verdict
from config.settings import DecisionConfig
from domain.decision import Regime, Signal
from tools.chain import NEW_YORK
from tools.chain_analysis import analyze_chain
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)


@pytest.fixture(scope="module")
def spy():
    return SimulatedMarket(7).snapshot(["SPY"], AS_OF).tickers["SPY"]


def corrupt(chain):
    """NaN, zero, negative and crossed quotes on a tenth of the rows each."""
    bid, ask = chain.bid.copy(), chain.ask.copy()
    n = len(bid)
    bid[0:n:10] = np.nan
    ask[1:n:10] = 0.0
    bid[2:n:10], ask[2:n:10] = ask[2:n:10] + 1.0, ask[2:n:10]  # crossed: bid above ask
    bid[3:n:10] = -1.0
    return replace(chain, bid=bid, ask=ask)


def test_bad_quotes_are_rejected_with_reasons_not_a_crash(spy):
    bad = replace(spy, chain=corrupt(spy.chain))
    analysis = analyze_chain(bad.chain)
    assert {"MISSING_BID", "ZERO_ASK", "CROSSED", "NEGATIVE_PRICE"} <= set(analysis.quote_rejections)
    vol = vol_surface_signal(bad, analysis, AS_OF)
    flow = flow_signal(bad, analysis, AS_OF)
    assert any("rejected quotes" in q and "CROSSED" in q for q in vol.data_quality)
    assert vol.evidence["rejected_quotes"] >= 4 * (len(bad.chain) // 10)
    assert vol.evidence["svi_fitted_expiries"] > 0  # the good 60% still make a surface
    assert flow.source == "flow" and 0 <= flow.conviction <= 1


def test_missing_chain_and_short_history_lower_conviction_and_say_why(spy):
    no_chain = replace(spy, chain=None)
    vol = vol_surface_signal(no_chain, None, AS_OF)
    assert vol.conviction == 0 and "no option chain: no implied vol" in vol.data_quality
    assert flow_signal(no_chain, None, AS_OF).data_quality[-1] == "no option chain: no flow"
    short = replace(spy, bars=spy.bars.until(spy.bars.dates[10]))
    tech = technical_signal(short, AS_OF)
    assert tech.conviction == 0 or tech.data_quality
    assert social_signal(replace(spy, social=None), AS_OF).data_quality[-1] == "no social feed"


def _signal(source, direction, conviction, ticker="SPY"):
    return Signal(source=source, ticker=ticker, direction=direction, conviction=conviction, edge_type="t",
                  horizon_days=5, as_of=AS_OF)


def test_candidates_need_conviction_and_agreement():
    config = DecisionConfig(conviction_threshold=0.35, min_agreeing_sources=2)
    agree = [_signal("technical", "bullish", 0.8), _signal("flow", "bullish", 0.6), _signal("social", "neutral", 0)]
    alone = [_signal("technical", "bullish", 0.9, "QQQ"), _signal("flow", "bearish", 0.2, "QQQ")]
    rich = [_signal("vol_surface", "rich", 0.7, "IWM"), _signal("technical", "neutral", 0, "IWM")]
    got = {c.ticker: c for c in candidates_from_signals(agree + alone + rich, config)}
    assert set(got) == {"SPY", "IWM"}
    assert got["SPY"].price_view == "bullish" and got["SPY"].sources == ["flow", "technical"]
    assert got["IWM"].price_view == "neutral" and got["IWM"].vol_view == "rich"


def test_deterministic_debate_weighs_the_evidence_and_never_contradicts_the_aggregate():
    regime = Regime(name="neutral", vix=18, vix3m=20, term_ratio=0.9)
    config = DecisionConfig()
    signals = [_signal("technical", "bullish", 0.8), _signal("flow", "bullish", 0.6), _signal("social", "bearish", 0.2)]
    [candidate] = candidates_from_signals(signals, config)
    verdict = deterministic_verdict(candidate, signals, regime, rounds=2)
    assert verdict.price_view == "bullish" and verdict.debater == "deterministic"
    assert [t.role for t in verdict.transcript] == ["bull", "bear", "bull", "bear", "judge"]
    assert "no LLM" in verdict.rationale
    balanced = [_signal("technical", "bullish", 0.5), _signal("flow", "bearish", 0.5)]
    assert deterministic_verdict(candidate, balanced, regime, 1).price_view == "inconclusive"


def test_rich_and_cheap_thresholds_come_from_the_decision_config(spy):
    """The IV/RV thresholds are settings (chosen on 2011-2019 SPY, README): the same ratio is rich
    under a threshold below it, fair between the two, cheap under a cheap threshold above it."""
    analysis = analyze_chain(spy.chain)
    ratio = vol_surface_signal(spy, analysis, AS_OF).evidence["iv_rv_ratio"]
    below, above = ratio * 0.95, ratio * 1.05
    rich = vol_surface_signal(spy, analysis, AS_OF, DecisionConfig(rich_iv_rv=below, cheap_iv_rv=below / 2))
    fair = vol_surface_signal(spy, analysis, AS_OF, DecisionConfig(rich_iv_rv=above, cheap_iv_rv=below))
    cheap = vol_surface_signal(spy, analysis, AS_OF, DecisionConfig(rich_iv_rv=above * 2, cheap_iv_rv=above))
    assert (rich.direction, fair.direction, cheap.direction) == ("rich", "neutral", "cheap")
    assert fair.conviction == 0 and fair.edge_type == "iv_fair"
    with pytest.raises(ValueError, match="must be below rich_iv_rv"):
        DecisionConfig(rich_iv_rv=1.0, cheap_iv_rv=1.0)
