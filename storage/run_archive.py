"""A run's rows out of one database and into another: the run row, its market snapshot, its LLM
calls and its LangGraph checkpoints (the thread whose id is the run id).

Rows travel as JSON (`to_jsonb` on the way out, `jsonb_populate_recordset` on the way in), so the
columns are matched by name and a column added by a later migration is carried without code here.
Checkpoint blobs are accepted only in LangGraph's non-executable encodings (msgpack, JSON, raw
bytes): an archive that carries a pickled blob is refused, never loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

CHECKPOINT_TABLES: tuple[str, ...] = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
# LangGraph's serializer type tags that decode without executing code.
SAFE_BLOB_TYPES = frozenset({"msgpack", "json", "bytes", "bytearray", "null", "empty"})


class ArchiveError(ValueError):
    """Rows that cannot be exported or imported as asked."""


@dataclass(frozen=True)
class RunRows:
    run: dict[str, Any]
    snapshot: dict[str, Any] | None  # provider, as_of, sha256 (the payload travels separately)
    snapshot_payload: bytes | None
    llm_calls: list[dict[str, Any]]
    checkpoints: dict[str, list[dict[str, Any]]]  # table -> rows (bytea as "\\x..." hex)


def _check_blob_types(checkpoints: dict[str, list[dict[str, Any]]]) -> None:
    for table in ("checkpoint_blobs", "checkpoint_writes"):
        for row in checkpoints.get(table, []):
            kind = row.get("type")
            if kind is not None and kind not in SAFE_BLOB_TYPES:
                raise ArchiveError(f"{table} holds a {kind!r} blob; only {', '.join(sorted(SAFE_BLOB_TYPES))} "
                                   "are accepted (nothing pickled is loaded)")


async def export_rows(pool: asyncpg.Pool, run_id: str) -> RunRows:
    async with pool.acquire() as conn:
        run = await conn.fetchval("SELECT to_jsonb(r) FROM runs r WHERE run_id = $1", run_id)
        if run is None:
            raise ArchiveError(f"no run {run_id}")
        snap = await conn.fetchrow(
            "SELECT to_jsonb(s) - 'payload' AS meta, payload FROM market_snapshots s WHERE run_id = $1", run_id)
        calls = await conn.fetchval(
            "SELECT COALESCE(jsonb_agg(to_jsonb(c) - 'id' ORDER BY c.id), '[]') FROM llm_calls c WHERE run_id = $1",
            run_id)
        checkpoints = {}
        for table in CHECKPOINT_TABLES:
            checkpoints[table] = await conn.fetchval(
                f"SELECT COALESCE(jsonb_agg(to_jsonb(t)), '[]') FROM {table} t WHERE thread_id = $1", run_id)
    _check_blob_types(checkpoints)
    return RunRows(run=run, snapshot=snap["meta"] if snap else None,
                   snapshot_payload=bytes(snap["payload"]) if snap else None, llm_calls=calls, checkpoints=checkpoints)


async def _columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1"
        " ORDER BY ordinal_position", table)
    return [r["column_name"] for r in rows]


async def _insert(conn: asyncpg.Connection, table: str, rows: list[dict[str, Any]], skip: tuple[str, ...] = ()) -> int:
    """Insert `rows` (JSON objects keyed by column) into `table`; columns the target lacks are an
    error (the archive came from a newer schema), columns the rows lack take their defaults."""
    if not rows:
        return 0
    target = await _columns(conn, table)
    given = {k for row in rows for k in row} - set(skip)
    unknown = sorted(given - set(target))
    if unknown:
        raise ArchiveError(f"{table} here has no column(s) {', '.join(unknown)}: the archive comes from a newer "
                           "schema; upgrade this installation first")
    cols = ", ".join(f'"{c}"' for c in target if c in given)
    # `table` is one of our fixed names, never input; the rows are one bound JSON parameter.
    status = await conn.execute(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
        " WITH ORDINALITY ORDER BY ordinality ON CONFLICT DO NOTHING", rows)
    return int(status.rsplit(" ", 1)[-1])


async def import_rows(pool: asyncpg.Pool, rows: RunRows) -> bool:
    """Write an exported run into this database in one transaction. Returns False when the very same
    run (same id, same snapshot hash, same configuration) is already here; a different run under the
    same id is an `ArchiveError`. A parent run that is not here is dropped from the row."""
    _check_blob_types(rows.checkpoints)
    run = dict(rows.run)
    run_id = run.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ArchiveError("the archive's run row has no run_id")
    async with pool.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(
            "SELECT r.config, s.sha256 FROM runs r LEFT JOIN market_snapshots s USING (run_id) WHERE r.run_id = $1",
            run_id)
        if existing is not None:
            same = existing["config"] == run.get("config") and \
                existing["sha256"] == (rows.snapshot or {}).get("sha256")
            if same:
                return False
            raise ArchiveError(f"this database already holds a different run {run_id} (other configuration or "
                               "market snapshot); import it into another database")
        parent = run.get("parent_run_id")
        if parent and not await conn.fetchval("SELECT 1 FROM runs WHERE run_id = $1", parent):
            run["parent_run_id"] = None
        await _insert(conn, "runs", [run])
        if rows.snapshot is not None and rows.snapshot_payload is not None:
            await conn.execute(
                "INSERT INTO market_snapshots (run_id, provider, as_of, sha256, payload) "
                "VALUES ($1, $2, $3, $4, $5)",
                run_id, rows.snapshot["provider"], datetime.fromisoformat(rows.snapshot["as_of"]), rows.snapshot["sha256"],
                rows.snapshot_payload)
        for call in rows.llm_calls:
            if call.get("run_id") != run_id:
                raise ArchiveError(f"an LLM call in the archive belongs to {call.get('run_id')!r}, not {run_id}")
        await _insert(conn, "llm_calls", rows.llm_calls, skip=("id",))
        for table in CHECKPOINT_TABLES:
            table_rows = rows.checkpoints.get(table, [])
            if any(r.get("thread_id") != run_id for r in table_rows):
                raise ArchiveError(f"{table} in the archive holds another thread than {run_id}")
            await _insert(conn, table, table_rows)
    return True


async def copy_thread(pool: asyncpg.Pool, source: str, target: str) -> int:
    """Copy every checkpoint row of thread `source` to thread `target` (already copied rows are kept);
    returns the number of checkpoints the target holds. Blobs are copied as stored, not decoded."""
    async with pool.acquire() as conn, conn.transaction():
        for table in CHECKPOINT_TABLES:
            cols = [c for c in await _columns(conn, table) if c != "thread_id"]
            listed = ", ".join(f'"{c}"' for c in cols)
            # `table` is one of our fixed names and the columns come from the catalog, never input.
            await conn.execute(
                f"INSERT INTO {table} (thread_id, {listed}) SELECT $2, {listed} FROM {table} WHERE thread_id = $1"
                " ON CONFLICT DO NOTHING", source, target)
        return await conn.fetchval("SELECT count(*) FROM checkpoints WHERE thread_id = $1", target)
