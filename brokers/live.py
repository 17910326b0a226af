"""What every real-broker adapter does on our side of the wire, in one place.

A real broker holds the truth about an order; we keep a mirror in the broker ledger
(`storage.broker_ledger`, migration 0004): one `broker_orders` row per transmitted order (its UNIQUE
order id is what makes `place` idempotent), one `broker_fills` row per broker execution (the fill
id is the broker's execution id, so a fill reported twice — live and again after a reconnect —
changes nothing), and the order's state moved only through the state machine
(`OrderRepository.transition`) in the same transaction as the mirror row it follows from.

Positions and account values are NOT taken from the mirror: the adapters read them from the broker.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from brokers.base import BrokerError, FillCallback, OrderNotApproved, UnknownBrokerOrder, check_matches_approval
from domain.orders import BrokerOrderStatus, Fill, Order
from domain.order_state import TERMINAL, OrderState, can_transition
from storage.broker_ledger import AVG_PLACES, BrokerLedger
from storage.controls import RiskControls
from storage.orders import OrderRepository, UnknownOrder

log = logging.getLogger(__name__)

WORKING = frozenset({OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED, OrderState.UNKNOWN})


class TradingHalted(BrokerError):
    """The kill switch is on: nothing is transmitted, the order stays APPROVED."""


class BrokerDisconnected(BrokerError):
    """The broker's API cannot be reached now; nothing was sent."""


class BrokerRejected(BrokerError):
    """The broker refused the order (its reason is in the message and in the order's history)."""


def refuse_shares(order: Order, broker: str) -> None:
    """The live adapters transmit option combos only: an order for the underlying's shares (the
    book's exit of exercised or assigned shares) is refused with one line saying so."""
    if order.is_shares:
        raise BrokerRejected(f"order {order.order_id}: {broker} does not trade shares from hedgegraph; "
                             f"close the {order.ticker} shares in the {broker} account itself")



class LiveOrderBook:
    """The mirror of one broker account's orders and fills, and the state moves they cause."""

    def __init__(self, pool: Any, account_id: str, broker: str, actor: str):
        self.pool = pool
        self.account_id = account_id
        self.broker = broker
        self.actor = actor
        self.orders = OrderRepository(pool)
        self.ledger = BrokerLedger(pool, account_id, broker)
        self.callbacks: list[FillCallback] = []

    async def ensure_account(self, at: datetime) -> None:
        # The real cash lives at the broker: the mirror's ledger only needs the account row.
        await self.ledger.ensure_account(Decimal(0), at)

    async def broker_order_id(self, order_id: str) -> str | None:
        return await self.ledger.broker_order_id(order_id)

    async def approved_record(self, order: Order) -> Order:
        """The order's row if it may be transmitted now; raises why not (not APPROVED, halted, altered)."""
        record = await self.orders.get(order.order_id)
        if record is None:
            raise UnknownOrder(order.order_id)
        if record.state != OrderState.APPROVED.value:
            raise OrderNotApproved(order.order_id, record.state)
        halt = await RiskControls(self.pool).state()
        if halt.halted:
            raise TradingHalted(f"order {order.order_id} not sent: trading is halted ({halt.reason})")
        check_matches_approval(order, record)
        try:
            refuse_shares(order, self.broker)
        except BrokerRejected as exc:  # decided for good: REJECTED, so no recovery retries it
            await self.record_rejected_before_placing(order.order_id, str(exc))
            raise
        return record

    async def record_placed(self, order: Order, broker_order_id: str, at: datetime, detail: str) -> None:
        """Mirror row + APPROVED -> SUBMITTED in one transaction (under the order's row lock)."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await self.orders.lock_state(conn, order.order_id)
            if await self.ledger.broker_order_id(order.order_id, conn=conn, any_account=True):
                return
            await self.ledger.insert_order(conn, order, broker_order_id, at, None)
            if state == OrderState.APPROVED.value:
                await self.orders.transition(order.order_id, OrderState.SUBMITTED, actor=self.actor, conn=conn,
                                             locked_state=state, reason=detail)

    async def record_rejected_before_placing(self, order_id: str, reason: str) -> None:
        await self.orders.transition(order_id, OrderState.REJECTED, actor=self.actor, reason=reason)

    async def set_limit(self, order_id: str, limit: Decimal, at: datetime) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            bo = await self.ledger.order_row(conn, order_id, lock=True)
            if bo is not None and bo["limit_price"] != limit:
                await self.ledger.set_limit(conn, bo["broker_order_id"], limit, at, bo["limit_price"])

    async def apply_fill(self, fill: Fill) -> bool:
        """Record one execution and move the order (PARTIALLY_FILLED / FILLED). False: seen before."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await self.orders.lock_state(conn, fill.order_id)
            if await self.ledger.fill_exists(conn, fill.fill_id):
                return False
            bo = await self.ledger.order_row(conn, fill.order_id, lock=True)
            if bo is None:
                raise UnknownBrokerOrder(f"order {fill.order_id} was never placed with {self.broker} account {self.account_id}")
            filled = await self.ledger.apply_fill(conn, fill, bo)
            if filled is None:
                return False
            target = OrderState.FILLED if filled == bo["quantity"] else OrderState.PARTIALLY_FILLED
            if OrderState(state) in TERMINAL:
                # The broker filled what we had already closed (a cancel that lost the race): the fill
                # is real and stays recorded; the order's final state does not move.
                log.warning("fill %s for %s arrived after it was %s", fill.fill_id, fill.order_id, state)
            else:
                await self.orders.transition(fill.order_id, target, actor=self.actor, conn=conn, locked_state=state,
                                             reason=f"{self.broker} fill {fill.fill_id}: {fill.quantity} @ {fill.price} "
                                                    f"({filled}/{bo['quantity']})")
        for callback in self.callbacks:
            try:
                await callback(fill)
            except Exception:  # one failing subscriber must not starve the others
                log.exception("fill callback failed for %s", fill.fill_id)
        return True

    async def move(self, order_id: str, target: OrderState, reason: str) -> bool:
        """Move the order to `target` when it is not there and the state machine allows it."""
        async with self.pool.acquire() as conn, conn.transaction():
            state = await self.orders.lock_state(conn, order_id)
            if state is None or state == target.value or not can_transition(state, target):
                return False
            await self.orders.transition(order_id, target, actor=self.actor, conn=conn, locked_state=state,
                                         reason=reason)
            if target in (OrderState.CANCELLED, OrderState.REJECTED):
                bo = await self.ledger.order_row(conn, order_id)
                if bo is not None:
                    await self.ledger.event(conn, bo["broker_order_id"], "cancelled", datetime.now(bo["placed_at"].tzinfo),
                                            None, {"reason": reason, "state": target.value})
            return True

    async def working_order_ids(self) -> list[str]:
        return await self.ledger.order_ids_in_states(sorted(s.value for s in WORKING))

    async def mark_unknown(self, reason: str) -> list[str]:
        """Every working order -> UNKNOWN (the connection is gone: the broker decides where they are)."""
        moved = []
        for order_id in await self.working_order_ids():
            if await self.move(order_id, OrderState.UNKNOWN, reason):
                moved.append(order_id)
        return moved

    async def state(self, order_id: str) -> OrderState:
        return OrderState(await self.orders.state(order_id))

    async def row(self, order_id: str):
        return await self.ledger.own_order_row(order_id)

    async def status(self, order_id: str) -> BrokerOrderStatus:
        status = await self.ledger.order_status(order_id)
        if status is None:
            raise UnknownBrokerOrder(f"order {order_id} was never placed with {self.broker} account {self.account_id}")
        return status

    async def fills(self, order_id: str) -> list[Fill]:
        return await self.ledger.fills(order_id)


def to_decimal(value: float, places: Decimal = AVG_PLACES) -> Decimal:
    """A broker's float as a Decimal on `places` (floats never reach money arithmetic raw)."""
    return Decimal(repr(float(value))).quantize(places, rounding=ROUND_HALF_EVEN)


def weighted(parts: Sequence[tuple[int | float, Decimal]]) -> Decimal:
    total = sum(Decimal(str(q)) for q, _ in parts)
    return sum((Decimal(str(q)) * p for q, p in parts), Decimal(0)) / total
