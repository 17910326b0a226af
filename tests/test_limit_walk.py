"""Limit walk: the schedule's properties (hypothesis) and a walk on the paper broker (real Postgres)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.orders import CENT, LegQuote
from brokers.limit_walk import LimitWalker, limit_at, limit_schedule
from domain.order_state import OrderState
from brokers.paper import PaperBroker
from tests.broker_factories import D, T0, Clock, approve, book_for, bull_call_spread, bull_put_spread, contract, run_row, stage

START = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)

prices = st.decimals(min_value=Decimal("-50"), max_value=Decimal("50"), places=3, allow_nan=False, allow_infinity=False)
cents = st.integers(min_value=-5000, max_value=5000).map(lambda n: Decimal(n) / 100)


@settings(max_examples=200, deadline=None)
@given(mid=prices, natural=cents, steps=st.integers(1, 30), minutes=st.integers(1, 120))
def test_schedule_is_monotone_on_cents_within_bounds_and_ends_at_natural(mid, natural, steps, minutes):
    deadline = START + timedelta(minutes=minutes)
    schedule = limit_schedule(mid, natural, steps, START, deadline)
    times = [t for t, _ in schedule]
    limits = [p for _, p in schedule]
    assert len(schedule) == steps + 1
    assert times[0] == START and all(a < b for a, b in zip(times, times[1:])) and times[-1] < deadline
    assert all(p == p.quantize(CENT) for p in limits)
    up = natural >= mid
    # The first limit is the mid rounded in our favour (away from the natural side).
    assert limits[0] == mid.quantize(CENT, rounding=ROUND_FLOOR if up else ROUND_CEILING)
    assert limits[-1] == natural
    if up:
        assert all(a <= b for a, b in zip(limits, limits[1:]))
        assert all(limits[0] <= p <= natural for p in limits)
    else:
        assert all(a >= b for a, b in zip(limits, limits[1:]))
        assert all(natural <= p <= limits[0] for p in limits)
    assert all(abs(p - mid) < abs(natural - mid) + CENT for p in limits)  # never beyond the natural price


def test_schedule_hand_example_and_bad_input():
    schedule = limit_schedule(D("-0.92"), D("-0.74"), 3, START, START + timedelta(minutes=4))
    assert schedule == [(START, D("-0.92")), (START + timedelta(minutes=1), D("-0.86")),
                        (START + timedelta(minutes=2), D("-0.80")), (START + timedelta(minutes=3), D("-0.74"))]
    assert limit_at(schedule, START - timedelta(seconds=1)) is None
    assert limit_at(schedule, START + timedelta(seconds=150)) == D("-0.80")
    with pytest.raises(ValueError, match="steps"):
        limit_schedule(D(1), D(2), 0, START, START + timedelta(minutes=1))
    with pytest.raises(ValueError, match="after start"):
        limit_schedule(D(1), D(2), 3, START, START)
    with pytest.raises(ValueError, match="timezone-aware"):
        limit_schedule(D(1), D(2), 3, START.replace(tzinfo=None), START.replace(tzinfo=None) + timedelta(minutes=1))
    with pytest.raises(ValueError, match="finite"):
        limit_schedule(D("NaN"), D(2), 3, START, START + timedelta(minutes=1))


async def placed_with_walker(db, p, contracts):
    """`p` staged, approved and placed at the paper broker, with a 3-step, 4-minute walk from T0."""
    await run_row(db)
    record = await approve(db, (await stage(db, p, contracts=contracts)).order_id)
    clock = Clock(T0)
    broker = PaperBroker(db, book_for(p), clock=clock)
    await broker.place(record)
    walker = LimitWalker.from_quotes(broker, record.order_id, mid=p.net_debit, natural=p.natural_debit, steps=3,
                                     start=T0, deadline=T0 + timedelta(minutes=4))
    return record, clock, broker, walker


async def test_walk_raises_the_limit_until_the_paper_broker_fills(db):
    p = bull_put_spread()  # mid -0.92, natural -0.74; the paper fill price is -0.87
    record, clock, broker, walker = await placed_with_walker(db, p, contracts=2)
    seen = []
    for _ in range(4):
        step = await walker.step(clock.now)
        seen.append((step.outcome, step.limit_price))
        await broker.process()
        clock.advance(minutes=1)
    # -0.92 asks for more than the market's 0.87 credit; -0.86 asks for less and fills at -0.87.
    assert seen == [("working", D("-0.92")), ("working", D("-0.86")), ("filled", D("-0.86")), ("filled", D("-0.86"))]
    status = await broker.status(record.order_id)
    assert status.state == OrderState.FILLED and status.avg_fill_price == D("-0.87")
    events = [e["kind"] for e in await broker.ledger.events(record.order_id)]
    assert events == ["placed", "limit_replaced", "fill"]


async def test_walk_cancels_at_the_deadline_when_nothing_fills(db):
    await run_row(db)
    p = bull_call_spread()
    record = await approve(db, (await stage(db, p, contracts=1)).order_id)
    clock = Clock(T0)
    book = book_for(p)
    broker = PaperBroker(db, book, clock=clock)
    await broker.place(record)
    # The market runs away: the 600 call now costs 6.00/6.20, so even the old natural 3.70 is too low.
    book.set(contract("600", "C"), LegQuote(bid=D("6.00"), ask=D("6.20"), underlying_price=D("601")))
    walker = LimitWalker.from_quotes(broker, record.order_id, mid=p.net_debit, natural=p.natural_debit, steps=2,
                                     start=T0, deadline=T0 + timedelta(minutes=3))
    outcomes = []
    for _ in range(4):
        step = await walker.step(clock.now)
        outcomes.append((step.outcome, step.limit_price))
        await broker.process()
        clock.advance(minutes=1)
    assert outcomes == [("working", D("3.55")), ("working", D("3.62")), ("working", D("3.70")), ("cancelled", D("3.70"))]
    assert (await broker.status(record.order_id)).state == OrderState.CANCELLED
    assert await broker.fills(record.order_id) == []
    assert (await walker.step(clock.now)).outcome == "cancelled"  # a finished walk stays finished


async def test_a_step_that_knows_the_status_moves_the_limit_in_one_statement_and_still_sees_a_cancel(db):
    """Given the status it last saw (the paper venue, nothing filled since), a step that moves the
    limit sends it without reading the status first; the replace re-checks the order under its
    lock, so an order cancelled meanwhile ends the walk with nothing written."""
    p = bull_call_spread()  # mid 3.55, natural 3.70: nothing fills below 3.59
    record, clock, broker, walker = await placed_with_walker(db, p, contracts=1)
    reads = []
    read_status = broker.status

    async def counted_status(order_id):
        reads.append(order_id)
        return await read_status(order_id)

    broker.status = counted_status
    first = await walker.step(clock.now)
    assert (first.outcome, first.limit_price, len(reads)) == ("working", D("3.55"), 1)
    clock.advance(minutes=1)
    second = await walker.step(clock.now, first.status)
    assert (second.outcome, second.limit_price, second.status.limit_price, len(reads)) == ("working", D("3.60"), D("3.60"), 1)
    assert second.status == await read_status(record.order_id)
    clock.advance(minutes=1)
    await broker.cancel(record.order_id, reason="withdrawn")
    third = await walker.step(clock.now, second.status)
    assert (third.outcome, third.status.state, third.limit_price) == ("cancelled", OrderState.CANCELLED, D("3.60"))
    events = [(e["kind"], e["limit_price"]) for e in await broker.ledger.events(record.order_id)]
    assert events == [("placed", D("3.55")), ("limit_replaced", D("3.60")), ("cancelled", None)]
