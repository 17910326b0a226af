"""Runs and what they recorded: the run row, its market snapshot, its node timings."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from domain.decision import RunInfo
from storage.snapshots import decode_snapshot, encode_snapshot, snapshot_sha256
from tools.providers.base import MarketSnapshot


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    slot_key: str
    watchlist: str
    as_of: datetime
    tickers: list[str]
    seed: int
    provider: str
    config: dict[str, Any]
    mode: str
    parent_run_id: str | None
    status: str
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    debater: str = "deterministic"  # "llm:<model>" when the debate was the LLM's
    market_source: dict[str, Any] | None = None  # how to rebuild the market it read (service.markets)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "RunRecord":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    def info(self) -> RunInfo:
        """Who this run is, as its graph state carries it (the row adds its progress and config)."""
        return RunInfo(run_id=self.run_id, slot_key=self.slot_key, watchlist=self.watchlist, as_of=self.as_of,
                       tickers=list(self.tickers), seed=self.seed, provider=self.provider, mode=self.mode)


class RunRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create_if_absent(
        self, *, run_id: str, slot_key: str, watchlist: str, as_of: datetime, tickers: list[str],
        seed: int, provider: str, config: dict[str, Any], mode: str = "live", parent_run_id: str | None = None,
        debater: str = "deterministic", market_source: dict[str, Any] | None = None,
    ) -> RunRecord:
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO runs (run_id, slot_key, watchlist, as_of, tickers, seed, provider, config,
                                     mode, parent_run_id, status, debater, market_source)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11, $12)
                   ON CONFLICT (run_id) DO NOTHING""",
                run_id, slot_key, watchlist, as_of, tickers, seed, provider, config, mode, parent_run_id, debater,
                market_source,
            )
            return RunRecord.from_row(await conn.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id))

    async def get(self, run_id: str) -> RunRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)
        return RunRecord.from_row(row) if row else None

    async def list(self, limit: int = 50, *, ticker: str | None = None, status: str | None = None,
                   since: datetime | None = None, until: datetime | None = None, debater: str | None = None,
                   mode: str | None = None) -> list[RunRecord]:
        """Newest first. `since`/`until` bound the as-of (until exclusive); `debater` matches exactly
        or, without a model ("llm"), every model."""
        rows = await self.pool.fetch(
            """SELECT * FROM runs
               WHERE ($2::text IS NULL OR $2 = ANY(tickers))
                 AND ($3::text IS NULL OR status = $3)
                 AND ($4::timestamptz IS NULL OR as_of >= $4)
                 AND ($5::timestamptz IS NULL OR as_of < $5)
                 AND ($6::text IS NULL OR debater = $6 OR ($6 = 'llm' AND debater LIKE 'llm:%'))
                 AND ($7::text IS NULL OR mode = $7)
               ORDER BY created_at DESC, run_id LIMIT $1""",
            limit, ticker, status, since, until, debater, mode,
        )
        return [RunRecord.from_row(r) for r in rows]

    async def mark_started(self, run_id: str) -> None:
        await self.pool.execute(
            """UPDATE runs SET status = 'running', attempts = attempts + 1, error = NULL,
                               started_at = COALESCE(started_at, now())
               WHERE run_id = $1""",
            run_id,
        )

    async def ids_with_status(self, status: str) -> list[str]:
        """Every run in `status` (e.g. awaiting_approval), by run id."""
        return [r["run_id"] for r in await self.pool.fetch(
            "SELECT run_id FROM runs WHERE status = $1 ORDER BY run_id", status)]

    async def children(self, run_id: str) -> list[str]:
        """The ids of the replays and forks made from `run_id`."""
        return [r["run_id"] for r in await self.pool.fetch("SELECT run_id FROM runs WHERE parent_run_id = $1", run_id)]

    async def count_by_status(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in await self.pool.fetch("SELECT status, count(*) AS n FROM runs GROUP BY 1")}

    async def has_graph(self, run_id: str) -> bool:
        """Whether the run is a LangGraph thread (it has a checkpoint); flatten runs are not."""
        return bool(await self.pool.fetchval("SELECT 1 FROM checkpoints WHERE thread_id = $1 LIMIT 1", run_id))

    async def paused_at_interrupt(self, run_id: str) -> bool:
        """Whether the run's graph waits at an `interrupt` (await_approval): LangGraph stores the
        interrupt as a write on the thread's latest checkpoint, and a step that goes on saves a
        newer checkpoint. Tells it without loading the checkpoint's channel values."""
        return bool(await self.pool.fetchval(
            """SELECT 1 FROM checkpoint_writes
               WHERE thread_id = $1 AND checkpoint_ns = '' AND channel = '__interrupt__'
                 AND checkpoint_id = (SELECT max(checkpoint_id) FROM checkpoints
                                      WHERE thread_id = $1 AND checkpoint_ns = '')
               LIMIT 1""", run_id))

    async def set_status(self, run_id: str, status: str) -> None:
        await self.pool.execute("UPDATE runs SET status = $2 WHERE run_id = $1", run_id, status)

    async def mark_finished(self, run_id: str, status: str, error: str | None = None) -> None:
        await self.pool.execute(
            "UPDATE runs SET status = $2, error = $3, finished_at = now() WHERE run_id = $1",
            run_id, status, error,
        )

    async def record_snapshot(self, run_id: str, snapshot: MarketSnapshot) -> str:
        """Store the run's inputs once; a resumed run keeps the first recording. Returns its hash."""
        payload = encode_snapshot(snapshot)
        digest = snapshot_sha256(payload)
        await self.pool.execute(
            """INSERT INTO market_snapshots (run_id, provider, as_of, sha256, payload)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING""",
            run_id, snapshot.provider, snapshot.as_of, digest, payload,
        )
        return await self.pool.fetchval("SELECT sha256 FROM market_snapshots WHERE run_id = $1", run_id)

    async def load_snapshot(self, run_id: str) -> tuple[MarketSnapshot, str] | None:
        row = await self.pool.fetchrow("SELECT payload, sha256 FROM market_snapshots WHERE run_id = $1", run_id)
        if row is None:
            return None
        return decode_snapshot(bytes(row["payload"])), row["sha256"]

    async def timings(self, run_id: str) -> list[dict]:
        """The run's node timings (node, ticker, duration_ms), in the order the nodes started."""
        return [dict(r) for r in await self.pool.fetch(
            "SELECT node, ticker, duration_ms FROM node_timings WHERE run_id = $1 ORDER BY started_at", run_id)]

    async def node_seconds(self) -> dict[str, float]:
        """Wall time spent in each node over every run, in seconds."""
        return {r["node"]: float(r["s"]) for r in await self.pool.fetch(
            "SELECT node, sum(duration_ms) / 1000.0 AS s FROM node_timings GROUP BY 1")}

    async def record_timings(self, run_id: str, timings: list[tuple[str, str | None, datetime, float]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM node_timings WHERE run_id = $1", run_id)
            await conn.executemany(
                "INSERT INTO node_timings (run_id, node, ticker, started_at, duration_ms) VALUES ($1, $2, $3, $4, $5)",
                [(run_id, *t) for t in timings],
            )
