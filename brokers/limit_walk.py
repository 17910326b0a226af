"""Limit orders start at the mid and walk toward the natural price until a deadline.

Prices are per share per unit, signed like every combo price (+ pay / - receive), so for a
bought combo natural >= mid and walking means raising the limit (paying a little more, or asking
a little less credit). `limit_schedule` is pure; `LimitWalker` applies it to a working order
through any `brokers.base.Broker` (`replace_limit`, then `cancel` at the deadline).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Literal

from brokers.base import Broker, OrderNotWorking
from domain.orders import CENT, BrokerOrderStatus
from domain.order_state import OrderState


def _to_cent(value: Decimal, toward_mid_up: bool) -> Decimal:
    # "Toward the mid" = away from the natural side: never past the natural price.
    return value.quantize(CENT, rounding=ROUND_FLOOR if toward_mid_up else ROUND_CEILING)


def limit_schedule(mid: Decimal, natural: Decimal, steps: int, start: datetime,
                   deadline: datetime) -> list[tuple[datetime, Decimal]]:
    """`steps + 1` (time, limit) levels from the mid at `start` to the natural price, each held for
    an equal share of the window: level i starts at start + i * (deadline - start) / (steps + 1),
    so the natural price, too, is in force for one slot before the deadline.

    Level i's limit is mid + (natural - mid) * i / steps rounded to the cent toward the mid — so
    the first limit is the mid rounded in our favour (the staged opening limit), the limits move
    monotonically toward the natural price, never beyond it, and the last is the natural price
    (exactly, when it is on a cent, as listed quotes are). Works in either direction (natural
    above or below the mid).
    """
    mid, natural = Decimal(mid), Decimal(natural)
    if not (mid.is_finite() and natural.is_finite()):
        raise ValueError(f"mid and natural must be finite, got {mid} / {natural}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive whole number, got {steps!r}")
    if start.tzinfo is None or deadline.tzinfo is None:
        raise ValueError("start and deadline must be timezone-aware")
    if deadline <= start:
        raise ValueError(f"deadline {deadline} must be after start {start}")
    up = natural >= mid
    span, duration = natural - mid, deadline - start
    return [(start + duration * i / (steps + 1), _to_cent(mid + span * i / steps, up)) for i in range(steps + 1)]


def limit_at(schedule: list[tuple[datetime, Decimal]], now: datetime) -> Decimal | None:
    """The limit in force at `now`: the last point whose time has come (None before the start)."""
    current = None
    for at, price in schedule:
        if at <= now:
            current = price
        else:
            break
    return current


WalkOutcome = Literal["working", "filled", "cancelled", "ended"]
_WORKING = (OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED)


@dataclass(frozen=True)
class WalkStep:
    outcome: WalkOutcome  # "ended": the order left the working states some other way (rejected...)
    limit_price: Decimal | None
    status: BrokerOrderStatus

    @classmethod
    def ended(cls, status: BrokerOrderStatus) -> "WalkStep":
        """The step that reports how an order no longer working left the walk."""
        outcome = {OrderState.FILLED: "filled", OrderState.CANCELLED: "cancelled"}.get(status.state, "ended")
        return cls(outcome, status.limit_price, status)


class LimitWalker:
    """Walks one placed order's limit along a schedule; call `step(now)` on every tick.

    Each step: a finished order ends the walk; at or past the deadline the order is cancelled (the
    filled part stays filled); otherwise the limit in force is sent with `replace_limit` when it
    differs from the working limit. Steps are explicit so that a test (or the paper broker's
    `process()` loop) decides when time passes.
    """

    def __init__(self, broker: Broker, order_id: str, schedule: list[tuple[datetime, Decimal]], deadline: datetime):
        if not schedule:
            raise ValueError("an empty schedule walks nowhere")
        if deadline.tzinfo is None or deadline <= schedule[-1][0]:
            raise ValueError("the deadline must be timezone-aware and after the schedule's last level")
        self.broker = broker
        self.order_id = order_id
        self.schedule = schedule
        self.deadline = deadline

    @classmethod
    def from_quotes(cls, broker: Broker, order_id: str, *, mid: Decimal, natural: Decimal, steps: int,
                    start: datetime, deadline: datetime) -> "LimitWalker":
        return cls(broker, order_id, limit_schedule(mid, natural, steps, start, deadline), deadline)

    async def step(self, now: datetime, known: BrokerOrderStatus | None = None) -> WalkStep:
        """One tick at `now`. `known`: the order's status as the caller last saw it, given only when
        nothing can have filled it since (the paper venue between its own steps) and only for a
        broker whose `replace_limit` re-checks, under the order's lock, that the order still works
        (else `OrderNotWorking`) and changes nothing at the working limit. A step that only moves
        the limit then sends it without reading the status first: what the read would decide, the
        replace decides (an order ended meanwhile raises, and is reported as below)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        limit = limit_at(self.schedule, now)
        if known is not None and now < self.deadline and limit is not None and limit != known.limit_price:
            try:
                status = await self.broker.replace_limit(self.order_id, limit)
            except OrderNotWorking:
                return WalkStep.ended(await self.broker.status(self.order_id))
            if status.state not in _WORKING:
                return WalkStep.ended(status)
            return WalkStep("working", status.limit_price, status)
        status = await self.broker.status(self.order_id)
        if status.state not in _WORKING:
            return WalkStep.ended(status)
        try:
            if now >= self.deadline:
                status = await self.broker.cancel(self.order_id, reason=f"limit walk deadline {self.deadline.isoformat()} passed")
                return WalkStep("cancelled", status.limit_price, status)
            if limit is not None and limit != status.limit_price:
                status = await self.broker.replace_limit(self.order_id, limit)
        except OrderNotWorking:
            # Filled or cancelled between our status read and the change: report where it ended.
            return WalkStep.ended(await self.broker.status(self.order_id))
        return WalkStep("working", status.limit_price, status)
