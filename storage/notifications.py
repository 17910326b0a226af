"""The record of every notification: what was sent, on which channel, and how it went."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg


class NotificationRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def begin(self, *, event: str, channel: str, subject: str, body: str, payload: dict[str, Any],
                    dedupe_key: str | None) -> int | None:
        """Record a pending notification; None when one with the same (event, channel, dedupe_key)
        exists already (it was sent, or is being sent, once)."""
        return await self.pool.fetchval(
            """INSERT INTO notifications (event, channel, subject, body, payload, dedupe_key, status)
               VALUES ($1, $2, $3, $4, $5, $6, 'pending')
               ON CONFLICT (event, channel, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
               RETURNING id""",
            event, channel, subject, body, json.loads(json.dumps(payload, default=str)), dedupe_key)

    async def finish(self, notification_id: int, *, sent: bool, attempts: int, error: str | None) -> None:
        await self.pool.execute(
            """UPDATE notifications SET status = $2, attempts = $3, error = $4,
                      sent_at = CASE WHEN $2 = 'sent' THEN now() END
                WHERE id = $1""",
            notification_id, "sent" if sent else "failed", attempts, error)

    async def recent(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT id, event, channel, subject, body, payload, dedupe_key, status, attempts, error,
                      created_at, sent_at
                 FROM notifications WHERE ($2::text IS NULL OR event = $2)
                ORDER BY id DESC LIMIT $1""", limit, event)
        return [dict(r) for r in rows]

    # What the periodic sweep looks for; each finds only what has no notification of its event yet.
    # "Recent" windows compare columns the database stamps with now() against now(), so a
    # simulated service clock cannot widen or empty them.

    async def unannounced_staged(self) -> list[dict[str, Any]]:
        """STAGED orders with the config of their run (for the approval deadline), oldest first."""
        rows = await self.pool.fetch(
            """SELECT o.order_id, o.ticker, o.structure, o.quantity, o.limit_price, o.created_at, o.run_id,
                      r.config
                 FROM orders o JOIN runs r USING (run_id)
                WHERE o.state = 'STAGED'
                  AND NOT EXISTS (SELECT 1 FROM notifications n
                                   WHERE n.event = 'approval_expiring' AND n.dedupe_key = o.order_id)
                ORDER BY o.created_at LIMIT 200""")
        return [dict(r) for r in rows]

    async def unannounced_fills(self, limit: int = 50) -> list[dict[str, Any]]:
        """Filled orders journaled in the last day (by the database clock) whose fill was not announced."""
        rows = await self.pool.fetch(
            """SELECT o.order_id, o.ticker, o.structure, o.quantity, o.run_id,
                      (SELECT a.approver FROM approvals a WHERE a.order_id = o.order_id) AS approver,
                      avg(j.price) AS price
                 FROM orders o JOIN trade_journal j USING (order_id)
                WHERE o.state = 'FILLED' AND j.recorded_at > now() - interval '1 day'
                  AND NOT EXISTS (SELECT 1 FROM notifications n
                                   WHERE n.event = 'order_filled' AND n.dedupe_key = o.order_id)
                GROUP BY o.order_id ORDER BY min(j.recorded_at) LIMIT $1""", limit)
        return [dict(r) for r in rows]

    async def unannounced_failed_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT run_id, watchlist, tickers, error, attempts FROM runs r
                WHERE status = 'failed' AND created_at > now() - interval '2 days'
                  AND NOT EXISTS (SELECT 1 FROM notifications n
                                   WHERE n.event = 'run_failed' AND n.dedupe_key = r.run_id)
                ORDER BY created_at LIMIT $1""", limit)
        return [dict(r) for r in rows]

    async def daily_counts(self, since: datetime, until: datetime) -> dict[str, Any]:
        """One day on the service's clock: runs decided in it by status, orders staged in it by
        their state now, and the fills in it."""
        runs = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM runs WHERE as_of >= $1 AND as_of < $2 GROUP BY 1", since, until)
        orders = await self.pool.fetch(
            "SELECT state, count(*) AS n FROM orders WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
            since, until)
        fills = await self.pool.fetchval(
            "SELECT count(*) FROM trade_journal WHERE filled_at >= $1 AND filled_at < $2", since, until)
        return {"runs": {r["status"]: r["n"] for r in runs}, "orders": {r["state"]: r["n"] for r in orders},
                "fills": fills}
