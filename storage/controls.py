"""The kill switch: one row saying whether trading is halted, by whom and why."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class HaltState:
    halted: bool
    reason: str | None
    actor: str | None
    changed_at: datetime


class RiskControls:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def state(self, conn: asyncpg.Connection | None = None) -> HaltState:
        """The kill switch now (read on `conn`, inside the caller's transaction, when given)."""
        row = await (conn or self.pool).fetchrow("SELECT halted, reason, actor, changed_at FROM risk_controls WHERE id")
        return HaltState(**dict(row))

    async def set_halted(self, halted: bool, *, actor: str, reason: str | None) -> HaltState:
        row = await self.pool.fetchrow(
            """UPDATE risk_controls SET halted = $1, reason = $2, actor = $3, changed_at = now()
               WHERE id RETURNING halted, reason, actor, changed_at""",
            halted, reason, actor,
        )
        return HaltState(**dict(row))
