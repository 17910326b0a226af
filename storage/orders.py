"""Orders and their state history. Every state change goes through `domain.order_state`.

Staging is idempotent: the idempotency key has a unique constraint, so staging the same trade
twice (a resumed run, a re-executed node, two processes) leaves exactly one order.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from domain.decision import Position, SizedTrade
from domain.order_state import OrderState, transition
from domain.orders import Order

# Orders in these states are, or may become, positions: they count against the risk limits.
OPEN_STATES = ("STAGED", "APPROVED", "SUBMITTED", "PARTIALLY_FILLED", "UNKNOWN")


def order_from_row(row: asyncpg.Record | Mapping[str, Any]) -> Order:
    """The `domain.orders.Order` an `orders` row holds. The row's `legs` column keeps the priced
    legs the approver saw (the same as `proposal.legs`); the order's legs are their contract terms."""
    proposal = row["proposal"] or {}
    return Order(**{k: row[k] for k in _ROW_FIELDS if k in row.keys()},
                 multiplier=int(proposal.get("multiplier", 100)))


_ROW_FIELDS = ("order_id", "ticker", "legs", "quantity", "limit_price", "run_id", "idempotency_key", "structure",
               "sector", "state", "requires_acknowledgement", "proposal", "sizing", "created_at", "updated_at",
               "closes_position_id", "exit_rule")


class UnknownOrder(LookupError):
    pass


class OrderRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def stage(
        self, *, order_id: str, idempotency_key: str, run_id: str, trade: SizedTrade, sector: str,
        limit_price: Decimal, requires_acknowledgement: bool, actor: str = "graph", created_at: datetime | None = None,
    ) -> tuple[Order, bool]:
        """Stage an order once. Returns (the order, whether this call created it)."""
        order = Order.staged(order_id=order_id, idempotency_key=idempotency_key, run_id=run_id, trade=trade,
                             sector=sector, limit_price=limit_price, requires_acknowledgement=requires_acknowledgement,
                             created_at=created_at)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """INSERT INTO orders (order_id, idempotency_key, run_id, ticker, sector, structure, legs, quantity,
                                       limit_price, state, requires_acknowledgement, proposal, sizing,
                                       created_at, updated_at)
                   VALUES ($1, $2, $3, $4, $13, $5, $6, $7, $8, $9, $10, $11, $12,
                           COALESCE($14, now()), COALESCE($14, now()))
                   ON CONFLICT (idempotency_key) DO NOTHING
                   RETURNING *""",
                order.order_id, order.idempotency_key, order.run_id, order.ticker, order.structure,
                order.proposal["legs"], order.quantity, order.limit_price, order.state,
                order.requires_acknowledgement, order.proposal, order.sizing, order.sector, order.created_at,
            )
            created = row is not None
            if created:
                # An order is born a DRAFT and staged in the same transaction: both steps are history.
                transition(OrderState.DRAFT, OrderState.STAGED)
                await conn.executemany(
                    "INSERT INTO order_state_history (order_id, from_state, to_state, actor, reason) VALUES ($1, $2, $3, $4, $5)",
                    [(order_id, None, OrderState.DRAFT.value, actor, "created"),
                     (order_id, OrderState.DRAFT.value, OrderState.STAGED.value, actor, f"staged by run {run_id}")],
                )
            else:  # staged before (its key is the trade's): that order, as it is now
                row = await conn.fetchrow("SELECT * FROM orders WHERE idempotency_key = $1", idempotency_key)
        return order_from_row(row), created

    async def transition(self, order_id: str, target: OrderState | str, *, actor: str, reason: str | None = None,
                         conn: asyncpg.Connection | None = None, locked_state: str | None = None) -> Order:
        """Move an order to `target` if the state machine allows it (row-locked against races).

        With `conn` (a connection inside the caller's transaction) the move commits or rolls back
        together with the caller's other writes, e.g. a broker recording a fill. A caller that
        already holds the order's row lock in `conn`'s transaction passes the state it read under
        that lock as `locked_state`, and the state is not read again.
        """
        if conn is not None:
            return await self._transition(conn, order_id, target, actor, reason, locked_state)
        async with self.pool.acquire() as own, own.transaction():
            return await self._transition(own, order_id, target, actor, reason, None)

    @staticmethod
    async def lock_state(conn: asyncpg.Connection, order_id: str) -> str | None:
        """The order's state, its row locked until the caller's transaction ends (None: no such order)."""
        return await conn.fetchval("SELECT state FROM orders WHERE order_id = $1 FOR UPDATE", order_id)

    @staticmethod
    async def lock(conn: asyncpg.Connection, order_id: str) -> Order | None:
        """The order, its row locked until the caller's transaction ends."""
        row = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1 FOR UPDATE", order_id)
        return order_from_row(row) if row else None

    async def state(self, order_id: str) -> str | None:
        return await self.pool.fetchval("SELECT state FROM orders WHERE order_id = $1", order_id)

    async def _transition(self, conn: asyncpg.Connection, order_id: str, target: OrderState | str, actor: str,
                          reason: str | None, locked_state: str | None) -> Order:
        current = locked_state if locked_state is not None else await self.lock_state(conn, order_id)
        if current is None:
            raise UnknownOrder(order_id)
        new_state = transition(current, target)
        # The new state and its history row in one statement (one round trip).
        row = await conn.fetchrow(
            """WITH moved AS (
                   UPDATE orders SET state = $2, updated_at = now() WHERE order_id = $1 RETURNING *),
               logged AS (
                   INSERT INTO order_state_history (order_id, from_state, to_state, actor, reason)
                   SELECT order_id, $3, $2, $4, $5 FROM moved)
               SELECT * FROM moved""",
            order_id, new_state.value, current, actor, reason,
        )
        return order_from_row(row)

    async def get(self, order_id: str) -> Order | None:
        row = await self.pool.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
        return order_from_row(row) if row else None

    async def list(self, *, run_id: str | None = None, state: str | None = None, limit: int = 100) -> list[Order]:
        rows = await self.pool.fetch(
            """SELECT * FROM orders
               WHERE ($1::text IS NULL OR run_id = $1) AND ($2::text IS NULL OR state = $2)
               ORDER BY created_at DESC, order_id LIMIT $3""",
            run_id, state, limit,
        )
        return [order_from_row(r) for r in rows]

    async def count_by_state(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in await self.pool.fetch("SELECT state, count(*) AS n FROM orders GROUP BY 1")}

    async def states(self, order_ids: list[str]) -> dict[str, str]:
        """order id -> state, for those of `order_ids` that exist."""
        rows = await self.pool.fetch("SELECT order_id, state FROM orders WHERE order_id = ANY($1::text[])", order_ids)
        return {r["order_id"]: r["state"] for r in rows}

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
