"""What nodes are run with: the live `RunDeps` (database, provider, debater, limits) and the
graph's runtime context `RunContext`, configuration only, from which they are found or built.

None of this is checkpointed: it is the environment of a run, rebuilt by the runner on resume.
The market cache keeps the run's recorded snapshot and per-ticker chain analyses in memory so the
analysts and the strategy selector of a ticker share one implied-vol solve and surface fit; after a crash it reloads the recording
from Postgres, never from the provider (which would answer with a later market).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.clock import wall_clock
from config.settings import DecisionConfig
from domain.decision import AccountState, Position
from storage.database import Database
from storage.runs import RunRepository
from tools.providers.base import MarketDataProvider, MarketSnapshot


class MissingSnapshot(RuntimeError):
    pass


@dataclass
class MarketCache:
    db: Database
    _snapshots: dict[str, MarketSnapshot] = field(default_factory=dict)
    _derived: dict[tuple, asyncio.Future] = field(default_factory=dict)
    _load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def remember(self, run_id: str, snapshot: MarketSnapshot) -> None:
        self._snapshots[run_id] = snapshot

    async def snapshot(self, run_id: str) -> MarketSnapshot:
        if run_id in self._snapshots:
            return self._snapshots[run_id]
        async with self._load_lock:
            if run_id not in self._snapshots:
                loaded = await RunRepository(self.db.pool).load_snapshot(run_id)
                if loaded is None:
                    raise MissingSnapshot(f"run {run_id} has no recorded market snapshot")
                self._snapshots[run_id] = loaded[0]
        return self._snapshots[run_id]

    async def derived(self, key: tuple, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Compute `key` once per process: concurrent askers await the same task."""
        task = self._derived.get(key)
        if task is None:
            task = self._derived[key] = asyncio.ensure_future(compute())
        return await task


@dataclass
class RunDeps:
    db: Database
    provider: MarketDataProvider
    debater: Any  # agents.debate.Debater
    decision: DecisionConfig
    risk_matrix: Any  # risk.limits.RiskMatrix
    account: AccountState
    positions: list[Position]
    market: MarketCache
    clock: Callable[[], datetime]  # the decision time (the run's as-of)
    broker: Any = None  # brokers.base.Broker; None: nothing can be transmitted (sandbox)
    now: Callable[[], datetime] = wall_clock  # wall clock (HEDGEGRAPH_NOW in paper mode): approvals, expiry
    memory: Any = None  # memory.store.MemoryStore; None: no recall, no reflection


# --- the runtime context: configuration only ---------------------------------------------------------

@dataclass(kw_only=True)
class RunContext:
    """The graph's runtime context (`context_schema`): plain, serializable configuration, from which
    the live dependencies are built (`run_deps`). LangGraph Studio and `langgraph dev` send it as
    JSON; a run started there executes against the database named here.

    `deps_key` is how the runner hands a node the dependencies it already built for a run: they are
    registered in this process under that key for as long as the run's graph is driven."""

    deps_key: str | None = None  # set by the runner; not for Studio
    database_url: str | None = None  # None: DATABASE_URL, or the embedded database
    provider: str = "simulated"  # the market the run asks (the simulated market is the one built from settings)
    seed: int | None = None  # None: the run's own seed
    debater: str = "deterministic"  # or "llm" (the configured OpenAI-compatible endpoint)
    decision: dict[str, Any] = field(default_factory=dict)  # DecisionConfig settings over the defaults


class ContextError(ValueError):
    """A runtime context that names no registered dependencies or asks for what cannot be built."""


_REGISTERED: dict[str, RunDeps] = {}
_BUILT: dict[tuple, RunDeps] = {}  # per process: a Studio run's dependencies, built once per run
_DATABASES: dict[str, Database] = {}
_BUILD_LOCKS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()
_MAX_BUILT = 64


@contextlib.contextmanager
def registered(deps: RunDeps) -> Iterator[RunContext]:
    """Register a run's live dependencies in this process; the context names them by key."""
    key = uuid.uuid4().hex
    _REGISTERED[key] = deps
    try:
        yield RunContext(deps_key=key)
    finally:
        _REGISTERED.pop(key, None)


def _as_context(context: Any) -> RunContext:
    if context is None:
        return RunContext()
    if isinstance(context, RunContext):
        return context
    if isinstance(context, Mapping):
        try:
            return RunContext(**context)
        except TypeError as exc:
            raise ContextError(f"bad runtime context: {exc}") from None
    raise ContextError(f"the runtime context must be a RunContext or a mapping, not {type(context).__name__}")


async def run_deps(context: Any, run: Any) -> RunDeps:
    """The live dependencies for a node of `run` (a `graph.state.RunInfo`) under `context`: the
    runner's registered ones, or ones built from the configuration once per process and run."""
    if isinstance(context, RunDeps):  # handed over directly (embedding code, tests)
        return context
    ctx = _as_context(context)
    if ctx.deps_key is not None:
        try:
            return _REGISTERED[ctx.deps_key]
        except KeyError:
            raise ContextError(f"no live dependencies registered under {ctx.deps_key!r} in this process "
                               "(a run's key is valid only while its runner drives it)") from None
    key = (ctx.database_url, ctx.provider, ctx.seed, ctx.debater, json.dumps(ctx.decision, sort_keys=True, default=str),
           run.run_id)
    lock = _BUILD_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        if key not in _BUILT:
            if len(_BUILT) >= _MAX_BUILT:
                _BUILT.pop(next(iter(_BUILT)))
            _BUILT[key] = await _build(ctx, run)
    return _BUILT[key]


async def _database(url: str | None) -> Database:
    from config.settings import Settings
    from storage.database import connect, resolve_url

    server = None
    if url is None:
        url, server = resolve_url(Settings())
    if url not in _DATABASES:
        _DATABASES[url] = await connect(url, server)
    return _DATABASES[url]


async def _build(ctx: RunContext, run: Any) -> RunDeps:
    """Dependencies from configuration: the database, the simulated market, the configured account
    with no broker (nothing is transmitted), the debater asked for, the decision settings."""
    from agents.debate import DeterministicDebater
    from config.settings import Settings, defaults
    from graph.runner import make_deps
    from tools.providers.simulated import SimulatedMarket

    if ctx.provider != "simulated":
        raise ContextError(f"provider {ctx.provider!r} cannot be built from a runtime context; use 'simulated' "
                           "(runs on chain files are started with `hedgegraph run --chains`)")
    if ctx.debater not in ("deterministic", "llm"):
        raise ContextError(f"debater {ctx.debater!r}: expected 'deterministic' or 'llm'")
    try:
        decision = defaults().decision.with_overrides(dict(ctx.decision))
    except ValueError as exc:
        raise ContextError(f"decision settings in the runtime context: {exc}") from None
    db = await _database(ctx.database_url)
    debater = DeterministicDebater()
    if ctx.debater == "llm":
        from agents.llm_debate import llm_configured, make_debater

        if not llm_configured(Settings()):
            raise ContextError("debater 'llm' needs OPENAI_API_KEY or OPENAI_BASE_URL")
        debater = make_debater(Settings(), decision, db)
    record = await RunRepository(db.pool).create_if_absent(
        run_id=run.run_id, slot_key=run.slot_key, watchlist=run.watchlist, as_of=run.as_of, tickers=list(run.tickers),
        seed=run.seed, provider=run.provider, config=decision.model_dump(mode="json"), mode=run.mode,
        debater=getattr(debater, "name", "deterministic"),
    )
    a = defaults().account
    account = AccountState(net_liquidation=a["net_liquidation"], cash=a["cash"], margin_used=a["margin_used"])
    seed = ctx.seed if ctx.seed is not None else run.seed
    return make_deps(db, record, SimulatedMarket(seed=seed), account=account, debater=debater, broker=None)


async def close_built() -> None:
    """Forget the dependencies built from configuration and close their databases."""
    _BUILT.clear()
    while _DATABASES:
        await _DATABASES.popitem()[1].close()


def with_run_deps(node: Callable) -> Callable:
    """Wrap a node so that it receives the live `RunDeps` for its run as `runtime.context`, whatever
    the graph was given as context (a `RunContext`, its JSON, or nothing)."""
    @functools.wraps(node)
    async def wrapper(state, runtime):
        typed = None
        if isinstance(state.get("run"), Mapping):  # a run started over HTTP (Studio) gives it as JSON
            from domain.decision import RunInfo

            typed = RunInfo.model_validate(state["run"])
            state = {**state, "run": typed}
        deps = await run_deps(runtime.context, state["run"])
        update = await node(state, runtime.override(context=deps))
        # the first node writes the typed run back, so edges and later nodes read it typed
        return update if typed is None else {**(update or {}), "run": typed}

    return wrapper
