"""kelly_allocator: whole contracts for each proposal by fractional Kelly, capped (risk/kelly.py).

Win rate, until a journal exists: the proposal's probability of profit under the *analysts'*
view of the world rather than the market's — realized volatility instead of implied, and a drift
tilted by the verdict (VIEW_DRIFT × confidence, signed by direction). The risk-neutral PoP of a
fairly priced option trade gives no Kelly edge by construction; the edge, if any, is exactly the
gap between our view and the market's. Without a realized vol the configured prior is used.
"""
from __future__ import annotations

import math

from langgraph.runtime import Runtime

from agents.analysts import evidence_number
from graph.deps import RunDeps
from graph.schema import SizedTrade, TradeProposal, Verdict
from graph.state import DecisionState
from graph.timing import timed
from risk.kelly import payoff_ratio_for, size_trade
from tools.structures import probability_of_profit

# Annualized drift the verdict may tilt the distribution by at full confidence.
VIEW_DRIFT = 0.20


def view_win_rate(proposal: TradeProposal, verdict: Verdict | None, realized_vol: float | None,
                  fallback: float) -> float:
    if realized_vol is None or not math.isfinite(realized_vol) or realized_vol <= 0:
        return fallback
    sign = {"bullish": 1.0, "bearish": -1.0}.get(verdict.price_view if verdict else "", 0.0)
    drift = sign * VIEW_DRIFT * (verdict.confidence if verdict else 0.0)
    pop = probability_of_profit(proposal.legs, proposal.net_debit, proposal.underlying_price,
                                max(proposal.dte, 1) / 365.0, realized_vol, rate=drift)
    return float(pop) if math.isfinite(pop) else fallback


@timed("kelly_allocator")
async def kelly_allocator(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, ctx = runtime.context, state["context"]
    verdicts = {v.ticker: v for v in state.get("verdicts", [])}
    exposure: dict[str, object] = {}
    for p in ctx.positions:
        exposure[p.ticker] = exposure.get(p.ticker, 0) + p.max_loss
    sized: list[SizedTrade] = []
    for proposal in state.get("proposals", []):
        win_rate = view_win_rate(proposal, verdicts.get(proposal.ticker),
                                 evidence_number(state.get("signals", []), proposal.ticker, "vol_surface",
                                                 "realized_vol_20d"),
                                 deps.decision.kelly_prior_win_rate)
        sized.append(size_trade(
            proposal, ctx.account, ctx.regime, deps.risk_matrix, deps.decision,
            win_rate=min(max(win_rate, 0.0), 1.0), payoff_ratio=payoff_ratio_for(proposal),
            **({"ticker_exposure": exposure[proposal.ticker]} if proposal.ticker in exposure else {}),
        ))
    return {"sized": sized}
