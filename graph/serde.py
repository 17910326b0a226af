"""The checkpoint serializer: our state types are the only custom classes a checkpoint may restore."""
from __future__ import annotations

import inspect

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

import domain.decision
import graph.state


def _state_types() -> list[tuple[str, str]]:
    allowed = []
    for module in (domain.decision, graph.state):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__:
                allowed.append((module.__name__, name))
    return allowed


def checkpoint_serializer() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_state_types())
