"""Approval through the real graph on the embedded Postgres: decide once, re-check, then transmit.

The run stops at `await_approval`; each decision is recorded under a row lock and then resumes
the run, which re-checks the order with a fresh quote and the current book before the paper
broker sees it.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from config.settings import DecisionConfig
from service import approvals
from service.approvals import Decision, DecisionConflict, ServiceContext
from service.operations import run_decision
from tools.chain import NEW_YORK
from tools.market_hours import add_market_minutes
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def stage(db, config=None):
    """A run on the simulated market that stages one AMZN bull call spread (over 10 contracts),
    staged at the decision time (the clock is the test's, not the wall's)."""
    clock = Clock(AS_OF)
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=["AMZN", "JPM", "XLE"],
                                 as_of=AS_OF, seed=7, config=config, now=clock)
    assert outcome.run.status == "awaiting_approval" and len(outcome.orders) == 1
    assert outcome.orders[0].created_at == AS_OF
    clock.at = AS_OF + timedelta(minutes=5)
    return ServiceContext(db=db, clock=clock), outcome.orders[0], outcome.run.run_id


@pytest.fixture
async def staged(db):
    return await stage(db)


async def run_status(db, run_id):
    return await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id)


async def test_approve_fills_on_paper_and_journals(staged, db):
    ctx, order, run_id = staged
    review = await approvals.order_review(ctx, order.order_id)
    assert review["state"] == "STAGED" and review["debate"]["ticker"] == "AMZN"
    assert {r["stage"] for r in review["risk"]} == {"pre_trade", "post_trade"}
    assert review["greeks_impact"]["delta"] > 0 and review["requires_acknowledgement"]

    result = await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    assert result["state"] == "FILLED", result["execution"]
    assert result["decision"]["approver"] == "alice"
    assert [h["to_state"] for h in result["history"]] == ["DRAFT", "STAGED", "APPROVED", "SUBMITTED", "FILLED"]
    assert result["execution"]["outcome"] == "transmitted"
    journal = await db.pool.fetch("SELECT * FROM trade_journal WHERE order_id = $1", order.order_id)
    assert journal and journal[0]["approver"] == "alice" and journal[0]["run_id"] == run_id
    assert journal[0]["regime"] == "low_vol" and journal[0]["vix"] is not None
    assert await db.pool.fetchval("SELECT count(*) FROM account_snapshots") >= 1
    assert await run_status(db, run_id) == "completed"  # every order decided and executed


async def test_reject_needs_a_reason_and_sends_nothing(staged, db):
    ctx, order, run_id = staged
    with pytest.raises(approvals.InvalidDecision, match="reason"):
        await approvals.decide(ctx, order.order_id, Decision("reject", "bob"))
    result = await approvals.decide(ctx, order.order_id, Decision("reject", "bob", reason="earnings next week"))
    assert result["state"] == "REJECTED" and result["execution"] is None
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0
    assert await run_status(db, run_id) == "completed"


async def test_resize_approves_a_smaller_quantity(staged, db):
    ctx, order, _ = staged
    assert order.quantity > 10  # Kelly-sized; the acknowledgement tests below need more than 10
    with pytest.raises(approvals.InvalidDecision, match=f"quantity from 1 to {order.quantity - 1}"):
        await approvals.decide(ctx, order.order_id, Decision("resize", "carol", quantity=order.quantity))
    result = await approvals.decide(ctx, order.order_id, Decision("resize", "carol", quantity=4))
    assert result["quantity"] == 4 and result["state"] == "FILLED"
    assert not result["requires_acknowledgement"]  # 4 contracts need no acknowledgement
    assert await db.pool.fetchval("SELECT sum(quantity) FROM broker_fills") == 4


async def test_more_than_ten_contracts_needs_acknowledgement(staged):
    ctx, order, _ = staged
    with pytest.raises(approvals.AcknowledgementRequired):
        await approvals.decide(ctx, order.order_id, Decision("approve", "alice"))


async def test_orders_expire_after_thirty_market_minutes(staged, db):
    ctx, order, run_id = staged
    ctx.clock.at = add_market_minutes(order.created_at, 31)
    with pytest.raises(DecisionConflict, match="expired"):
        await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    await approvals.expire_due(ctx)  # the run wakes up, expires the order and finishes
    review = await approvals.order_review(ctx, order.order_id)
    assert review["state"] == "EXPIRED" and review["decision"]["action"] == "expire"
    assert await run_status(db, run_id) == "completed"


async def test_recheck_refuses_a_stale_price(db):
    # A run whose re-check tolerates almost no move: 20 minutes later the spread's mid is 0.95
    # against its 0.90 limit (the simulated market, seed 7).
    config = DecisionConfig(stale_price_tolerance=0.001, stale_price_floor=0.0)
    ctx, order, _ = await stage(db, config)
    ctx.clock.at = AS_OF + timedelta(minutes=20)
    result = await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    assert result["state"] == "REJECTED", result["execution"]
    assert result["execution"]["outcome"] == "refused"
    assert any("stale" in r for r in result["execution"]["reasons"])
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0


async def test_halt_blocks_staging_and_sending(staged, db):
    ctx, order, _ = staged
    await approvals.halt(ctx, "admin", "desk review")
    with pytest.raises(approvals.TradingHalted):
        await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=["AMZN", "JPM", "XLE"],
                                 as_of=AS_OF + timedelta(days=3), seed=7)
    assert outcome.orders == []  # nothing new is staged while halted
    assert any(v.code == "kill_switch" for d in outcome.state["pre_trade"] for v in d.vetoes) or not outcome.state.get("pre_trade")

    await approvals.resume_trading(ctx, "admin")
    await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True), resume=False)
    await approvals.halt(ctx, "admin", "halted between approval and sending")
    await approvals.recover_pending(ctx)
    review = await approvals.order_review(ctx, order.order_id)
    assert review["state"] == "APPROVED" and review["execution"]["outcome"] == "held"
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0
    await approvals.recover_pending(ctx)  # still halted: still held
    assert (await approvals.order_review(ctx, order.order_id))["state"] == "APPROVED"

    await approvals.resume_trading(ctx, "admin")  # the held order goes out once trading resumes
    await approvals.recover_pending(ctx)
    assert (await approvals.order_review(ctx, order.order_id))["state"] == "FILLED"
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 1


async def test_two_approvals_at_once_one_wins(staged, db):
    ctx, order, _ = staged
    results = await asyncio.gather(
        approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True)),
        approvals.decide(ctx, order.order_id, Decision("approve", "bob", acknowledge=True)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, DecisionConflict) for r in results) == 1
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 1
    assert await db.pool.fetchval("SELECT count(*) FROM approvals") == 1


async def test_a_crash_between_approval_and_transmission_neither_loses_nor_duplicates(staged, db):
    ctx, order, run_id = staged
    # The decision commits, then the process dies before the run is resumed.
    await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True), resume=False)
    assert (await approvals.order_review(ctx, order.order_id))["state"] == "APPROVED"
    assert await approvals.recover_pending(ctx) == [run_id]
    assert (await approvals.order_review(ctx, order.order_id))["state"] == "FILLED"
    assert await approvals.recover_pending(ctx) == []  # nothing left: a second recovery sends nothing
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 1


async def test_flatten_stages_buy_to_close_orders_that_go_through_approval(db):
    as_of = datetime(2026, 6, 10, 12, 0, tzinfo=NEW_YORK)
    clock = Clock(as_of)
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=["AAPL"], as_of=as_of, seed=7, now=clock)
    [order] = outcome.orders
    assert order.structure == "bull_put_spread"
    clock.at = as_of + timedelta(minutes=5)
    ctx = ServiceContext(db=db, clock=clock)
    opened = await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    assert opened["state"] == "FILLED"

    clock.at = as_of + timedelta(minutes=20)
    staged = await approvals.stage_flatten(ctx, "risk-desk")
    assert [o["structure"] for o in staged] == ["flatten_close"]
    assert all(leg["side"] == "buy" and leg["right"] == "P" for leg in staged[0]["legs"])
    assert staged[0]["state"] == "STAGED"  # staged for approval like any other order: nothing sent yet
    closed = await approvals.decide(ctx, staged[0]["order_id"], Decision("approve", "alice", acknowledge=True))
    assert closed["state"] == "FILLED", closed["execution"]
    broker = ctx.broker_for(SimulatedMarket(7))
    assert all(p.quantity >= 0 for p in await broker.positions())  # no short option left
    assert await approvals.stage_flatten(ctx, "risk-desk") == []


async def test_a_run_reports_the_state_its_checkpoint_holds_when_it_pauses_and_when_it_ends(db):
    """The runner takes a run's state from the graph's stream instead of reading the checkpoint
    back: it must be the checkpoint's, value for value and type for type, paused or ended."""
    from graph.graph import compiled_graph
    from graph.runner import resume_run
    from storage.runs import RunRepository

    clock = Clock(AS_OF)
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=["AMZN", "JPM", "XLE"],
                                 as_of=AS_OF, seed=7, now=clock)
    app, thread = compiled_graph(db.checkpointer), {"configurable": {"thread_id": outcome.run.run_id}}
    saved = await app.aget_state(thread)
    assert saved.next == ("await_approval",) and outcome.run.status == "awaiting_approval"
    assert {k: repr(v) for k, v in outcome.state.items()} == {k: repr(v) for k, v in saved.values.items()}

    runs = RunRepository(db.pool)
    assert await runs.paused_at_interrupt(outcome.run.run_id)

    # Woken before anything is decided or due, the run pauses again where it was.
    clock.at = AS_OF + timedelta(minutes=5)
    ctx = ServiceContext(db=db, clock=clock)
    assert await approvals.expire_due(ctx) == [outcome.run.run_id]
    assert await run_status(db, outcome.run.run_id) == "awaiting_approval"
    assert await runs.paused_at_interrupt(outcome.run.run_id)
    assert (await app.aget_state(thread)).next == ("await_approval",)

    await approvals.decide(ctx, outcome.orders[0].order_id, Decision("approve", "alice", acknowledge=True))
    ended = await app.aget_state(thread)
    assert ended.next == () and await run_status(db, outcome.run.run_id) == "completed"
    assert not await runs.paused_at_interrupt(outcome.run.run_id)
    # The timings are recorded from the streamed final state: every node's, the last ones included.
    recorded = await db.pool.fetch("SELECT node, ticker, started_at, duration_ms FROM node_timings WHERE run_id = $1",
                                   outcome.run.run_id)
    assert sorted((r["node"], r["ticker"], r["started_at"]) for r in recorded) == \
        sorted((t.node, t.ticker, t.started_at) for t in ended.values["node_timings"])
    assert {"execute_approved", "reflect"} <= {r["node"] for r in recorded}

    # Resuming a completed run again (a late second resume) loads and writes nothing.
    stored = "SELECT (SELECT count(*) FROM checkpoints) + (SELECT count(*) FROM checkpoint_writes)"
    before = await db.pool.fetchval(stored)
    deps = await approvals._deps_for_run(ctx, outcome.run.run_id)
    await resume_run(db, outcome.run.run_id, deps, {"decided": True})
    assert await db.pool.fetchval(stored) == before
    assert await run_status(db, outcome.run.run_id) == "completed"
    # A process that died after the graph ended, before it recorded so: resuming records it, and
    # drives nothing.
    await runs.set_status(outcome.run.run_id, "awaiting_approval")
    await resume_run(db, outcome.run.run_id, deps, {"decided": True})
    assert await db.pool.fetchval(stored) == before
    assert await run_status(db, outcome.run.run_id) == "completed"
