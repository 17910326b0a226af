"""Stage sized, risk-approved trades as orders awaiting a human decision.

The idempotency key is derived from the run, ticker, structure and legs — not from anything that
changes on a retry — so a resumed, retried or re-executed run stages each order exactly once.
"""
from __future__ import annotations

import hashlib
import json
from decimal import ROUND_FLOOR, Decimal

from langgraph.runtime import Runtime

from graph.deps import RunDeps
from domain.decision import TradeProposal
from domain.orders import Order
from graph.state import DecisionState
from graph.timing import timed
from storage.controls import RiskControls
from storage.orders import OrderRepository

CENT = Decimal("0.01")


def idempotency_key(run_id: str, proposal: TradeProposal) -> str:
    legs = sorted(
        (leg.expiry.isoformat(), str(leg.strike.normalize()), leg.right, leg.side, leg.ratio)
        for leg in proposal.legs
    )
    canonical = json.dumps([run_id, proposal.ticker, proposal.structure, legs], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def order_id_for(key: str) -> str:
    return f"ord_{key[:20]}"


def opening_limit_price(proposal: TradeProposal) -> Decimal:
    """The first limit: the mid rounded to the cent in our favour.

    `net_debit` is signed (positive pays, negative receives), so rounding toward minus infinity
    pays a little less on a debit and asks a little more on a credit, in both cases by under a cent.
    Later limits walk from here toward the natural price.
    """
    return proposal.net_debit.quantize(CENT, rounding=ROUND_FLOOR)


@timed("stage_orders")
async def stage_orders(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    """Stage every sized trade the post-trade check approved. Safe to re-execute: see module doc.

    In sandbox mode (replays, forks) nothing is written to the order book: the orders are returned
    in the state only, so a researcher's experiment can never become an order an approver sees.
    """
    deps, run = runtime.context, state["run"]
    if (await RiskControls(deps.db.pool).state()).halted:
        return {"staged": []}  # the kill switch went on during the run: nothing new is staged
    approved = {d.ticker: d for d in state.get("post_trade", []) if d.approved}
    repo = OrderRepository(deps.db.pool)
    staged: list[Order] = []
    for trade in state.get("sized", []):
        decision = approved.get(trade.proposal.ticker)
        if trade.contracts <= 0 or decision is None:
            continue
        key = idempotency_key(run.run_id, trade.proposal)
        order_id, limit = order_id_for(key), opening_limit_price(trade.proposal)
        terms = dict(order_id=order_id, idempotency_key=key, run_id=run.run_id, trade=trade, limit_price=limit,
                     sector=state["context"].sectors.get(trade.proposal.ticker, "unknown"),
                     requires_acknowledgement=decision.requires_acknowledgement)
        if run.mode == "live":
            order, _ = await repo.stage(**terms, created_at=deps.now())
        else:
            order = Order.staged(**terms, created_at=run.as_of)
        staged.append(order)
    return {"staged": staged}
