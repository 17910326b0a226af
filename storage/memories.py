"""The `memories` table (pgvector): situations, their trades and outcomes, and nearest-neighbour
search among those whose outcome was known by a time.

SQL only: what a situation's text is, what it is embedded as, which search path a query takes and
what may be recalled when live in `memory/`. Embeddings are unit float32 vectors; the pool's
connections need pgvector's asyncpg codec (`storage.database.connect` registers it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np


@dataclass(frozen=True)
class Memory:
    id: int
    ticker: str
    regime: str
    as_of: datetime  # when the situation was seen
    situation: str  # the text that was embedded
    signals: list[dict[str, Any]]
    thesis: str
    trade: dict[str, Any] | None
    run_id: str | None
    horizon_days: int  # calendar days after as_of when the outcome is due
    outcome: dict[str, Any] | None
    reflection: str | None
    outcome_known_at: datetime | None
    created_at: datetime
    similarity: float | None = None  # cosine similarity to the query, in [-1, 1]; None outside search


_COLUMNS = ("id, ticker, regime, as_of, situation, signals, thesis, trade, run_id, horizon_days, "
            "outcome, reflection, outcome_known_at, created_at")


def _memory(row: asyncpg.Record, similarity: float | None = None) -> Memory:
    return Memory(
        id=row["id"], ticker=row["ticker"], regime=row["regime"], as_of=row["as_of"],
        situation=row["situation"], signals=row["signals"], thesis=row["thesis"], trade=row["trade"],
        run_id=row["run_id"], horizon_days=row["horizon_days"], outcome=row["outcome"],
        reflection=row["reflection"], outcome_known_at=row["outcome_known_at"],
        created_at=row["created_at"], similarity=similarity,
    )


def _known_by(as_of: datetime, ticker: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its arguments, $1...) of memories whose outcome was known at `as_of`."""
    where = "outcome_known_at <= $1" + (" AND ticker = $2" if ticker is not None else "")
    return where, [as_of] + ([ticker] if ticker is not None else [])


def _ranked(rows: list[asyncpg.Record]) -> list[Memory]:
    """Nearest first, ties by id; each with its cosine similarity (1 - cosine distance)."""
    ranked = sorted(rows, key=lambda r: (r["distance"], r["id"]))
    return [_memory(r, similarity=1.0 - float(r["distance"])) for r in ranked]


class MemoryRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def insert(self, *, ticker: str, regime: str, as_of: datetime, situation: str,
                     signals: list[dict[str, Any]], thesis: str, trade: dict[str, Any] | None, run_id: str | None,
                     embedding: np.ndarray, horizon_days: int) -> int:
        return await self.pool.fetchval(
            """INSERT INTO memories (ticker, regime, as_of, situation, signals, thesis, trade, run_id,
                                     embedding, horizon_days)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
            ticker, regime, as_of, situation, signals, thesis, trade, run_id, embedding, horizon_days,
        )

    async def get(self, memory_id: int) -> Memory | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM memories WHERE id = $1", memory_id)
        return None if row is None else _memory(row)

    async def remembers(self, run_id: str, ticker: str) -> bool:
        """Whether the run already remembered a situation for `ticker`."""
        return await self.pool.fetchval(
            "SELECT 1 FROM memories WHERE run_id = $1 AND ticker = $2", run_id, ticker) is not None

    async def without_trade(self, run_id: str, ticker: str) -> Memory | None:
        """The run's situation for `ticker` when it names no trade yet."""
        row = await self.pool.fetchrow(
            f"SELECT {_COLUMNS} FROM memories WHERE run_id = $1 AND ticker = $2 AND trade IS NULL", run_id, ticker)
        return None if row is None else _memory(row)

    async def traded_id(self, run_id: str, ticker: str) -> int | None:
        """The id of the run's situation for `ticker` that led to a trade."""
        return await self.pool.fetchval(
            "SELECT id FROM memories WHERE run_id = $1 AND ticker = $2 AND trade IS NOT NULL", run_id, ticker)

    async def set_trade(self, memory_id: int, trade: dict[str, Any], situation: str,
                        embedding: np.ndarray) -> int | None:
        """Name the situation's trade (with its new text and embedding) unless it already names one."""
        return await self.pool.fetchval(
            """UPDATE memories SET trade = $2, situation = $3, embedding = $4
               WHERE id = $1 AND trade IS NULL RETURNING id""", memory_id, trade, situation, embedding)

    async def set_outcome(self, memory_id: int, outcome: dict[str, Any], reflection: str,
                          known_at: datetime) -> bool:
        """Attach a first outcome, known at `known_at` (not before the situation's as_of).
        False: nothing written (see `outcome_state` for why)."""
        updated = await self.pool.fetchval(
            """UPDATE memories SET outcome = $2, reflection = $3, outcome_known_at = $4
               WHERE id = $1 AND outcome_known_at IS NULL AND as_of <= $4 RETURNING id""",
            memory_id, outcome, reflection, known_at,
        )
        return updated is not None

    async def outcome_state(self, memory_id: int) -> tuple[datetime, datetime | None] | None:
        """(as_of, outcome_known_at) of a memory; None when there is no such memory."""
        row = await self.pool.fetchrow("SELECT as_of, outcome_known_at FROM memories WHERE id = $1", memory_id)
        return None if row is None else (row["as_of"], row["outcome_known_at"])

    async def merge_realized(self, run_id: str, ticker: str, realized: dict[str, Any], reflection: str,
                             known_at: datetime) -> int | None:
        """Merge `realized` into the outcome of the run's traded situation for `ticker`, unless a
        realized result is there already; the whole outcome is then known at `known_at` at the
        earliest. Returns the memory id (None: nothing to merge into)."""
        return await self.pool.fetchval(
            """UPDATE memories SET outcome = coalesce(outcome, '{}'::jsonb) || $3::jsonb, reflection = $4,
                   outcome_known_at = greatest(coalesce(outcome_known_at, $5), $5)
               WHERE run_id = $1 AND ticker = $2 AND trade IS NOT NULL AND as_of <= $5
                 AND NOT coalesce((outcome ->> 'realized')::boolean, false)
               RETURNING id""", run_id, ticker, realized, reflection, known_at)

    async def due_for_outcome(self, now: datetime) -> list[Memory]:
        """No outcome yet and as_of + horizon_days calendar days at or before `now`; oldest first."""
        rows = await self.pool.fetch(
            f"""SELECT {_COLUMNS} FROM memories
                WHERE outcome_known_at IS NULL AND as_of + make_interval(days => horizon_days) <= $1
                ORDER BY as_of, id""",
            now,
        )
        return [_memory(r) for r in rows]

    async def count_known(self, as_of: datetime) -> int:
        """How many memories had their outcome known at `as_of`."""
        return await self.pool.fetchval(
            "SELECT count(*) FROM memories WHERE outcome_known_at IS NOT NULL AND outcome_known_at <= $1", as_of)

    async def estimate_known(self, as_of: datetime, ticker: str | None) -> tuple[float, float]:
        """(memories known at `as_of`, for `ticker` if given; memories in the table), as the planner
        estimates them: about half a millisecond, where counting can take many on a large table."""
        where, args = _known_by(as_of, ticker)
        async with self.pool.acquire() as conn:
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM memories WHERE {where}", *args)
            if isinstance(plan, str):
                plan = json.loads(plan)
            total = await conn.fetchval("SELECT reltuples FROM pg_class WHERE oid = 'memories'::regclass")
        return float(plan[0]["Plan"]["Plan Rows"]), float(total)

    async def nearest_by_index(self, vector: np.ndarray, as_of: datetime, ticker: str | None, k: int,
                               ef_search: int) -> list[Memory]:
        """Up to k memories known at `as_of` nearest to `vector`, by the HNSW index producing
        `ef_search` candidates before the filter: fewer than k when the filter eats them."""
        where, args = _known_by(as_of, ticker)
        n = len(args)
        async with self.pool.acquire() as conn, conn.transaction():
            # SET LOCAL: the wider search lasts for this query only, not for the pooled connection.
            await conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
            rows = await conn.fetch(
                f"""SELECT {_COLUMNS}, embedding <=> ${n + 1} AS distance FROM memories
                    WHERE {where} ORDER BY embedding <=> ${n + 1} LIMIT ${n + 2}""",
                *args, vector, k,
            )
        return _ranked(rows)

    async def nearest_exact(self, vector: np.ndarray, as_of: datetime, ticker: str | None, k: int) -> list[Memory]:
        """The min(k, eligible) memories known at `as_of` nearest to `vector`, comparing every one."""
        where, args = _known_by(as_of, ticker)
        n = len(args)
        # MATERIALIZED keeps the planner from pushing the ORDER BY into the HNSW index, which is
        # exactly the filtered-after-the-fact scan this path exists to avoid.
        rows = await self.pool.fetch(
            f"""WITH eligible AS MATERIALIZED (
                    SELECT id, embedding <=> ${n + 1} AS distance FROM memories WHERE {where}),
                 nearest AS (SELECT id, distance FROM eligible ORDER BY distance, id LIMIT ${n + 2})
                SELECT {", ".join("m." + c.strip() for c in _COLUMNS.split(","))}, nearest.distance
                FROM nearest JOIN memories m USING (id) ORDER BY nearest.distance, m.id""",
            *args, vector, k,
        )
        return _ranked(rows)
