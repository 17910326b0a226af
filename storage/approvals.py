"""Decisions on staged orders: one row per order in `approvals`, recorded under the order's row
lock together with the order's state move, so two approvers at once cannot both decide it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from domain.order_state import OrderState
from storage.orders import OrderRepository


@dataclass(frozen=True)
class ApprovalEntry:
    """One decision as recorded: `action` approve | reject | resize | expire; `quantity` the
    contracts approved (None for a rejection or an expiry); `seen` what the approver saw. The
    order moves to `to_state` with `transition_reason`; a resize also sets the order's quantity
    and whether it now `requires_acknowledgement`."""

    action: str
    approver: str
    original_quantity: int
    to_state: OrderState
    quantity: int | None = None
    reason: str | None = None
    acknowledged: bool = False
    seen: dict[str, Any] = field(default_factory=dict)
    transition_reason: str | None = None
    requires_acknowledgement: bool = False


# What a decision sees of the order it decides: read under the order's row lock.
Judge = Callable[[asyncpg.Record], ApprovalEntry | None]


class ApprovalRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.orders = OrderRepository(pool)

    async def get(self, order_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow("SELECT * FROM approvals WHERE order_id = $1", order_id)
        return dict(row) if row else None

    async def decide(self, order_id: str, judge: Judge) -> tuple[asyncpg.Record, ApprovalEntry | None]:
        """Lock the order row and let `judge(row)` (state, quantity, requires_acknowledgement,
        created_at, run_id) say what to record — or raise, or return None to record nothing —
        then record it and move the order, in one transaction. Returns (the row as judged, the entry)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT state, quantity, requires_acknowledgement, created_at, run_id "
                                      "FROM orders WHERE order_id = $1 FOR UPDATE", order_id)
            entry = judge(row)
            if entry is None:
                return row, None
            await conn.execute(
                """INSERT INTO approvals (order_id, action, approver, quantity, original_quantity, reason,
                                          acknowledged, seen)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (order_id) DO NOTHING""",
                order_id, entry.action, entry.approver, entry.quantity, entry.original_quantity, entry.reason,
                entry.acknowledged, entry.seen,
            )
            if entry.action == "resize":
                await conn.execute("UPDATE orders SET quantity = $2, requires_acknowledgement = $3, updated_at = now() "
                                   "WHERE order_id = $1", order_id, entry.quantity, entry.requires_acknowledgement)
            await self.orders.transition(order_id, entry.to_state, actor=entry.approver,
                                         reason=entry.transition_reason, conn=conn)
        return row, entry
