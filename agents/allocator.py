"""kelly_allocator: whole contracts for each proposal by fractional log-optimal Kelly on the
structure's payoff distribution, capped (risk/kelly.py).

The distribution is the structure's expiry P&L under the *analysts'* view of the world: the
market's law from the proposal's fitted smile (tools/density.py, skew included), tilted by a
drift from the verdict (VIEW_DRIFT x confidence, signed by direction) and with its dispersion
scaled by realized over implied vol (the 20-day realized vol from the vol analyst over the
smile's ATM vol). A fairly priced structure under the market's own law has no Kelly edge by
construction; the edge, if any, is exactly the gap between our view and the market's. A calendar
or diagonal's outcomes are its P&L at the near expiry with the far legs valued on the fitted
surface (tools/two_expiry.py), over the near smile's law under the view. Without a
fitted smile the law is lognormal at the realized vol (else at the legs' mean implied vol) with
the same drift; with neither there is no distribution and no trade.

The journal: `MarketContext.closed_outcomes` (realized outcomes of closed positions, filled by
load_context from the book), filtered in risk/kelly.py to the proposal's structure and regime and
to positions closed at or before the run's as-of time.
"""
from __future__ import annotations

import math

from langgraph.runtime import Runtime

from agents.analysts import evidence_number
from graph.deps import RunDeps
from domain.decision import SizedTrade, TradeProposal, Verdict
from graph.state import DecisionState
from graph.timing import timed
from risk.kelly import PayoffDistribution, size_trade
from tools.density import VIEW_SCALE_RANGE, SmileDensity, View, market_distribution, pnl_distribution, tilt
from tools.svi import SVIParams
from tools.two_expiry import FarSmile, TwoExpiryModel, pnl_at_near_expiry

# Annualized drift the verdict may tilt the distribution by at full confidence.
VIEW_DRIFT = 0.20


def _view_drift(verdict: Verdict | None) -> float:
    sign = {"bullish": 1.0, "bearish": -1.0}.get(verdict.price_view if verdict else "", 0.0)
    return sign * VIEW_DRIFT * (verdict.confidence if verdict else 0.0)


def _usable(vol: float | None) -> bool:
    return vol is not None and math.isfinite(vol) and vol > 0


def view_distribution(proposal: TradeProposal, verdict: Verdict | None,
                      realized_vol: float | None) -> PayoffDistribution | None:
    """Per-unit P&L outcomes (dollars) of `proposal` at expiry under the analysts' view (module doc)."""
    drift = _view_drift(verdict)
    t = max(proposal.dte, 1) / 365.0
    if proposal.smile is not None:
        s = proposal.smile
        density = SmileDensity(SVIParams(a=s.a, b=s.b, rho=s.rho, m=s.m, sigma=s.sigma), s.t, s.forward)
        lo, hi = VIEW_SCALE_RANGE
        scale = min(max(realized_vol / density.atm_vol, lo), hi) if _usable(realized_vol) else 1.0
        view, source = View(drift=drift, vol_scale=scale), "svi_density"
    else:
        leg_ivs = [leg.iv for leg in proposal.legs if _usable(leg.iv)]
        if _usable(realized_vol):
            vol, source = realized_vol, "lognormal_realized_vol"
        elif leg_ivs:
            vol, source = sum(leg_ivs) / len(leg_ivs), "lognormal_leg_iv"
        else:
            return None
        density = SmileDensity.flat(vol, t, proposal.underlying_price)
        view = View(drift=drift)
    if proposal.smile_far is not None:
        pnl, probabilities = _two_expiry_outcomes(proposal, density, view)
    else:
        dist = pnl_distribution(proposal.legs, proposal.net_debit, density, view)
        pnl, probabilities = dist.pnl, dist.probabilities
    return PayoffDistribution(pnl * proposal.multiplier, probabilities, source,
                              view_drift=view.drift, view_vol_scale=view.vol_scale)


def _two_expiry_outcomes(proposal: TradeProposal, near: SmileDensity, view: View):
    """A calendar's or diagonal's P&L at the near expiry (far legs on the fitted surface) over
    the near smile's law under the view."""
    far = proposal.smile_far
    model = TwoExpiryModel(near, proposal.smile.discount or 1.0,
                           FarSmile(SVIParams(a=far.a, b=far.b, rho=far.rho, m=far.m, sigma=far.sigma),
                                    far.t, far.forward, far.discount or 1.0))
    edges = [float(leg.strike) for leg in proposal.legs] + list(proposal.breakevens)
    dist = tilt(market_distribution(near, edges), view, near.t)
    return pnl_at_near_expiry(proposal.legs, proposal.net_debit, dist.prices, model), dist.probabilities


@timed("kelly_allocator")
async def kelly_allocator(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, ctx, run = runtime.context, state["context"], state["run"]
    verdicts = {v.ticker: v for v in state.get("verdicts", [])}
    exposure: dict[str, object] = {}
    for p in ctx.positions:
        exposure[p.ticker] = exposure.get(p.ticker, 0) + p.max_loss
    sized: list[SizedTrade] = []
    for proposal in state.get("proposals", []):
        realized = evidence_number(state.get("signals", []), proposal.ticker, "vol_surface", "realized_vol_20d")
        distribution = view_distribution(proposal, verdicts.get(proposal.ticker), realized)
        sized.append(size_trade(
            proposal, ctx.account, ctx.regime, deps.risk_matrix, deps.decision, distribution,
            as_of=run.as_of, outcomes=ctx.closed_outcomes,
            **({"ticker_exposure": exposure[proposal.ticker]} if proposal.ticker in exposure else {}),
        ))
    return {"sized": sized}
