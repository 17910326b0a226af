"""What the live-broker tests share: an approved order from a decision run, the order manager that
sends it through a broker (simulated quotes for the re-check), and an order's state history."""
from __future__ import annotations

from brokers.book import Book
from brokers.order_manager import OrderManager
from brokers.quote_source import ProviderQuotes
from risk.limits import load_risk_matrix
from service import approvals
from service.approvals import Decision
from storage.orders import OrderRepository
from tests.test_order_manager import stage_two
from tools.providers.simulated import SimulatedMarket


def manager_for(db, broker, clock) -> OrderManager:
    return OrderManager(pool=db.pool, broker=broker, quotes=ProviderQuotes(SimulatedMarket(7), clock), clock=clock,
                        tolerance=0.10, tolerance_floor=0.05, risk_matrix=load_risk_matrix(), walk_minutes=0.02,
                        book=Book(db, account_id=broker.ledger_account_id, broker=broker.name))


async def approved_order(db):
    ctx, clock, orders, _ = await stage_two(db)
    order = orders[0]
    await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=order.quantity > 10),
                           resume=False)
    return clock, await OrderRepository(db.pool).get(order.order_id)


async def history(db, order_id):
    return [(h["to_state"], h["reason"]) for h in await OrderRepository(db.pool).history(order_id)]
