"""The checkpoint serializer: our value types are the only custom classes a checkpoint may restore.

The graph's state holds only `domain` types (decision models, `Order`s); storage owns how they are
written, so this module imports nothing above `domain`."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel

import domain.decision
import domain.orders
from domain.decision import OptionLeg
from domain.orders import Order

# Checkpoints written while the run's identity and node timings were defined in `graph.state` name
# them there (the module still imports both under those names): restored as they were.
_MOVED_TO_DOMAIN = [("graph.state", "RunInfo"), ("graph.state", "NodeTiming")]


def _state_types() -> list[tuple[str, str]]:
    """The pydantic models of the decision types and the order's dataclasses (the state's `staged`
    holds `domain.orders.Order`s with their `ComboLeg`s)."""
    allowed = list(_MOVED_TO_DOMAIN)
    for module in (domain.decision, domain.orders):
        for name, obj in vars(module).items():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            if issubclass(obj, BaseModel) or dataclasses.is_dataclass(obj):
                allowed.append((module.__name__, name))
    return allowed


# Checkpoints written before an order had one type hold `domain.decision.StagedOrder`s (a class that
# no longer exists), which restore as their field dicts; they are read back as the orders they were,
# so a run staged before the change can still be resumed, replayed and compared.
_STAGED_ORDER_FIELDS = frozenset({"order_id", "idempotency_key", "run_id", "ticker", "structure", "legs",
                                  "quantity", "limit_price", "state", "requires_acknowledgement", "created_at"})


def _staged_order(fields: dict[str, Any]) -> Order:
    legs = [OptionLeg.model_validate(leg).model_dump(mode="json") for leg in fields["legs"]]
    return Order(order_id=fields["order_id"], ticker=fields["ticker"], legs=tuple(legs), quantity=fields["quantity"],
                 limit_price=fields["limit_price"], run_id=fields["run_id"], idempotency_key=fields["idempotency_key"],
                 structure=fields["structure"], state=fields["state"],
                 requires_acknowledgement=fields["requires_acknowledgement"], proposal={"legs": legs},
                 created_at=fields["created_at"], updated_at=fields["created_at"])


class CheckpointSerializer(JsonPlusSerializer):
    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        value = super().loads_typed(data)
        if isinstance(value, list) and value and all(
                isinstance(item, dict) and item.keys() == _STAGED_ORDER_FIELDS for item in value):
            return [_staged_order(item) for item in value]
        return value


def checkpoint_serializer() -> JsonPlusSerializer:
    return CheckpointSerializer(allowed_msgpack_modules=_state_types())
