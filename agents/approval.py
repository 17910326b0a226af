"""await_approval: the run waits (LangGraph `interrupt`) until every staged order is decided.

Decisions are made outside the graph, by the approval service, which records each one in
Postgres (one decision per order, row-locked) and then resumes this thread. The node re-runs
from the top on every resume, so everything before `interrupt()` is safe to repeat: it expires
overdue orders (idempotent state moves) and reads the decisions from the database — the database,
not the resume payload, is the record of what was decided.
"""
from __future__ import annotations

from langgraph.runtime import Runtime
from langgraph.types import interrupt

from domain.order_state import OrderState
from graph.deps import RunDeps
from graph.state import DecisionState
from graph.timing import timed
from storage.approvals import ApprovalEntry, ApprovalRepository
from storage.orders import OrderRepository
from tools.market_hours import market_minutes_between


async def expire_overdue(repo: OrderRepository, order_ids: list[str], now, ttl_minutes: float) -> list[str]:
    """Move STAGED orders older than `ttl_minutes` of market time to EXPIRED; returns their ids."""
    expired = []
    approvals = ApprovalRepository(repo.pool)

    def expiry(row) -> ApprovalEntry | None:  # under the order's row lock
        if row["state"] != OrderState.STAGED:
            return None  # decided while we looked
        return ApprovalEntry(action="expire", approver="system", original_quantity=row["quantity"],
                             reason="approval window elapsed", to_state=OrderState.EXPIRED,
                             transition_reason=f"not decided within {ttl_minutes:g} market minutes")

    for order_id in order_ids:
        order = await repo.get(order_id)
        if order is not None and order.state == OrderState.STAGED and \
                market_minutes_between(order.created_at, now) >= ttl_minutes:
            _, entry = await approvals.decide(order_id, expiry)
            if entry is not None:
                expired.append(order_id)
    return expired


async def pending_orders(repo: OrderRepository, order_ids: list[str]) -> list[str]:
    states = await repo.states(order_ids)
    return [oid for oid in order_ids if states.get(oid) == OrderState.STAGED]


@timed("await_approval")
async def await_approval(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run = runtime.context, state["run"]
    staged = [o.order_id for o in state.get("staged", [])]
    if run.mode != "live" or not staged:
        return {"awaiting": []}
    repo = OrderRepository(deps.db.pool)
    await expire_overdue(repo, staged, deps.now(), deps.decision.approval_ttl_market_minutes)
    waiting = await pending_orders(repo, staged)
    if waiting:
        # Pauses the run here; `Command(resume=...)` from the approval service continues it.
        interrupt({"run_id": run.run_id, "awaiting_approval": waiting})
        waiting = await pending_orders(repo, staged)
    return {"awaiting": waiting}


def after_approval(state: DecisionState) -> str:
    """Wait again while orders are undecided; otherwise go on to execution."""
    return "await_approval" if state.get("awaiting") else "execute_approved"
