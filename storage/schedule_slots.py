"""The scheduler's slots (`schedule_slots`): one row per slot once any scheduler claims or records
it. A slot is handled on one connection that also holds the slot's advisory lock, so every write
here takes that connection."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

import asyncpg

from storage.database import took_session_lock


async def statuses(pool: asyncpg.Pool, slot_keys: list[str]) -> dict[str, str]:
    """slot key -> status, for the slots already recorded."""
    rows = await pool.fetch("SELECT slot_key, status FROM schedule_slots WHERE slot_key = ANY($1::text[])", slot_keys)
    return {r["slot_key"]: r["status"] for r in rows}


async def claims(pool: asyncpg.Pool) -> dict[str, Any]:
    """When a slot was last claimed, and how many slots there are."""
    row = await pool.fetchrow("SELECT max(claimed_at) AS at, count(*) AS n FROM schedule_slots")
    return {"last_claimed_at": row["at"], "slots": row["n"]}


async def try_lock(conn: asyncpg.Connection, key: int) -> bool:
    took_session_lock(conn)
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def unlock(conn: asyncpg.Connection, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def insert(conn: asyncpg.Connection, *, slot_key: str, slot_name: str, watchlist: str, session_date: date,
                 scheduled_at: datetime, status: str, claimed_by: str, claimed_at: datetime,
                 finished_at: datetime | None, detail: str | None) -> bool:
    """Record the slot unless it already is; True when this call recorded it."""
    inserted = await conn.fetchval(
        """
        INSERT INTO schedule_slots
            (slot_key, slot_name, watchlist, session_date, scheduled_at, status, claimed_by,
             claimed_at, finished_at, detail)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (slot_key) DO NOTHING
        RETURNING slot_key
        """,
        slot_key, slot_name, watchlist, session_date, scheduled_at, status, claimed_by, claimed_at, finished_at,
        detail,
    )
    return inserted is not None


async def get(conn: asyncpg.Connection, slot_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT status, claimed_by, claimed_at FROM schedule_slots WHERE slot_key = $1",
                               slot_key)


async def fail_claimed(conn: asyncpg.Connection, slot_key: str, at: datetime, detail: str) -> None:
    """A claimed slot whose claimer stopped, past the grace period: failed, not resumed."""
    await conn.execute(
        "UPDATE schedule_slots SET status = 'failed', finished_at = $2, detail = $3 "
        "WHERE slot_key = $1 AND status = 'claimed'",
        slot_key, at, detail,
    )


async def reclaim(conn: asyncpg.Connection, slot_key: str, claimed_by: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE schedule_slots SET claimed_by = $2, claimed_at = $3 WHERE slot_key = $1 AND status = 'claimed'",
        slot_key, claimed_by, at,
    )


async def finish(conn: asyncpg.Connection, slot_key: str, status: str, run_id: str | None, detail: str | None,
                 at: datetime) -> None:
    await conn.execute(
        "UPDATE schedule_slots SET status = $2, run_id = $3, detail = $4, finished_at = $5 WHERE slot_key = $1",
        slot_key, status, run_id, detail, at,
    )
