"""The checkpoint serializer: our state types are the only custom classes a checkpoint may restore."""
from __future__ import annotations

import dataclasses
import inspect

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

import domain.decision
import domain.orders
import graph.state


def _state_types() -> list[tuple[str, str]]:
    """The pydantic models of the decision types and the state, and the order's dataclasses (the
    state's `staged` holds `domain.orders.Order`s with their `ComboLeg`s)."""
    allowed = []
    for module in (domain.decision, domain.orders, graph.state):
        for name, obj in vars(module).items():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            if issubclass(obj, BaseModel) or dataclasses.is_dataclass(obj):
                allowed.append((module.__name__, name))
    return allowed


def checkpoint_serializer() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_state_types())
