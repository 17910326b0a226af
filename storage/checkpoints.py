"""The LangGraph checkpointer: LangGraph's Postgres saver, storing task writes that arrive together
in one round trip.

A decision run's analyst superstep is 4 x N tasks, and each finished task stores its writes
(`aput_writes`): with 20 tickers, 80 pipelines a run, each waiting for the one before it (the saver
runs one statement batch at a time, under its lock). Here the writes that queue up while a batch is
being stored go together in the next one. Each call still returns only once its own rows are
stored (or raises what storing its batch raised: a lost connection fails every write in it, as
it would have failed each of them alone), and the rows are exactly the ones LangGraph's saver
writes; only their round trips are shared.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.postgres.base import WRITES_IDX_MAP


class _WriteBatch:
    """Writes waiting to be stored together: rows by statement (an upsert for LangGraph's special
    channels, an insert-or-nothing for the others, as the saver chooses per call)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {}
        self.stored: asyncio.Task | None = None


class CheckpointSaver(AsyncPostgresSaver):
    _batch: _WriteBatch | None = None

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        query = (self.UPSERT_CHECKPOINT_WRITES_SQL if all(w[0] in WRITES_IDX_MAP for w in writes)
                 else self.INSERT_CHECKPOINT_WRITES_SQL)
        conf = config["configurable"]
        # Serialized here, not in a worker thread as the parent does: a task's writes are small, and
        # the hop to a thread and back cost more than the encoding.
        rows = self._dump_writes(conf["thread_id"], conf["checkpoint_ns"], conf["checkpoint_id"], task_id,
                                 task_path, writes)
        batch = self._batch
        if batch is None:
            batch = self._batch = _WriteBatch()
            batch.stored = asyncio.ensure_future(self._store(batch))
        batch.rows.setdefault(query, []).extend(rows)
        # Shielded: a caller cancelled while it waits does not cancel the others' writes.
        await asyncio.shield(batch.stored)

    async def _store(self, batch: _WriteBatch) -> None:
        try:
            async with self._cursor(pipeline=True) as cur:
                # The saver's lock is ours now: writes arriving from here on start the next batch.
                self._close(batch)
                for query, rows in batch.rows.items():
                    await cur.executemany(query, rows)
        finally:
            self._close(batch)  # a batch that failed before it got the lock takes no more writes

    def _close(self, batch: _WriteBatch) -> None:
        if self._batch is batch:
            self._batch = None
