"""The four analysts. Each turns one ticker's slice of the recorded snapshot into one `Signal`.

The numbers come from `tools/` instruments; what lives here is only the judgement: which numbers
make a view, how strong it is, and what could not be used (`data_quality`). A missing chain or a
short history lowers conviction and says so; it never raises.

Per ticker, the volatility and flow analysts share one chain analysis (one implied-vol solve),
computed once per distinct chain in this process (`agents.chain_analyses`).
"""
from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from langgraph.runtime import Runtime

from config.settings import DecisionConfig
from graph.deps import MarketCache, RunDeps
from domain.decision import Signal
from graph.state import AnalystTask
from graph.timing import timed
from agents.chain_analyses import analysis_of
from tools.chain_analysis import ChainAnalysis
from tools.flow import unusual_activity
from tools.providers.base import TickerData
from tools.social import social_summary
from tools.technical import technical_score
from tools.volstats import close_to_close_vol, iv_percentile, iv_rank, yang_zhang_vol

# A technical score needs at least this magnitude to lean a direction.
TECHNICAL_DEADBAND = 0.15


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


async def chain_analysis(market: MarketCache, run_id: str, data: TickerData) -> ChainAnalysis | None:
    """The ticker's chain analysis, computed in the compute pool once per distinct chain (None: no chain)."""
    if data.chain is None:
        return None
    return await market.derived(("chain_analysis", run_id, data.ticker), lambda: analysis_of(data.chain))


async def chain_iv(market: MarketCache, run_id: str, data: TickerData) -> np.ndarray:
    """Implied vol per chain row (NaN where undefined), shared with the analysts."""
    return (await chain_analysis(market, run_id, data)).chain_iv.vol


def surface_evidence(analysis: ChainAnalysis) -> tuple[dict, list[str]]:
    """The surface numbers an approver or researcher would ask for, and what was not usable."""
    surface = analysis.surface
    fitted = surface.fitted_slices
    term = surface.term_structure
    near_30d = min(fitted, key=lambda sl: abs(sl.t - 30 / 365), default=None)
    evidence = {
        "atm_iv_30d": _finite(term.atm_vol_30d),
        "atm_iv_90d": _finite(term.atm_vol_90d),
        "term_slope_per_year": _finite(term.slope_per_year),
        "term_shape": term.shape,
        "rr25_30d": _finite(near_30d.risk_reversal_25d) if near_30d else None,
        "bf25_30d": _finite(near_30d.butterfly_25d) if near_30d else None,
        "svi_fitted_expiries": len(fitted),
        "svi_worst_rmse_vol_pts": _finite(max((sl.rmse_vol_points for sl in fitted), default=float("nan"))),
        "butterfly_violations": sum(1 for sl in fitted if not sl.butterfly_ok),
        "calendar_violations": len(surface.calendar_issues),
        "mispriced_quotes": int(len(analysis.mispriced.rows)),
        "usable_quotes": analysis.n_usable_quotes,
        "rejected_quotes": int(sum(analysis.quote_rejections.values())),
    }
    quality = []
    if analysis.quote_rejections:
        quality.append("rejected quotes: " + ", ".join(f"{k}={v}" for k, v in sorted(analysis.quote_rejections.items())))
    if analysis.iv_failures:
        quality.append("no implied vol: " + ", ".join(f"{k}={v}" for k, v in sorted(analysis.iv_failures.items())))
    unfitted = len(surface.slices) - len(fitted)
    if unfitted:
        quality.append(f"{unfitted} expiries not fitted (fewer than 5 usable strikes or a failed fit)")
    if term.reason:
        quality.append(f"term structure: {term.reason}")
    return evidence, quality


def evidence_number(signals: list[Signal], ticker: str, source: str, key: str) -> float | None:
    """One number from an analyst's evidence for a ticker (None when absent or not a number)."""
    for s in signals:
        if s.ticker == ticker and s.source == source:
            value = s.evidence.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return None


# --------------------------------------------------------------------------- judgements


def vol_surface_signal(data: TickerData, analysis: ChainAnalysis | None, as_of: datetime,
                       config: DecisionConfig = DecisionConfig()) -> Signal:
    """Implied (30-day ATM) over 20-day realized vol: at or above `config.rich_iv_rv` premium is
    rich, at or below `config.cheap_iv_rv` cheap (both chosen on 2011-2019 SPY, see README)."""
    quality = list(data.data_quality)
    bars = data.bars
    rv20 = _finite(close_to_close_vol(bars.close, window=20)[-1]) if len(bars) > 21 else None
    rv_yz = _finite(yang_zhang_vol(bars.open, bars.high, bars.low, bars.close, window=20)[-1]) if len(bars) > 21 else None
    if rv20 is None:
        quality.append(f"only {len(bars)} bars: no 20-day realized vol")
    evidence: dict = {"realized_vol_20d": rv20, "realized_vol_yz_20d": rv_yz}
    if analysis is None:
        quality.append("no option chain: no implied vol")
        return Signal(source="vol_surface", ticker=data.ticker, direction="neutral", conviction=0.0,
                      edge_type="no_chain", horizon_days=30, as_of=as_of, evidence=evidence, data_quality=quality)
    surface, surface_quality = surface_evidence(analysis)
    quality.extend(surface_quality)
    evidence.update(surface)
    atm30 = surface["atm_iv_30d"]
    rank = pct = None
    if data.atm_iv_history is None or atm30 is None:
        quality.append("no implied-vol history: IV rank unknown")
    else:
        rank_stat = iv_rank(data.atm_iv_history, atm30)
        pct_stat = iv_percentile(data.atm_iv_history, atm30)
        # volstats speaks in 0..100; the signal evidence and the selector use fractions.
        rank = None if rank_stat.reason else rank_stat.value / 100.0
        pct = None if pct_stat.reason else pct_stat.value / 100.0
        if rank_stat.reason:
            quality.append(f"IV rank unknown: {rank_stat.reason}")
    evidence.update({"iv_rank": rank, "iv_percentile": pct})
    if atm30 is None or rv20 is None or rv20 <= 0:
        return Signal(source="vol_surface", ticker=data.ticker, direction="neutral", conviction=0.0,
                      edge_type="insufficient_data", horizon_days=30, as_of=as_of, evidence=evidence, data_quality=quality)
    ratio = atm30 / rv20
    evidence["iv_rv_ratio"] = ratio
    rank_term = 0.0 if rank is None else rank - 0.5  # in [-0.5, 0.5]
    if ratio >= config.rich_iv_rv:
        direction, edge = "rich", "iv_rich_vs_realized"
        conviction = _clip01((ratio - 1.0) / 0.6 * 0.7 + max(rank_term, 0.0) * 0.6)
    elif ratio <= config.cheap_iv_rv:
        direction, edge = "cheap", "iv_cheap_vs_realized"
        conviction = _clip01((1.0 - ratio) / 0.3 * 0.7 + max(-rank_term, 0.0) * 0.6)
    else:
        direction, edge, conviction = "neutral", "iv_fair", 0.0
    if surface["svi_fitted_expiries"] == 0:
        conviction *= 0.5  # no surface to confirm the quotes: halve the trust
        quality.append("no expiry could be fitted: conviction halved")
    return Signal(source="vol_surface", ticker=data.ticker, direction=direction, conviction=round(conviction, 6),
                  edge_type=edge, horizon_days=30, as_of=as_of, evidence=evidence, data_quality=quality)


def flow_signal(data: TickerData, analysis: ChainAnalysis | None, as_of: datetime,
                config: DecisionConfig = DecisionConfig()) -> Signal:
    """Dealer positioning and today's order flow.

    Gamma: spot above the zero-gamma level means dealers are long gamma and lean against moves (a
    supported tape: mildly bullish); below it they chase moves (fragile: bearish). With no
    crossing within ±20% the sign of total GEX says which side of it spot is on.
    Flow: the put/call ratio of today's volume against that of the standing open interest. The
    level of put/call differs by name (index hedgers buy puts all the time); what is informative
    is today's flow leaning away from the book — more puts than usual is bearish, more calls bullish.
    `config` is the chain judges' common call shape; no flow threshold is configurable yet.
    """
    quality = list(data.data_quality)
    if analysis is None or analysis.flow is None:
        quality.append("no option chain: no flow" if analysis is None else f"flow not computed: {analysis.flow_error}")
        return Signal(source="flow", ticker=data.ticker, direction="neutral", conviction=0.0,
                      edge_type="no_chain", horizon_days=5, as_of=as_of, data_quality=quality)
    if data.chain is not None and data.chain.meta.get("flow_information") is False:
        # A modelled chain's volume and open interest are a stated model, not anyone's positioning:
        # reading dealer gamma from them would vote the model's assumption every day.
        return Signal(source="flow", ticker=data.ticker, direction="neutral", conviction=0.0,
                      edge_type="no_flow_data", horizon_days=5, as_of=as_of,
                      data_quality=quality + ["modelled chain: no flow information"])
    flow = analysis.flow
    quality.extend(flow.notes)
    spot = data.spot
    zero = _finite(flow.zero_gamma_level)
    total_gex = _finite(flow.total_gamma_exposure)
    pcr_volume = _finite(flow.put_call_volume_ratio)
    pcr_oi = _finite(flow.put_call_open_interest_ratio)
    chain = data.chain
    unusual = unusual_activity(chain.volume, chain.open_interest)
    evidence = {"total_gex": total_gex, "zero_gamma": zero, "spot": spot, "put_call_volume": pcr_volume,
                "put_call_oi": pcr_oi, "unusual_strikes": int(len(unusual.rows))}
    if zero is not None:
        distance = (spot - zero) / spot
        evidence["spot_vs_zero_gamma"] = distance
        gamma_term = float(np.clip(distance / 0.03, -1.0, 1.0))
    elif total_gex is not None and total_gex != 0:
        gamma_term = 0.5 if total_gex > 0 else -0.5
        quality.append(f"no zero-gamma crossing within ±20% ({flow.zero_gamma_reason}); GEX sign used")
    else:
        gamma_term = 0.0
        quality.append(f"zero-gamma level unknown: {flow.zero_gamma_reason}")
    flow_term = 0.0
    if pcr_volume and pcr_oi:
        lean = math.log(pcr_volume / pcr_oi)  # > 0: today's flow more put-heavy than the book
        evidence["flow_put_lean"] = lean
        flow_term = float(np.clip(-lean / math.log(1.5), -1.0, 1.0))
    else:
        quality.append("put/call ratios undefined (no call volume or open interest)")
    score = 0.5 * gamma_term + 0.5 * flow_term
    direction = "bullish" if score > 0.1 else "bearish" if score < -0.1 else "neutral"
    edge = "dealer_short_gamma" if gamma_term < 0 else "dealer_long_gamma" if gamma_term > 0 else "order_flow"
    return Signal(source="flow", ticker=data.ticker, direction=direction,
                  conviction=round(_clip01(abs(score)) if direction != "neutral" else 0.0, 6),
                  edge_type=edge, horizon_days=5, as_of=as_of, evidence=evidence, data_quality=quality)


def technical_signal(data: TickerData, as_of: datetime) -> Signal:
    b = data.bars
    ts = technical_score(b.open, b.high, b.low, b.close, b.volume)
    direction = "bullish" if ts.score > TECHNICAL_DEADBAND else "bearish" if ts.score < -TECHNICAL_DEADBAND else "neutral"
    evidence = {"score": ts.score, **{f"vote_{k}": v for k, v in ts.components.items()},
                **{k: _finite(v) for k, v in ts.indicators.items()}}
    return Signal(source="technical", ticker=data.ticker, direction=direction,
                  conviction=round(abs(ts.score) if direction != "neutral" else 0.0, 6),
                  edge_type="trend" if abs(ts.components.get("ma_trend", 0.0)) >= 0.5 else "momentum",
                  horizon_days=10, as_of=as_of, evidence=evidence,
                  data_quality=list(data.data_quality) + list(ts.data_quality))


def social_signal(data: TickerData, as_of: datetime) -> Signal:
    """Sentiment counts only when people are talking more than usual: a mention spike with a clear
    tone is a signal; the same tone at a normal volume is noise."""
    quality = list(data.data_quality)
    if data.social is None:
        quality.append("no social feed")
        return Signal(source="social", ticker=data.ticker, direction="neutral", conviction=0.0,
                      edge_type="no_feed", horizon_days=3, as_of=as_of, data_quality=quality)
    summary = social_summary(data.social, as_of)
    quality.extend(summary.pop("data_quality", []))
    context_counts = summary.pop("context_counts", {})
    sentiment = summary.get("mean_sentiment")
    z = summary.get("mention_zscore")
    attention = 0.3 if z is None else _clip01(0.3 + max(z, 0.0) / 4.0)
    score = 0.0 if sentiment is None else sentiment * attention
    direction = "bullish" if score > 0.1 else "bearish" if score < -0.1 else "neutral"
    edge = "mention_spike" if z is not None and z >= 2 else "sentiment"
    evidence = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    evidence.update({f"context_{k}": v for k, v in sorted(context_counts.items())})
    conviction = _clip01(abs(score) * 1.5) if direction != "neutral" else 0.0
    if data.social.notes:
        conviction *= 0.5  # a source failed: what is left is a partial picture
        quality.append("a social source failed: conviction halved")
    return Signal(source="social", ticker=data.ticker, direction=direction,
                  conviction=round(conviction, 6),
                  edge_type=edge, horizon_days=3, as_of=as_of, evidence=evidence, data_quality=quality)


# --------------------------------------------------------------------------- graph nodes


def _missing(task: AnalystTask) -> Signal:
    why = task["data_quality"]
    return Signal(source=task["analyst"], ticker=task["ticker"], direction="neutral", conviction=0.0,
                  edge_type="no_data", horizon_days=0, as_of=task["run"].as_of, data_quality=list(why))


def _analyst(name: str, judge, needs_chain: bool):
    @timed(name)
    async def node(task: AnalystTask, runtime: Runtime[RunDeps]) -> dict:
        deps, run = runtime.context, task["run"]
        snapshot = await deps.market.snapshot(run.run_id)
        data = snapshot.tickers.get(task["ticker"])
        if data is None:
            return {"signals": [_missing(task)]}
        if needs_chain:
            analysis = await chain_analysis(deps.market, run.run_id, data)
            signal = judge(data, analysis, run.as_of, deps.decision)
        else:
            signal = judge(data, run.as_of)
        return {"signals": [signal]}

    node.__name__ = f"{name}_analyst"
    return node


ANALYSTS = {
    "vol_surface": _analyst("vol_surface", vol_surface_signal, needs_chain=True),
    "flow": _analyst("flow", flow_signal, needs_chain=True),
    "technical": _analyst("technical", technical_signal, needs_chain=False),
    "social": _analyst("social", social_signal, needs_chain=False),
}
