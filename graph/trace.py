"""A run's trace from its checkpoints: which node(s) ran at each step, how long it took, what it wrote.

The checkpoint history of a thread is a chain (each checkpoint names its parent); a step is the
move from one checkpoint to the next, made by the tasks the earlier one scheduled. LangGraph keeps
each finished task's writes with the checkpoint it started from, so what a node wrote is read
exactly, not inferred from a diff of states.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from graph.graph import compiled_graph
from graph.state import DecisionState
from storage.database import Database


class TraceError(LookupError):
    """No such run, or no such step in its trace."""


def _appended_channels() -> frozenset[str]:
    """State keys with a reducer (`Annotated[..., operator.add]`): a write adds to them."""
    hints = typing.get_type_hints(DecisionState, include_extras=True)
    return frozenset(k for k, h in hints.items() if typing.get_origin(h) is typing.Annotated)


APPENDED = _appended_channels()


@dataclass(frozen=True)
class Step:
    step: int  # LangGraph's step number of the checkpoint this step's writes went into
    nodes: list[str]  # the nodes that ran, each once, in task order
    tasks: int  # how many tasks ran (analysts: one per ticker and analyst)
    status: str  # "done" | "interrupted" (waiting for approval) | "failed" | "pending" | "update"
    started_at: str  # ISO 8601, UTC: when the checkpoint before the step was written
    duration_ms: float | None  # the step's wall time: from that checkpoint to the next; None when unfinished
    node_ms: dict[str, float]  # per node, wall time from its first task's start to its last task's end
    task_ms: dict[str, float]  # per node, its tasks' own times added up (parallel tasks overlap: > wall)
    node_tasks: dict[str, int]  # per node, how many of its tasks reported a time
    writes: list[str]  # per channel written: "signals +12" (appended), "verdicts 3" (replaced), "context"
    checkpoint_id: str  # the checkpoint holding the state after this step (before it, when unfinished)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def json_safe(value: Any) -> Any:
    """Plain JSON values: models dumped, Decimals as strings, datetimes ISO 8601, NaN/inf as null."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):  # domain.orders types (an Order in `staged`)
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize_writes(results: list[dict[str, Any] | None]) -> list[str]:
    """One short line per channel the tasks wrote (their writes merged)."""
    merged: dict[str, list[Any]] = {}
    for result in results:
        for channel, value in (result or {}).items():
            if channel != "node_timings":
                merged.setdefault(channel, []).append(value)
    lines = []
    for channel, values in merged.items():
        if channel in APPENDED:
            lines.append(f"{channel} +{sum(len(v) for v in values)}")
        elif isinstance(values[-1], (list, tuple, dict)):
            lines.append(f"{channel} {len(values[-1])}")
        else:
            lines.append(channel)
    return lines


def _timings(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Per node: the wall time its tasks spanned (tasks of a step run in parallel, so their times
    are not added up for it), their own times added up, and how many there were."""
    spans: dict[str, list[tuple[datetime, datetime, float]]] = {}
    for result in results:
        for t in (result or {}).get("node_timings", []):
            end = t.started_at + timedelta(milliseconds=t.duration_ms)
            spans.setdefault(t.node, []).append((t.started_at, end, t.duration_ms))
    return {
        "node_ms": {k: round((max(e for _, e, _ in v) - min(b for b, _, _ in v)).total_seconds() * 1000.0, 3)
                    for k, v in spans.items()},
        "task_ms": {k: round(sum(d for _, _, d in v), 3) for k, v in spans.items()},
        "node_tasks": {k: len(v) for k, v in spans.items()},
    }


def _distinct(names) -> list[str]:
    return list(dict.fromkeys(names))


def _cid(snapshot) -> str:
    return snapshot.config["configurable"]["checkpoint_id"]


async def _line(db: Database, run_id: str) -> list:
    """The run's checkpoints from the first to the current one, following parent links (a thread
    that was branched lists only the branch the run stands on)."""
    app = compiled_graph(db.checkpointer)
    history = [s async for s in app.aget_state_history({"configurable": {"thread_id": run_id}})]
    if not history:
        raise TraceError(f"run {run_id} has no checkpoints")
    by_id = {_cid(s): s for s in history}
    line, current = [], history[0]
    while current is not None:
        line.append(current)
        parent = current.parent_config
        current = by_id.get(parent["configurable"]["checkpoint_id"]) if parent else None
    return line[::-1]


def _ms_between(a: str, b: str) -> float:
    return round((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000.0, 3)


async def run_steps(db: Database, run_id: str) -> list[Step]:
    """The run's steps, oldest first (step 0 is the input: `__start__` writing `run`)."""
    return _steps(await _line(db, run_id))


def _steps(line: list) -> list[Step]:
    steps: list[Step] = []
    first = line[0]
    if first.metadata.get("source") == "update":  # a fork: its first state was written, not computed
        steps.append(Step(step=first.metadata.get("step", 0), nodes=["(state copied by update)"], tasks=0,
                          status="update", started_at=first.created_at, duration_ms=None, **_timings([]),
                          writes=summarize_writes([dict(first.values)]), checkpoint_id=_cid(first)))
    for before, after in zip(line, line[1:]):
        results = [t.result for t in before.tasks]
        steps.append(Step(
            step=after.metadata.get("step", -1), nodes=_distinct(t.name for t in before.tasks), tasks=len(before.tasks),
            status="done", started_at=before.created_at, duration_ms=_ms_between(before.created_at, after.created_at),
            **_timings(results), writes=summarize_writes(results), checkpoint_id=_cid(after),
        ))
    last = line[-1]
    if last.tasks:  # scheduled but not finished: waiting at an interrupt, failed, or not yet run
        errors = [f"{t.name}: {t.error}" for t in last.tasks if t.error]
        status = "interrupted" if any(t.interrupts for t in last.tasks) else ("failed" if errors else "pending")
        done = [t.result for t in last.tasks if t.result is not None]
        steps.append(Step(
            step=last.metadata.get("step", -1) + 1, nodes=_distinct(t.name for t in last.tasks),
            tasks=len(last.tasks), status=status, started_at=last.created_at, duration_ms=None,
            **_timings(done), writes=summarize_writes(done), checkpoint_id=_cid(last), errors=errors,
        ))
    return steps


def _state_of(run_id: str, step: Step, snapshot) -> dict[str, Any]:
    return {
        "run_id": run_id, "step": step.step, "status": step.status, "finished": step.status in ("done", "update"),
        "checkpoint_id": step.checkpoint_id, "created_at": snapshot.created_at, "next": list(snapshot.next),
        "values": json_safe(dict(snapshot.values)),
    }


async def steps_with_states(db: Database, run_id: str) -> list[tuple[Step, dict[str, Any]]]:
    """Every step with the state `state_at_step` gives for it, read in one pass."""
    line = await _line(db, run_id)
    by_id = {_cid(s): s for s in line}
    return [(step, _state_of(run_id, step, by_id[step.checkpoint_id])) for step in _steps(line)]


async def state_at_step(db: Database, run_id: str, n: int) -> dict[str, Any]:
    """The full state after step `n` (numbered as `run_steps` lists them, every one of which is
    readable here), JSON-safe: {run_id, step, status, finished, checkpoint_id, created_at, next, values}.
    A step that has not finished (waiting for approval, failed, pending) has no state after it: its
    `values` are the state it started from, and `finished` is false."""
    line = await _line(db, run_id)
    steps = _steps(line)
    found = [s for s in steps if s.step == n]
    if not steps:
        raise TraceError(f"run {run_id} has not taken a step yet")
    if not found:
        raise TraceError(f"run {run_id} has no step {n}; its steps are {steps[0].step}..{steps[-1].step}")
    step = found[-1]
    return _state_of(run_id, step, next(s for s in line if _cid(s) == step.checkpoint_id))
