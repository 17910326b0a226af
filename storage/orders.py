"""Orders and their state history. Every state change goes through `domain.order_state`.

Staging is idempotent: the idempotency key has a unique constraint, so staging the same trade
twice (a resumed run, a re-executed node, two processes) leaves exactly one order.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from domain.order_state import OrderState, transition
from domain.decision import Position, SizedTrade

# Orders in these states are, or may become, positions: they count against the risk limits.
OPEN_STATES = ("STAGED", "APPROVED", "SUBMITTED", "PARTIALLY_FILLED", "UNKNOWN")


@dataclass(frozen=True)
class OrderRecord:
    order_id: str
    idempotency_key: str
    run_id: str
    ticker: str
    sector: str
    structure: str
    legs: list[dict[str, Any]]
    quantity: int
    limit_price: Decimal
    state: str
    requires_acknowledgement: bool
    proposal: dict[str, Any]
    sizing: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    closes_position_id: str | None = None  # an exit: the strategy position this order closes
    exit_rule: str | None = None  # which exit rule staged it (take_profit, dte, credit_stop, ...)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "OrderRecord":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row.keys()})


class UnknownOrder(LookupError):
    pass


class OrderRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def stage(
        self, *, order_id: str, idempotency_key: str, run_id: str, trade: SizedTrade, sector: str,
        limit_price: Decimal, requires_acknowledgement: bool, actor: str = "graph", created_at: datetime | None = None,
    ) -> tuple[OrderRecord, bool]:
        """Stage an order once. Returns (the order, whether this call created it)."""
        proposal = trade.proposal
        async with self.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                """INSERT INTO orders (order_id, idempotency_key, run_id, ticker, sector, structure, legs, quantity,
                                       limit_price, state, requires_acknowledgement, proposal, sizing,
                                       created_at, updated_at)
                   VALUES ($1, $2, $3, $4, $13, $5, $6, $7, $8, $9, $10, $11, $12,
                           COALESCE($14, now()), COALESCE($14, now()))
                   ON CONFLICT (idempotency_key) DO NOTHING
                   RETURNING order_id""",
                order_id, idempotency_key, run_id, proposal.ticker, proposal.structure,
                [leg.model_dump(mode="json") for leg in proposal.legs], trade.contracts, limit_price,
                OrderState.STAGED.value, requires_acknowledgement, proposal.model_dump(mode="json"),
                trade.model_dump(mode="json", exclude={"proposal"}), sector, created_at,
            )
            if created:
                # An order is born a DRAFT and staged in the same transaction: both steps are history.
                transition(OrderState.DRAFT, OrderState.STAGED)
                await conn.executemany(
                    "INSERT INTO order_state_history (order_id, from_state, to_state, actor, reason) VALUES ($1, $2, $3, $4, $5)",
                    [(order_id, None, OrderState.DRAFT.value, actor, "created"),
                     (order_id, OrderState.DRAFT.value, OrderState.STAGED.value, actor, f"staged by run {run_id}")],
                )
            row = await conn.fetchrow("SELECT * FROM orders WHERE idempotency_key = $1", idempotency_key)
        return OrderRecord.from_row(row), bool(created)

    async def transition(self, order_id: str, target: OrderState | str, *, actor: str, reason: str | None = None,
                         conn: asyncpg.Connection | None = None) -> OrderRecord:
        """Move an order to `target` if the state machine allows it (row-locked against races).

        With `conn` (a connection inside the caller's transaction) the move commits or rolls back
        together with the caller's other writes, e.g. a broker recording a fill.
        """
        if conn is not None:
            return await self._transition(conn, order_id, target, actor, reason)
        async with self.pool.acquire() as own, own.transaction():
            return await self._transition(own, order_id, target, actor, reason)

    async def _transition(self, conn: asyncpg.Connection, order_id: str, target: OrderState | str, actor: str,
                          reason: str | None) -> OrderRecord:
        current = await conn.fetchval("SELECT state FROM orders WHERE order_id = $1 FOR UPDATE", order_id)
        if current is None:
            raise UnknownOrder(order_id)
        new_state = transition(current, target)
        row = await conn.fetchrow(
            "UPDATE orders SET state = $2, updated_at = now() WHERE order_id = $1 RETURNING *",
            order_id, new_state.value,
        )
        await conn.execute(
            "INSERT INTO order_state_history (order_id, from_state, to_state, actor, reason) VALUES ($1, $2, $3, $4, $5)",
            order_id, current, new_state.value, actor, reason,
        )
        return OrderRecord.from_row(row)

    async def get(self, order_id: str) -> OrderRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
        return OrderRecord.from_row(row) if row else None

    async def list(self, *, run_id: str | None = None, state: str | None = None, limit: int = 100) -> list[OrderRecord]:
        rows = await self.pool.fetch(
            """SELECT * FROM orders
               WHERE ($1::text IS NULL OR run_id = $1) AND ($2::text IS NULL OR state = $2)
               ORDER BY created_at DESC, order_id LIMIT $3""",
            run_id, state, limit,
        )
        return [OrderRecord.from_row(r) for r in rows]

    async def history(self, order_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT from_state, to_state, actor, reason, at FROM order_state_history WHERE order_id = $1 ORDER BY id",
            order_id,
        )
        return [dict(r) for r in rows]

    async def open_exposures(self, exclude: str | None = None) -> list[Position]:
        """Open orders as positions for the risk gate: staging twice into one ticker across runs
        must see the first order's risk. `exclude` leaves one order out (re-checking itself)."""
        rows = await self.pool.fetch(
            """SELECT order_id, ticker, sector, structure, quantity, proposal FROM orders
               WHERE state = ANY($1::text[]) AND order_id IS DISTINCT FROM $2""",
            list(OPEN_STATES), exclude,
        )
        positions = []
        for r in rows:
            p, q = r["proposal"], r["quantity"]
            scale = q * p["multiplier"]
            positions.append(Position(
                ticker=r["ticker"], sector=r["sector"], structure=r["structure"], quantity=q,
                max_loss=Decimal(p["max_loss"]) * q, delta=float(p["delta"]) * scale,
                gamma=float(p["gamma"]) * scale, vega=float(p["vega"]) * scale, theta=float(p["theta"]) * scale,
                underlying_price=float(p["underlying_price"]),
            ))
        return positions
