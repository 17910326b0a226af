"""What nodes are run with (LangGraph runtime context): database, provider, debater, limits.

None of this is checkpointed: it is the environment of a run, rebuilt by the runner on resume.
The market cache keeps the run's recorded snapshot and per-ticker chain analyses in memory so the
analysts and the strategy selector of a ticker share one implied-vol solve and surface fit; after a crash it reloads the recording
from Postgres, never from the provider (which would answer with a later market).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.clock import wall_clock
from config.settings import DecisionConfig
from graph.schema import AccountState, Position
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
