"""Aggregate the analysts' signals per ticker and keep the tickers worth debating.

Price view: each price signal (flow, technical, social) votes its direction weighted by its
conviction; the volatility surface analyst votes rich/cheap on volatility. A ticker becomes a
candidate when its aggregate conviction reaches the threshold and enough analysts agree, or when
the volatility view alone is strong (a neutral-price, rich-vol name is an iron-condor candidate).
Debate cost then scales with opportunities, not with watchlist size.
"""
from __future__ import annotations

from collections import defaultdict

from langgraph.runtime import Runtime

from config.settings import DecisionConfig
from graph.deps import RunDeps
from domain.decision import Candidate, Signal
from graph.state import DecisionState
from graph.timing import timed
from storage.decisions import DecisionRepository

PRICE_SOURCES = ("flow", "technical", "social")
# How much each price analyst's vote counts; the technical trend is the steadiest of the three.
PRICE_WEIGHTS = {"technical": 0.4, "flow": 0.35, "social": 0.25}
_SIGN = {"bullish": 1.0, "bearish": -1.0, "rich": 1.0, "cheap": -1.0, "neutral": 0.0}


def candidates_from_signals(signals: list[Signal], config: DecisionConfig) -> list[Candidate]:
    by_ticker: dict[str, list[Signal]] = defaultdict(list)
    for signal in signals:
        by_ticker[signal.ticker].append(signal)
    chosen = []
    for ticker in sorted(by_ticker):
        candidate = _candidate(ticker, by_ticker[ticker], config)
        if candidate is not None:
            chosen.append(candidate)
    return chosen


def _candidate(ticker: str, signals: list[Signal], config: DecisionConfig) -> Candidate | None:
    price = [s for s in signals if s.source in PRICE_SOURCES]
    vol = [s for s in signals if s.source == "vol_surface"]
    weight = sum(PRICE_WEIGHTS[s.source] for s in price) or 1.0
    score = sum(PRICE_WEIGHTS[s.source] * _SIGN[s.direction] * s.conviction for s in price) / weight
    vol_score = sum(_SIGN[s.direction] * s.conviction for s in vol) / max(len(vol), 1)
    direction = 1.0 if score > 0 else -1.0
    agreeing = [s.source for s in price if _SIGN[s.direction] == direction and s.conviction > 0]
    reasons = []
    price_view = "neutral"
    if abs(score) >= config.conviction_threshold and len(agreeing) >= config.min_agreeing_sources:
        price_view = "bullish" if score > 0 else "bearish"
        reasons.append(f"{price_view} score {score:+.2f} from {', '.join(agreeing)}")
    vol_view = "neutral"
    if abs(vol_score) >= config.conviction_threshold:
        vol_view = "rich" if vol_score > 0 else "cheap"
        reasons.append(f"volatility {vol_view} ({vol_score:+.2f})")
    if price_view == "neutral" and vol_view != "rich":
        return None  # nothing to trade: no directional edge and no premium worth selling
    conviction = max(abs(score) if price_view != "neutral" else 0.0, abs(vol_score) if vol_view != "neutral" else 0.0)
    sources = sorted({*agreeing, *(s.source for s in vol if vol_view != "neutral")})
    return Candidate(
        ticker=ticker, price_view=price_view, vol_view=vol_view, conviction=min(conviction, 1.0),
        score=max(-1.0, min(1.0, score)), vol_score=max(-1.0, min(1.0, vol_score)),
        sources=sources, reasons=reasons,
    )


@timed("aggregate_signals")
async def aggregate_signals(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    """Persist every analyst's signal for the run (idempotent upsert)."""
    await DecisionRepository(runtime.context.db.pool).save_signals(state["run"].run_id, state.get("signals", []))
    return {}


@timed("select_candidates")
async def select_candidates(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    return {"candidates": candidates_from_signals(state.get("signals", []), runtime.context.decision)}
