"""What the order manager did with each approved order: transmitted, refused by the re-check, or
held (halted, market closed). One row per order, rewritten as the order moves on."""
from __future__ import annotations

from decimal import Decimal

import asyncpg

from domain.decision import Execution


class ExecutionRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def record(self, run_id: str, e: Execution) -> None:
        await self.pool.execute(
            """INSERT INTO executions (order_id, run_id, outcome, reasons, fresh_mid, broker_order_id)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (order_id) DO UPDATE SET outcome = EXCLUDED.outcome, reasons = EXCLUDED.reasons,
                   fresh_mid = coalesce(EXCLUDED.fresh_mid, executions.fresh_mid),
                   broker_order_id = coalesce(EXCLUDED.broker_order_id, executions.broker_order_id), at = now()""",
            e.order_id, run_id, e.outcome, e.reasons,
            None if e.fresh_mid is None else Decimal(str(e.fresh_mid)), e.broker_order_id,
        )

    async def for_orders(self, order_ids: list[str]) -> list[Execution]:
        rows = await self.pool.fetch(
            """SELECT e.order_id, e.outcome, e.reasons, e.fresh_mid, e.broker_order_id,
                      coalesce((SELECT sum(f.quantity) FROM broker_fills f WHERE f.order_id = e.order_id), 0) AS filled
               FROM executions e WHERE e.order_id = ANY($1::text[]) ORDER BY e.order_id""", order_ids)
        return [Execution(order_id=r["order_id"], outcome=r["outcome"], reasons=list(r["reasons"]),
                          fresh_mid=None if r["fresh_mid"] is None else float(r["fresh_mid"]),
                          broker_order_id=r["broker_order_id"], filled_quantity=int(r["filled"])) for r in rows]

    async def row(self, order_id: str) -> dict | None:
        row = await self.pool.fetchrow("SELECT * FROM executions WHERE order_id = $1", order_id)
        return dict(row) if row else None

    async def approver(self, order_id: str) -> str | None:
        return await self.pool.fetchval("SELECT approver FROM approvals WHERE order_id = $1", order_id)

    async def in_flight(self, run_id: str | None = None) -> list[asyncpg.Record]:
        """Every order the manager still owns (of one run, or all): approved but unsent, or working
        at a broker."""
        return await self.pool.fetch(
            """SELECT order_id, run_id, state FROM orders
               WHERE state = ANY($1::text[]) AND ($2::text IS NULL OR run_id = $2)
               ORDER BY created_at, order_id""",
            ["APPROVED", "SUBMITTED", "PARTIALLY_FILLED", "UNKNOWN"], run_id)

    async def has_undecided(self, run_id: str) -> bool:
        """Whether some order of the run still waits for a human decision (STAGED)."""
        return bool(await self.pool.fetchval(
            "SELECT 1 FROM orders WHERE run_id = $1 AND state = 'STAGED' LIMIT 1", run_id))
