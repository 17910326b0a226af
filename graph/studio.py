"""The decision graph for LangGraph Studio / `langgraph dev` (see `langgraph.json` at the repo root).

The server compiles the graph with its checkpointer: `studio_checkpointer` is ours (the Postgres
checkpoints of the database in `DATABASE_URL`, or the embedded one), so a recorded run is a
thread there under its run id, and a run started from Studio is checkpointed beside them. The
nodes build what they need from the runtime context Studio sends (`graph.deps.RunContext`:
configuration only — database URL, provider and seed, debater, decision settings); with none,
the configured database, the simulated market and the deterministic debater. A Studio run stages
nothing it could transmit: no broker is attached.
"""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from graph.graph import build_graph


def make_graph() -> CompiledStateGraph:
    return build_graph().compile()


@contextlib.asynccontextmanager
async def studio_checkpointer() -> AsyncIterator[BaseCheckpointSaver]:
    """Our Postgres checkpointer, for as long as the Studio server runs."""
    from config.settings import Settings
    from storage.database import connect, resolve_url

    url, server = resolve_url(Settings())
    db = await connect(url, server)
    try:
        yield db.checkpointer
    finally:
        await db.close()


STUDIO_THREADS = uuid.UUID("5b0c3f63-8a57-4e0c-9a55-3d1f4a1b7e21")  # names a recorded run's Studio thread


def studio_thread_id(run_id: str) -> str:
    """The Studio thread id of a recorded run: Studio's server takes only UUIDs, our run ids are not."""
    return str(uuid.uuid5(STUDIO_THREADS, run_id))


async def studio_thread(db, run_id: str) -> tuple[str, int]:
    """Make `run_id`'s recorded checkpoints readable as a Studio thread; returns (thread id, checkpoints)."""
    from storage.run_archive import copy_thread

    thread_id = studio_thread_id(run_id)
    copied = await copy_thread(db.pool, run_id, thread_id)
    if not copied:
        raise LookupError(f"run {run_id} has no checkpoints")
    return thread_id, copied
