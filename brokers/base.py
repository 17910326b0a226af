"""The broker interface every execution venue implements, and the errors a broker raises.

The paper broker (`brokers.paper`) is the default; IBKR (ib_async) and tastytrade adapters
implement the same `Broker` protocol. A broker only ever transmits an order whose row in the
`orders` table is APPROVED, and it moves that row through `domain.order_state` (via
`storage.orders.OrderRepository`) — never by writing the state itself. The value types it speaks
(the order, its legs, quotes, fills, positions, accounts) live in `domain.orders`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Protocol, runtime_checkable

from domain.orders import (
    BrokerAccount,
    BrokerOrderStatus,
    BrokerPosition,
    Fill,
    Order,
    WhatIfMargin,
)


class BrokerError(RuntimeError):
    """Base class of every error a broker raises on purpose."""


class OrderNotApproved(BrokerError):
    """The order row is not APPROVED (and was never transmitted): nothing may be sent."""

    def __init__(self, order_id: str, state: str):
        super().__init__(f"order {order_id} is {state}, not APPROVED: refusing to transmit it")
        self.order_id = order_id
        self.state = state


class OrderMismatch(BrokerError):
    """The combo order differs from what the approver approved (ticker, legs or quantity)."""


class UnknownBrokerOrder(BrokerError, LookupError):
    """No broker order exists for this order id (it was never placed with this broker)."""


class OrderNotWorking(BrokerError):
    """The broker order is no longer working (filled, cancelled, rejected): it cannot change."""


class QuoteUnavailable(BrokerError):
    """A quote needed for the requested operation is missing."""


class MarginUnavailable(BrokerError):
    """A margin requirement cannot be computed (e.g. a naked short with no underlying price)."""


FillCallback = Callable[[Fill], Awaitable[None]]


@runtime_checkable
class Broker(Protocol):
    """What the executor needs from any broker. All ids in the arguments are OUR order ids.

    - `place` transmits only an APPROVED order and moves it to SUBMITTED; placing an order that
      is already transmitted returns the existing broker order id (idempotent by order_id).
    - `replace_limit` changes a working order's limit (the limit walker uses it).
    - `cancel` works from SUBMITTED / PARTIALLY_FILLED (filled contracts stay filled).
    - Fills are delivered to callbacks registered with `subscribe_fills` after they are recorded,
      and can be listed with `fills`.
    """

    name: str
    ledger_account_id: str  # the account our ledger and book record its fills under (once connected)

    async def ensure_connected(self) -> None: ...  # connect / open the account; a no-op when it is
    async def what_if(self, order: Order) -> WhatIfMargin: ...
    async def place(self, order: Order) -> str: ...
    async def replace_limit(self, order_id: str, limit_price: Decimal) -> BrokerOrderStatus: ...
    async def cancel(self, order_id: str, *, reason: str | None = None) -> BrokerOrderStatus: ...
    async def status(self, order_id: str) -> BrokerOrderStatus: ...
    async def fills(self, order_id: str) -> list[Fill]: ...
    def subscribe_fills(self, callback: FillCallback) -> None: ...
    async def positions(self) -> list[BrokerPosition]: ...
    async def account(self) -> BrokerAccount: ...


def check_matches_approval(order: Order, approved: Order) -> None:
    """Refuse an order that differs from the one the approver approved, as the book holds it
    (ticker, legs, quantity, multiplier); its limit and time in force may differ (the walk)."""
    problems = []
    if order.ticker != approved.ticker:
        problems.append(f"ticker {order.ticker} != approved {approved.ticker}")
    if order.legs_key() != approved.legs_key():
        problems.append("legs differ from the approved legs")
    if order.quantity != approved.quantity:
        problems.append(f"quantity {order.quantity} != approved {approved.quantity}")
    if order.multiplier != approved.multiplier:
        problems.append(f"multiplier {order.multiplier} != approved {approved.multiplier}")
    if problems:
        raise OrderMismatch(f"order {order.order_id}: " + "; ".join(problems))
