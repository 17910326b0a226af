"""The graph remembers: executed runs reflect into pgvector memory, outcomes are attached when the
horizon has passed, and the debate recalls only what was known at its own as-of time."""
from __future__ import annotations

from datetime import timedelta

from agents.debate import DeterministicDebater
from memory.outcomes import attach_due_outcomes
from memory.recall import RunMemory
from memory.store import MemoryStore
from service import approvals
from service.approvals import Decision
from tests.test_approvals import AS_OF, stage
from tools.providers.simulated import SimulatedMarket


async def test_reflect_then_recall_only_what_was_known(db):
    ctx, order, run_id = await stage(db)
    ctx.memory = MemoryStore(db.pool)  # the packaged MiniLM model, loaded offline
    await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    memories = await db.pool.fetch("SELECT id, ticker, horizon_days, trade FROM memories WHERE run_id = $1", run_id)
    assert [m["ticker"] for m in memories] == ["AMZN"] and memories[0]["trade"]["structure"] == "bull_call_spread"

    horizon = memories[0]["horizon_days"]
    assert await attach_due_outcomes(ctx.memory, SimulatedMarket(7), AS_OF + timedelta(days=horizon - 1)) == []
    attached = await attach_due_outcomes(ctx.memory, SimulatedMarket(7), AS_OF + timedelta(days=horizon + 3))
    assert attached == [memories[0]["id"]]
    known_at = AS_OF + timedelta(days=horizon)
    memory = await ctx.memory.get(attached[0])
    assert memory.outcome_known_at == known_at and "underlying_return" in memory.outcome

    state = await _run_state(db, run_id)
    candidate = state["candidates"][0]
    signals = [s for s in state["signals"] if s.ticker == candidate.ticker]
    regime = state["context"].regime
    before = DeterministicDebater(memory=RunMemory(ctx.memory, known_at - timedelta(seconds=1)))
    after = DeterministicDebater(memory=RunMemory(ctx.memory, known_at))
    early = await before.debate(candidate, signals, regime, 1, "later-run")
    late = await after.debate(candidate, signals, regime, 1, "later-run")
    assert early.memories_used == []  # the outcome was not known yet: no look-ahead
    assert len(late.memories_used) == 1 and "AMZN" in late.memories_used[0]
    assert late.transcript[-1].text.startswith("Similar past situations")
    assert late.price_view == early.price_view  # memories inform the approver, not the verdict


async def _run_state(db, run_id):
    from graph.graph import build_graph

    app = build_graph().compile(checkpointer=db.checkpointer)
    return (await app.aget_state({"configurable": {"thread_id": run_id}})).values
