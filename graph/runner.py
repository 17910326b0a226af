"""Run the decision graph for one schedule slot: exactly once, resumable, one writer at a time.

The run id is derived from the slot (watchlist, New York date and time) and the inputs that make
the run reproducible (tickers, seed, provider — whose name says which data files it read, when it
reads files), and it is also the LangGraph thread id. A
Postgres advisory lock admits one writer per run; a run that failed or whose process died resumes
from its last checkpoint; a completed run is never executed again.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from langgraph.types import Command

from config.settings import DecisionConfig
from graph.deps import MarketCache, RunDeps, registered
from graph.graph import compiled_graph
from domain.decision import AccountState, Position
from domain.orders import Order
from storage.database import CONNECTION_ERRORS, Database, DatabaseUnavailable, LockBusy, is_connection_error
from storage.orders import OrderRepository
from storage.runs import RunRecord, RunRepository
from tools.chain import NEW_YORK
from tools.providers.base import MarketDataProvider


# A run in one of these states has done its part: running its slot again adds nothing. A run
# awaiting approval continues only through decisions (service.approvals), never by re-running.
FINISHED = ("completed", "awaiting_approval")


class RunBusy(RuntimeError):
    """Another process is executing this run right now."""


class RunFailed(RuntimeError):
    def __init__(self, run_id: str, cause: BaseException):
        super().__init__(f"run {run_id} failed: {type(cause).__name__}: {cause}")
        self.run_id = run_id
        self.cause = cause


@dataclass(frozen=True)
class RunRequest:
    watchlist: str
    tickers: list[str]
    as_of: datetime
    seed: int
    provider: str
    config: DecisionConfig = field(default_factory=DecisionConfig)
    mode: str = "live"
    debater: str = "deterministic"  # or "llm:<model>": the same slot debated by an LLM is another run
    # How to rebuild the market (recorded, not part of the id: the provider's name identifies its data).
    market_source: dict | None = None

    def __post_init__(self) -> None:
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        if not self.tickers:
            raise ValueError("a run needs at least one ticker")
        if len(set(self.tickers)) != len(self.tickers):
            raise ValueError("tickers must be unique")

    @property
    def slot_key(self) -> str:
        local = self.as_of.astimezone(NEW_YORK)
        return f"{self.watchlist}|{local:%Y-%m-%d}|{local:%H:%M}"

    @property
    def run_id(self) -> str:
        local = self.as_of.astimezone(NEW_YORK)
        parts = [self.slot_key, ",".join(self.tickers), str(self.seed), self.provider, self.mode]
        if self.debater != "deterministic":  # so deterministic runs keep the ids they always had
            parts.append(self.debater)
        inputs = "|".join(parts)
        digest = hashlib.sha256(inputs.encode()).hexdigest()[:10]
        return f"{self.watchlist}-{local:%Y%m%d-%H%M}-{digest}"


@dataclass(frozen=True)
class RunOutcome:
    run: RunRecord
    executed: bool  # False when the run had already completed: nothing was added
    resumed: bool
    orders: list[Order]
    state: dict


def make_deps(db: Database, record: RunRecord, provider: MarketDataProvider, *, account: AccountState,
              positions: list[Position] | None = None, debater=None, risk_matrix=None,
              market: MarketCache | None = None, broker=None, now: Callable[[], datetime] | None = None,
              memory=None) -> RunDeps:
    from agents.debate import DeterministicDebater
    from risk.limits import load_risk_matrix

    extra = {"now": now} if now is not None else {}
    return RunDeps(
        db=db, provider=provider, debater=debater or DeterministicDebater(),
        # The recorded configuration wins: a resumed run continues as it started.
        decision=DecisionConfig.model_validate(record.config),
        risk_matrix=risk_matrix or load_risk_matrix(), account=account, positions=list(positions or []),
        market=market or MarketCache(db), clock=lambda: record.as_of, broker=broker, memory=memory, **extra,
    )


async def execute_run(
    db: Database,
    request: RunRequest,
    provider: MarketDataProvider,
    *,
    account: AccountState,
    on_node: Callable[[str, dict], None] | None = None,
    **dep_options,
) -> RunOutcome:
    """Execute (or resume, or just report) the run for `request`.

    `dep_options` go to `make_deps` (debater, positions, broker, now, ...). `on_node(name, update)`
    is called as each node finishes (progress displays). The run stops at `await_approval` when it
    staged orders: its status is then `awaiting_approval` and decisions continue it (`resume_run`)."""
    runs, orders = RunRepository(db.pool), OrderRepository(db.pool)
    run_id = request.run_id
    record = await runs.create_if_absent(
        run_id=run_id, slot_key=request.slot_key, watchlist=request.watchlist, as_of=request.as_of,
        tickers=request.tickers, seed=request.seed, provider=request.provider,
        config=request.config.model_dump(mode="json"), mode=request.mode, debater=request.debater,
        market_source=request.market_source,
    )
    app = compiled_graph(db.checkpointer)
    thread = {"configurable": {"thread_id": run_id}}
    if record.status in FINISHED:
        return await _outcome(runs, orders, app, thread, run_id, executed=False, resumed=False)
    try:
        async with db.advisory_lock(f"run:{run_id}"):
            record = await runs.get(run_id)
            if record.status in FINISHED:  # finished by another process while we waited
                return await _outcome(runs, orders, app, thread, run_id, executed=False, resumed=False)
            deps = make_deps(db, record, provider, account=account, **dep_options)
            await runs.mark_started(run_id)
            # A run without a checkpoint starts from the top; only one started before (it failed, or
            # its process died) has a checkpoint to read (one query instead of loading it).
            checkpoint = await app.aget_state(thread) if await runs.has_graph(run_id) else None
            resumed = checkpoint is not None and bool(checkpoint.values)
            if not resumed:
                final = await _advance(app, runs, {"run": record.info()}, thread, deps, on_node)
            elif checkpoint.next or checkpoint.tasks:
                # Not at the end: continue from the last checkpoint. (A step whose tasks all wrote
                # but whose next checkpoint was never saved shows no `next`, only its tasks.)
                final = await _advance(app, runs, None, thread, deps, on_node)
            else:
                final = checkpoint.values
                await runs.mark_finished(run_id, "completed")
            return await _outcome(runs, orders, app, thread, run_id, executed=True, resumed=resumed, state=final)
    except LockBusy as exc:
        raise RunBusy(f"run {run_id} is being executed by another process") from exc


async def resume_run(db: Database, run_id: str, deps: RunDeps, resume: Any, wait_seconds: float = 30.0) -> None:
    """Continue a run paused at `await_approval` with `Command(resume=resume)` (one writer at a time:
    concurrent decisions on one run queue on the run's lock). A run already completed (another
    resume finished it while this one waited) is left as it is."""
    runs = RunRepository(db.pool)
    app = compiled_graph(db.checkpointer)
    thread = {"configurable": {"thread_id": run_id}}
    try:
        async with db.advisory_lock(f"run:{run_id}", wait_seconds=wait_seconds):
            # `completed` is recorded only once the graph has ended: nothing to load or resume.
            record = await runs.get(run_id)
            if record is not None and record.status == "completed":
                return
            if not await runs.paused_at_interrupt(run_id):  # else: the checkpoint says where it stands
                stopped = await app.aget_state(thread)
                if not stopped.next and not stopped.tasks:  # the graph already ended: the run is complete
                    if stopped.values:
                        await runs.mark_finished(run_id, "completed")
                    return
            await _advance(app, runs, Command(resume=resume), thread, deps, None)
    except LockBusy as exc:
        raise RunBusy(f"run {run_id} is being executed by another process") from exc


async def _advance(app, runs: RunRepository, graph_input, thread, deps: RunDeps, on_node) -> dict:
    """Drive the graph until it ends or pauses, and record where the run stands. Returns the
    graph's state values there."""
    run_id = thread["configurable"]["thread_id"]
    try:
        final, paused = await _drive(app, graph_input, thread, deps, on_node)
        if final is None:  # nothing ran, so nothing was streamed: the checkpoint says where it stands
            snapshot = await app.aget_state(thread)
            final, paused = snapshot.values, bool(snapshot.next)
        await runs.record_timings(run_id, [
            (t.node, t.ticker, t.started_at, t.duration_ms) for t in final.get("node_timings", [])
        ])
    except Exception as exc:
        if is_connection_error(exc):
            exc = DatabaseUnavailable(f"the database connection was lost mid-run ({type(exc).__name__}: {exc}); "
                                      "the run resumes from its last checkpoint when run again")
        with contextlib.suppress(*CONNECTION_ERRORS):  # with the database gone, there is no row to mark
            await runs.mark_finished(run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
        raise RunFailed(run_id, exc) from exc
    if paused:
        await runs.set_status(run_id, "awaiting_approval")
    else:
        await runs.mark_finished(run_id, "completed")
    return final


# The key under which a stream reports that the graph paused at an `interrupt`, in the `updates`
# chunk and in the state (`values`) chunk that comes with it.
INTERRUPTED = "__interrupt__"


async def _drive(app, graph_input, thread, deps: RunDeps, on_node) -> tuple[dict | None, bool]:
    """Run the graph; returns its state values where it stopped (the last `values` chunk: what
    reading the checkpoint back would give; None when no step ran) and whether it stopped at an
    `interrupt` (else it ended: the graph pauses nowhere else)."""
    values, paused = None, False
    with registered(deps) as context:  # the graph gets configuration; its nodes find these live deps by key
        async for mode, chunk in app.astream(graph_input, thread, context=context, stream_mode=["updates", "values"]):
            if mode == "values":
                values = chunk
                continue
            paused = paused or INTERRUPTED in chunk
            if on_node is not None:
                for node, update in chunk.items():
                    on_node(node, update or {})
    if values is not None and INTERRUPTED in values:
        values = {k: v for k, v in values.items() if k != INTERRUPTED}
    return values, paused


async def _outcome(runs, orders, app, thread, run_id, *, executed: bool, resumed: bool, state=None) -> RunOutcome:
    """`state`: the graph's state values when the caller has them (else they are read)."""
    if state is None:
        state = (await app.aget_state(thread)).values
    return RunOutcome(
        run=await runs.get(run_id), executed=executed, resumed=resumed,
        orders=await orders.list(run_id=run_id), state=dict(state),
    )
