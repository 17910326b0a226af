"""Properties of the book over generated sequences of opens, partial closes and price moves, with
the real paper broker making every fill on a real Postgres:

- NLV = cash + sum of marks after every event, and the book's NLV equals the broker's;
- NLV = opening cash + realized + unrealized (commissions realized when paid);
- no position without a fill (units opened = the units of its opening fills);
- closing never exceeds the open quantity (a close of more is refused, nothing changes);
- once flat, the book's gross realized P&L equals the broker ledger's realized P&L.
"""
from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.book import Book, ExitTrade, _closing_order
from domain.order_state import OrderState
from brokers.paper import PaperBroker, SlippageModel
from storage.database import connect
from storage.orders import OrderRepository
from brokers.quote_source import QuoteBook
from tests.broker_factories import D, T0, Clock, approve, leg, proposal, run_row, stage
from tests.test_book import set_quote

# (op, amount): open n units of a new position, close n units of the oldest open one, or move the
# market (the short put's bid in cents; the long put trades 0.80 below it).
events = st.lists(st.one_of(
    st.tuples(st.just("open"), st.integers(1, 3)),
    st.tuples(st.just("close"), st.integers(1, 4)),
    st.tuples(st.just("move"), st.integers(100, 600)),
), min_size=1, max_size=7)


def legs_at(short_bid_cents: int):
    """The short 580 put at bid/bid+0.10 and the long 575 put 0.80 below: every mid is on a cent."""
    bid = Decimal(short_bid_cents) / 100
    return [leg("580", "P", "sell", str(bid), str(bid + D("0.10"))),
            leg("575", "P", "buy", str(bid - D("0.80")), str(bid - D("0.70")))]


def quotes_at(book: QuoteBook, short_bid_cents: int) -> None:
    for l in legs_at(short_bid_cents):
        set_quote(book, "SPY", str(l.strike), "P", str(l.bid), str(l.ask))


async def scenario(url: str, ops: list[tuple[str, int]]) -> None:
    db = await connect(url, max_size=4)
    try:
        account = f"acct-{uuid.uuid4().hex[:8]}"
        clock = Clock(T0)
        quotes = QuoteBook()
        market = {"bid": 300}
        quotes_at(quotes, market["bid"])
        broker = PaperBroker(db, quotes, clock=clock, slippage=SlippageModel(fraction=D(0)), account_id=account,
                             check_buying_power=False)
        book = Book(db, account_id=account)
        opening = (await broker.account()).cash  # opens the account with its deposit

        async def check() -> None:
            report = await book.mark(clock.now, quotes)
            broker_account = await broker.account()
            assert report.snapshot.net_liquidation == broker_account.net_liquidation
            assert report.snapshot.net_liquidation == report.snapshot.cash + sum((m.value for m in report.marks), D(0))
            realized = await book.store.realized_between(None)
            assert abs(opening + realized + report.snapshot.unrealized_pnl - report.snapshot.net_liquidation) < D("0.01")
            orphans = await db.pool.fetchval(
                """SELECT count(*) FROM strategy_positions p WHERE p.account_id = $1 AND p.units_opened <>
                       (SELECT COALESCE(sum(units), 0) FROM position_fills f WHERE f.position_id = p.position_id
                          AND f.kind = 'open')""", account)
            assert orphans == 0
            assert await book.reconcile(await broker.positions()) == []

        for op, amount in ops:
            clock.advance(minutes=5)
            if op == "move":
                market["bid"] = amount
                quotes_at(quotes, amount)
            elif op == "open":
                run_id = f"run-{uuid.uuid4().hex[:8]}"
                await run_row(db, run_id)
                record = await stage(db, proposal(legs_at(market["bid"])), amount, run_id=run_id)
                await approve(db, record.order_id)
                await broker.place(record)
                assert await broker.process()
            else:
                await book.ingest_fills()
                open_positions = await book.positions()
                if not open_positions:
                    continue
                position = open_positions[0]
                quoted = [(l, quotes(l.contract(position.ticker, position.multiplier))) for l in position.legs]
                order = dataclasses.replace(_closing_order(position, quoted, "test", "property"), quantity=amount)
                [staged] = await book.stage_exits(clock.now, [ExitTrade(position.position_id, "test", "property", order)], provider="simulated")
                await OrderRepository(db.pool).transition(staged.order.order_id, OrderState.APPROVED, actor="a")
                await broker.place(staged.order)
                assert await broker.process()
                report = await book.ingest_fills()
                if amount > position.units_open:
                    assert report.booked == () and "only" in report.refused[0][1]
                    assert (await book.position(position.position_id)).units_open == position.units_open
                    assert await book.reconcile(await broker.positions()) != []
                    return  # the broker and the book now differ, as reconciliation says
                assert report.refused == ()
            await check()

        # Close everything: the book's gross realized equals the broker ledger's.
        for position in await book.positions():
            clock.advance(minutes=5)
            quoted = [(l, quotes(l.contract(position.ticker, position.multiplier))) for l in position.legs]
            order = _closing_order(position, quoted, "test", "flat")
            [staged] = await book.stage_exits(clock.now, [ExitTrade(position.position_id, "test", "flat", order)], provider="simulated")
            await OrderRepository(db.pool).transition(staged.order.order_id, OrderState.APPROVED, actor="a")
            await broker.place(staged.order)
            await broker.process()
        await book.ingest_fills()
        await check()
        gross = await db.pool.fetchval(
            """SELECT COALESCE(sum(f.gross_pnl), 0) FROM position_fills f JOIN strategy_positions p USING (position_id)
               WHERE p.account_id = $1""", account)
        assert abs(gross - await broker.ledger.realized_pnl()) < D("0.01")
        assert await broker.positions() == []
    finally:
        await db.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=events)
def test_book_agrees_with_the_broker_after_every_event(fresh_database_url, ops):
    asyncio.run(scenario(fresh_database_url, ops))
