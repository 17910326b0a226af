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
