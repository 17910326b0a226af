"""What the debate remembers: the most similar past situations whose outcomes were known at the
run's as-of time — never later — as short lines the debaters cite and the transcript records.

The embedder (and torch) is touched only when some outcome is known by then: a fresh database or
a run dated before any outcome costs one cheap count, not a model load.
"""
from __future__ import annotations

import asyncio
from datetime import datetime

from domain.decision import Candidate, Regime, Signal
from memory.store import MemoryStore, situation_text

RECALL_K = 3


class RunMemory:
    """`MemoryRecall` for one run: `recall(...)` searches as of `as_of` only."""

    def __init__(self, store: MemoryStore, as_of: datetime, k: int = RECALL_K):
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        self.store = store
        self.as_of = as_of
        self.k = k
        self._counting: asyncio.Future[int] | None = None

    async def recall(self, candidate: Candidate, signals: list[Signal], regime: Regime) -> list[str]:
        if not await self._known():
            return []
        query = situation_text(candidate.ticker, regime, signals, " ".join(candidate.reasons), None)
        found = await self.store.similar(query, as_of=self.as_of, k=self.k)
        return [describe(m) for m in found]

    async def _known(self) -> int:
        """Memories known at `as_of`. Recalls made while a count is in flight (the debate recalls
        for every candidate at once) share it, so they also resume together and reach the store's
        embedder in the same event-loop turn: their queries are embedded in one forward pass."""
        if self._counting is None or self._counting.done():
            self._counting = asyncio.ensure_future(self.store.memories.count_known(self.as_of))
        # shield: one cancelled recall must not cancel the count the others are waiting for
        return await asyncio.shield(self._counting)


def describe(memory) -> str:
    outcome = memory.outcome or {}
    parts = [f"{memory.as_of:%Y-%m-%d} {memory.ticker} ({memory.regime})"]
    trade = (memory.trade or {}).get("structure")
    if trade:
        parts.append(trade)
    if "pnl" in outcome:
        parts.append(f"P&L {outcome['pnl']:+}")
    if "underlying_return" in outcome:
        parts.append(f"underlying {float(outcome['underlying_return']):+.1%}")
    text = ", ".join(parts)
    if memory.reflection:
        text += f": {memory.reflection}"
    if memory.similarity is not None:
        text += f" (similarity {memory.similarity:.2f})"
    return text
