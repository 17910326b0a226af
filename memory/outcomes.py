"""Attach outcomes to situations whose horizon has passed: the underlying's return over the
horizon (from the provider, as of the horizon's end — never a later price) and, when the trade
was filled, its P&L from the journal; then a short reflection."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from memory.reflect import reflection_for
from memory.store import MemoryStore
from storage.journal import Journal
from tools.providers.base import MarketDataProvider


async def attach_due_outcomes(store: MemoryStore, provider: MarketDataProvider, now: datetime) -> list[int]:
    attached = []
    for memory in await store.due_for_outcome(now):
        horizon_end = memory.as_of + timedelta(days=memory.horizon_days)
        start = provider.snapshot([memory.ticker], memory.as_of).tickers.get(memory.ticker)
        end = provider.snapshot([memory.ticker], horizon_end).tickers.get(memory.ticker)
        if start is None or end is None:
            continue  # the provider no longer knows the name: leave it for a human
        outcome = {"underlying_return": end.spot / start.spot - 1.0}
        pnl = await Journal(store.pool).entry_cash_flow(memory.run_id, memory.ticker)
        if pnl is not None and memory.trade:
            outcome["entry_cash_flow"] = float(pnl)  # premium paid (−) or received (+) at entry
        await store.attach_outcome(memory.id, outcome, reflection_for(memory, outcome), known_at=horizon_end)
        attached.append(memory.id)
    return attached


async def remember_closed_position(store: MemoryStore, position: Any, known_at: datetime) -> int | None:
    """When a strategy position closes, settles or is assigned, the situation that opened it
    learns its realized P&L (dollars, commissions included) and reflects on it."""
    memory_id = await store.memories.traded_id(position.run_id, position.ticker)
    if memory_id is None:
        return None
    memory = await store.get(memory_id)
    outcome = {**(memory.outcome or {}), "pnl": float(position.realized_pnl)}
    return await store.record_realized(position.run_id, position.ticker, position.realized_pnl, position.status,
                                       reflection_for(memory, outcome), known_at)
