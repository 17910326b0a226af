"""The decision graph for LangGraph Studio / `langgraph dev` (see `langgraph.json` at the repo root).

Studio runs graphs on its own server with its own checkpointer, so the graph is compiled here
without ours. Its nodes still need a `RunDeps` runtime context (database, provider, limits): Studio
is for looking at the wiring and at recorded threads; decisions are run by `hedgegraph run`.
"""
from __future__ import annotations

from langgraph.graph.state import CompiledStateGraph

from graph.graph import build_graph


def make_graph() -> CompiledStateGraph:
    return build_graph().compile()
