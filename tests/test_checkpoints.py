"""The checkpointer (`storage.checkpoints.CheckpointSaver`) on the embedded Postgres: task writes
that arrive together are stored together, as exactly the rows LangGraph's own saver stores, and
each call returns only once its own rows are in."""
from __future__ import annotations

import asyncio

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from domain.decision import NodeTiming
from storage.checkpoints import CheckpointSaver
from storage.serde import checkpoint_serializer


def checkpoint_config(thread_id: str) -> dict:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": "", "checkpoint_id": "1f0-checkpoint"}}


def task_writes(n: int) -> list[tuple[str, object]]:
    """What an analyst task writes (its timing), and on some tasks an error (LangGraph's upsert channel)."""
    from datetime import datetime, timezone

    writes = [("node_timings", [NodeTiming(node="flow", ticker=f"T{n}", started_at=datetime(2026, 1, 5, tzinfo=timezone.utc),
                                           duration_ms=float(n))]), ("signals", [f"signal {n}"])]
    return writes + ([("__error__", f"task {n} failed")] if n % 7 == 0 else [])


async def stored_rows(db, thread_id: str) -> list[tuple]:
    rows = await db.pool.fetch(
        """SELECT checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob
           FROM checkpoint_writes WHERE thread_id = $1 ORDER BY task_id, idx""", thread_id)
    return [tuple(r) for r in rows]


class CountingSaver(CheckpointSaver):
    """Counts the batches stored (each one pipeline, one round trip)."""

    batches = 0

    async def _store(self, batch):
        self.batches += 1
        await super()._store(batch)


async def test_concurrent_task_writes_are_stored_together_as_langgraphs_saver_stores_them(db):
    ours = CountingSaver(db.checkpoint_pool, serde=checkpoint_serializer())
    theirs = AsyncPostgresSaver(db.checkpoint_pool, serde=checkpoint_serializer())
    tasks = 40
    missing_on_return = []

    async def one_task(n: int) -> None:
        await ours.aput_writes(checkpoint_config("ours"), task_writes(n), f"task-{n:02d}", "~__pregel_push")
        # The call has returned: its rows are in the database.
        stored = await db.pool.fetchval(
            "SELECT count(*) FROM checkpoint_writes WHERE thread_id = 'ours' AND task_id = $1", f"task-{n:02d}")
        if stored != len(task_writes(n)):
            missing_on_return.append(n)

    await asyncio.gather(*(one_task(n) for n in range(tasks)))
    for n in range(tasks):
        await theirs.aput_writes(checkpoint_config("theirs"), task_writes(n), f"task-{n:02d}", "~__pregel_push")

    assert missing_on_return == []
    assert await stored_rows(db, "ours") == await stored_rows(db, "theirs")
    assert len(await stored_rows(db, "ours")) == sum(len(task_writes(n)) for n in range(tasks))
    assert 1 <= ours.batches < tasks / 4, ours.batches  # those queued behind the first batch went in a few more

    # Storing a task's writes again (a task re-run after a crash) changes nothing, as with LangGraph's.
    await asyncio.gather(*(ours.aput_writes(checkpoint_config("ours"), task_writes(n), f"task-{n:02d}", "~__pregel_push")
                           for n in range(3)))
    assert await stored_rows(db, "ours") == await stored_rows(db, "theirs")


async def test_the_database_checkpointer_is_the_batching_one(db):
    assert isinstance(db.checkpointer, CheckpointSaver)
