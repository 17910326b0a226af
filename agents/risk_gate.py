"""The risk gate before structuring (pre_trade) and the portfolio check after sizing (post_trade).

Both call the one risk service in `risk/`; every decision, approved or not, is stored with its
reasons. A verdict that is inconclusive never reaches the gate: there is nothing to trade.
"""
from __future__ import annotations

import numpy as np
from langgraph.runtime import Runtime

from graph.deps import RunDeps
from graph.state import DecisionState
from graph.timing import timed
from risk.gate import post_trade, pre_trade
from storage.decisions import DecisionRepository
from tools.providers.base import MarketSnapshot


# Correlation between a new trade's underlying and the book is measured over this many sessions.
CORRELATION_DAYS = 60


def daily_returns(snapshot: MarketSnapshot, days: int) -> dict[str, np.ndarray]:
    """Log returns of each ticker over its last `days` sessions (all snapshot series end together)."""
    out = {}
    for ticker, data in snapshot.tickers.items():
        close = data.bars.close[-(days + 1):]
        if len(close) == days + 1 and np.all(close > 0):
            out[ticker] = np.diff(np.log(close))
    return out


def tradeable(verdict) -> bool:
    return verdict.price_view in ("bullish", "bearish") or (verdict.price_view == "neutral" and verdict.vol_view == "rich")


@timed("risk_gate")
async def risk_gate(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run, ctx = runtime.context, state["run"], state["context"]
    decisions = [
        pre_trade(v.ticker, ctx.sectors.get(v.ticker, "unknown"), ctx.account, ctx.positions, ctx.regime,
                  deps.risk_matrix, run.as_of)
        for v in state.get("verdicts", []) if tradeable(v)
    ]
    await DecisionRepository(deps.db.pool).save_risk_decisions(run.run_id, decisions)
    return {"pre_trade": decisions}


@timed("post_trade_check")
async def post_trade_check(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run, ctx = runtime.context, state["run"], state["context"]
    sized = [t for t in state.get("sized", []) if t.contracts > 0]
    snapshot = await deps.market.snapshot(run.run_id)
    betas = {t: d.beta for t, d in snapshot.tickers.items()}
    decisions = post_trade(sized, ctx.account, ctx.positions, ctx.regime, deps.risk_matrix, ctx.sectors,
                           betas=betas, returns=daily_returns(snapshot, CORRELATION_DAYS))
    await DecisionRepository(deps.db.pool).save_risk_decisions(run.run_id, decisions)
    return {"post_trade": decisions}
