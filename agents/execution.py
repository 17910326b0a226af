"""execute_approved: hand every approved order of the run to the order manager, then report what
became of each.

The manager usually got there first: a decision made through the CLI or the API transmits its
order at once, while the run waits for its other orders. Handing it again is harmless (the
manager only acts on APPROVED orders), and covers a run resumed after a crash.
"""
from __future__ import annotations

from langgraph.runtime import Runtime

from brokers.book import Book
from brokers.order_manager import OrderManager, is_closing
from brokers.quote_source import ProviderQuotes
from config.settings import defaults
from graph.deps import RunDeps
from graph.state import DecisionState
from graph.timing import timed
from memory.outcomes import remember_closed_position
from storage.executions import ExecutionRepository
from domain.orders import Order


async def order_manager(deps: RunDeps) -> OrderManager:
    """The order manager for a run's orders, with the run's market, broker, book, limits and memory."""
    await deps.broker.ensure_connected()  # the book is the broker account's: its id is known once connected
    book = Book(deps.db, account_id=deps.broker.ledger_account_id, broker=deps.broker.name, config=defaults().book)

    async def on_filled(order: Order, fills) -> None:
        # Whichever path filled the order, the situation it came from remembers the trade (an order
        # approved off-hours fills after its run has already reflected) and, when an exit closed
        # its position, the realized outcome (once the position is flat, delivered shares included).
        if deps.memory is None:
            return
        if not is_closing(order):
            await deps.memory.attach_trade(order.run_id, order.ticker, order.proposal)
        elif order.closes_position_id is not None:
            position = await book.position(order.closes_position_id)
            if position is not None and position.status != "open" and position.shares_open == 0:
                await remember_closed_position(deps.memory, position, position.closed_at)

    return OrderManager(pool=deps.db.pool, broker=deps.broker, quotes=ProviderQuotes(deps.provider, deps.now),
                        clock=deps.now, tolerance=deps.decision.stale_price_tolerance,
                        tolerance_floor=deps.decision.stale_price_floor, risk_matrix=deps.risk_matrix,
                        book=book, on_filled=on_filled)


@timed("execute_approved")
async def execute_approved(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run = runtime.context, state["run"]
    if run.mode != "live" or deps.broker is None:
        return {"executions": []}
    manager = await order_manager(deps)
    order_ids = [staged.order_id for staged in state.get("staged", [])]
    for order_id in order_ids:
        await manager.transmit(order_id)
    return {"executions": await ExecutionRepository(deps.db.pool).for_orders(order_ids)}
