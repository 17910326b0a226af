"""The record of every notification: what was sent, on which channel, and how it went."""
from __future__ import annotations

import json
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
