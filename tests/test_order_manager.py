"""The order manager owns every approved order until it is terminal, on one path, whoever approved it.

Per-order transmission (an approved order goes out while its run waits for the others), off-hours
approvals that wait for the open, `place` refusing while halted, and recovery from every point a
crash can leave an order between approval and journal: exactly one broker order, each fill
journaled once, nothing left working without an owner.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from agents.execution import order_manager

from brokers.paper import TradingHalted
from config.clock import ClockError, parse_now, wall_clock
from config.settings import defaults
from service import approvals
from service.approvals import Decision, ServiceContext
from service.operations import run_decision
from storage.controls import RiskControls
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 19, 15, 30, tzinfo=NEW_YORK)  # a Thursday: this slot stages two orders


class Clock:
    def __init__(self, at: datetime):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


async def stage_two(db, staged_at: datetime = AS_OF):
    clock = Clock(staged_at)
    outcome = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=list(defaults().watchlist),
                                 as_of=AS_OF, seed=7, now=clock)
    assert outcome.run.status == "awaiting_approval" and len(outcome.orders) >= 2, outcome.orders
    clock.at = AS_OF + timedelta(minutes=5)
    return ServiceContext(db=db, clock=clock), clock, outcome.orders, outcome.run.run_id


def approve(order) -> Decision:
    return Decision("approve", "alice", acknowledge=order.quantity > 10)


async def state_of(db, order_id):
    return await db.pool.fetchval("SELECT state FROM orders WHERE order_id = $1", order_id)


async def counts(db, order_id):
    return (await db.pool.fetchval("SELECT count(*) FROM broker_orders WHERE order_id = $1", order_id),
            await db.pool.fetchval("SELECT count(*) FROM broker_fills WHERE order_id = $1", order_id),
            await db.pool.fetchval("SELECT count(*) FROM trade_journal WHERE order_id = $1", order_id))


async def test_an_approved_order_is_sent_at_once_while_its_run_waits_for_the_others(db):
    ctx, _, orders, run_id = await stage_two(db)
    first, second = orders[0], orders[1]
    result = await approvals.decide(ctx, first.order_id, approve(first))
    assert result["state"] == "FILLED", result["execution"]
    assert await state_of(db, second.order_id) == "STAGED"
    assert await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "awaiting_approval"
    # The last decision lets the run finish: the graph reports both executions and completes.
    await approvals.decide(ctx, second.order_id, Decision("reject", "bob", reason="enough exposure"))
    assert await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "completed"
    assert await counts(db, first.order_id) == (1, 1, 1)
    # Approving from the CLI/API path still reflects: the situation remembers the filled trade.
    trade = await db.pool.fetchval("SELECT trade FROM memories WHERE run_id = $1 AND ticker = $2", run_id, first.ticker)
    assert trade is not None and trade["structure"] == first.structure
    assert await db.pool.fetchval("SELECT trade FROM memories WHERE run_id = $1 AND ticker = $2",
                                  run_id, second.ticker) is None


async def test_an_off_hours_approval_waits_approved_and_fills_at_the_open(db):
    # Staged at 15:50, its 30 market minutes run until 09:50 tomorrow: the night does not count.
    ctx, clock, orders, _ = await stage_two(db, staged_at=AS_OF + timedelta(minutes=20))
    order = orders[0]
    clock.at = datetime(2026, 11, 19, 18, 0, tzinfo=NEW_YORK)  # after the close, inside the approval window
    result = await approvals.decide(ctx, order.order_id, approve(order))
    assert result["state"] == "APPROVED"
    assert result["execution"]["outcome"] == "held"
    assert "market closed" in result["execution"]["reasons"][0] and "next open" in result["execution"]["reasons"][0]
    assert await counts(db, order.order_id) == (0, 0, 0)  # never sent as an order that cannot live
    for other in orders[1:]:  # the run's last decision: it finishes and reflects, the order still unsent
        await approvals.decide(ctx, other.order_id, Decision("reject", "bob", reason="one is enough"))
    assert await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", order.run_id) == "completed"

    clock.at = datetime(2026, 11, 20, 9, 45, tzinfo=NEW_YORK)
    await approvals.recover_pending(ctx)
    assert await state_of(db, order.order_id) == "FILLED"
    assert await db.pool.fetchval("SELECT trade FROM memories WHERE run_id = $1 AND ticker = $2",
                                      order.run_id, order.ticker) is not None
    history = [h["to_state"] for h in (await approvals.order_review(ctx, order.order_id))["history"]]
    assert history[:3] == ["DRAFT", "STAGED", "APPROVED"] and history.count("SUBMITTED") <= 1


async def test_place_itself_refuses_while_halted(db):
    ctx, clock, orders, run_id = await stage_two(db)
    order = orders[0]
    await approvals.decide(ctx, order.order_id, approve(order), resume=False)
    await RiskControls(db.pool).set_halted(True, actor="ops", reason="drill")
    deps = await approvals._deps_for_run(ctx, run_id)
    record = await deps.db.pool.fetchrow("SELECT * FROM orders WHERE order_id = $1", order.order_id)
    from storage.orders import order_from_row

    with pytest.raises(TradingHalted, match="halted"):
        await deps.broker.place(order_from_row(record))
    assert await state_of(db, order.order_id) == "APPROVED"
    held = await (await order_manager(deps)).transmit(order.order_id)
    assert held.outcome == "held" and "halted" in held.reasons[0]
    await RiskControls(db.pool).set_halted(False, actor="ops", reason=None)
    await approvals.recover_pending(ctx)
    assert await state_of(db, order.order_id) == "FILLED"
    assert await counts(db, order.order_id) == (1, 1, 1)


@pytest.mark.parametrize("crash_after", ["decision", "placed", "filled"])
async def test_recovery_from_a_crash_between_approval_and_journal_is_exactly_once(db, crash_after):
    """Each case leaves the database exactly as a process killed at that point would (every step
    commits before the next starts), then recovers twice: the second pass must change nothing."""
    ctx, _, orders, run_id = await stage_two(db)
    order = orders[0]
    await approvals.decide(ctx, order.order_id, approve(order), resume=False)  # recorded, nothing sent
    deps = await approvals._deps_for_run(ctx, run_id)
    if crash_after in ("placed", "filled"):
        from storage.orders import OrderRepository

        record = await OrderRepository(db.pool).get(order.order_id)
        await deps.broker.place(record)  # SUBMITTED, no walk, no journal
        if crash_after == "filled":
            # The fill reaches the broker's ledger at a price the walk would have reached.
            await deps.broker.replace_limit(order.order_id, (record.limit_price + Decimal("0.50")).quantize(Decimal("0.01")))
            assert await deps.broker.process()
            assert await state_of(db, order.order_id) == "FILLED"
    for _ in range(2):
        await approvals.recover_pending(ctx)
        placed, fills, journaled = await counts(db, order.order_id)
        assert placed == 1 and fills >= 1 and journaled == fills
    assert await state_of(db, order.order_id) == "FILLED"
    assert not await db.pool.fetchval(
        "SELECT count(*) FROM orders WHERE state IN ('APPROVED', 'SUBMITTED', 'PARTIALLY_FILLED', 'UNKNOWN')")


async def test_a_run_whose_graph_ended_is_not_left_awaiting_approval(db):
    ctx, _, orders, run_id = await stage_two(db)
    for order in orders:
        await approvals.decide(ctx, order.order_id, Decision("reject", "bob", reason="no"), resume=False)
    assert await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "awaiting_approval"
    assert run_id in await approvals.recover_pending(ctx)
    assert await db.pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "completed"


def test_hedgegraph_now_is_the_paper_wall_clock_and_refused_for_a_live_broker(monkeypatch):
    monkeypatch.setenv("HEDGEGRAPH_NOW", "2026-11-20T10:15")
    assert wall_clock() == datetime(2026, 11, 20, 10, 15, tzinfo=NEW_YORK)
    with pytest.raises(ClockError, match="real clock"):
        wall_clock("ibkr")
    with pytest.raises(ClockError, match="not an ISO"):
        parse_now("next tuesday")
    monkeypatch.setenv("HEDGEGRAPH_NOW", "2026-11-20T15:15:00+00:00")
    assert wall_clock().utcoffset() == timedelta(0)


async def test_orders_show_says_why_an_order_ended_and_carries_its_debate(db):
    from service.operations import show_order

    ctx, _, orders, _ = await stage_two(db)
    await approvals.decide(ctx, orders[0].order_id, Decision("reject", "bob", reason="earnings next week"))
    shown = await show_order(db, orders[0].order_id)
    assert shown["state"] == "REJECTED" and shown["terminal_reason"] == "earnings next week"
    assert shown["debate"]["ticker"] == orders[0].ticker and shown["debate"]["transcript"]
    assert (await show_order(db, orders[1].order_id))["terminal_reason"] is None  # still STAGED
    review = await approvals.order_review(ctx, orders[0].order_id)
    assert review["terminal_reason"] == "earnings next week"


async def test_an_exit_rule_stages_a_close_that_approval_turns_into_realized_pnl_and_memory(db):
    """fill → housekeeping on later days marks the book → an exit rule (at the latest 21 DTE) stages
    a closing order → approving it closes the position: realized P&L in the book and in the memory
    of the situation that opened it, known only from the close."""
    from brokers.book import Book
    from service.housekeeping import housekeeping

    ctx, clock, orders, run_id = await stage_two(db)
    order = orders[0]
    assert (await approvals.decide(ctx, order.order_id, approve(order)))["state"] == "FILLED"
    for other in orders[1:]:
        await approvals.decide(ctx, other.order_id, Decision("reject", "bob", reason="one is enough"))
    book = Book(db)
    [position] = await book.positions()

    day, staged = AS_OF.date(), []
    while not staged:
        day += timedelta(days=1)
        assert day < position.expiry, "no exit rule fired before expiry"
        clock.at = datetime.combine(day, datetime.min.time(), tzinfo=NEW_YORK).replace(hour=15, minute=35)
        if clock.at.weekday() >= 5:
            continue
        report = await housekeeping(ctx, mark=True)
        assert report.marked == 1
        staged = [e for e in report.exits_staged if e["created"]]
    [exit_] = staged
    exit_order = await approvals.order_review(ctx, exit_["order_id"])
    assert exit_order["state"] == "STAGED" and exit_order["structure"].startswith("close_")

    closed = await approvals.decide(ctx, exit_["order_id"], approve(order))
    assert closed["state"] == "FILLED", closed["execution"]
    position = await book.position(position.position_id)
    assert position.status == "closed" and position.units_open == 0 and position.realized_pnl != 0
    memory = await db.pool.fetchrow("SELECT outcome, outcome_known_at FROM memories WHERE run_id = $1 AND ticker = $2",
                                    run_id, order.ticker)
    assert memory["outcome"]["realized"] is True
    assert memory["outcome"]["pnl"] == pytest.approx(float(position.realized_pnl))
    assert memory["outcome_known_at"] >= position.closed_at  # no look-ahead: known from the close on

    # The Kelly journal: a later run sees the closed outcome, a run as of before the close does not.
    def next_slot(at: datetime, days: int) -> datetime:
        day = at.date() + timedelta(days=days)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        return datetime.combine(day, datetime.min.time(), tzinfo=NEW_YORK).replace(hour=15, minute=30)

    later = await run_decision(db, SimulatedMarket(7), watchlist="journal", tickers=["SPY"],
                               as_of=next_slot(position.closed_at, 1), seed=7, now=clock)
    [outcome] = later.state["context"].closed_outcomes
    assert outcome.structure == position.structure and outcome.pnl == position.realized_pnl
    earlier = await run_decision(db, SimulatedMarket(7), watchlist="journal", tickers=["SPY"],
                                 as_of=next_slot(AS_OF, 1), seed=7, now=clock)
    assert earlier.state["context"].closed_outcomes == []
