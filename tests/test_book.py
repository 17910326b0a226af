"""The book on a real Postgres with the real paper broker making the fills, on an injected clock:
positions from fills, marks and snapshots, exits staged through the order queue, expiry
(cash settlement, assignment, a vertical fully in the money) and the account the risk gate reads."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest

from domain.orders import BrokerPosition, LegQuote, OptionContract
from brokers.book import Book, BookError, last_daily_reset
from domain.order_state import OrderState
from brokers.paper import PaperBroker, SlippageModel
from brokers.quote_source import QuoteBook
from config.settings import BookConfig
from risk.gate import pre_trade
from risk.limits import load_risk_matrix
from storage.orders import OrderRepository
from tests.broker_factories import (
    D, EXPIRY, T0, Clock, approve, book_for, bull_call_spread, bull_put_spread, leg, proposal, run_row, stage,
)
from tests.risk_factories import regime
from tools.chain import NEW_YORK

AT_MID = SlippageModel(fraction=D(0))  # fills at the mid: a staged mid limit fills at once


def paper(db, quotes, clock, **kw) -> PaperBroker:
    return PaperBroker(db, quotes, clock=clock, slippage=AT_MID, **kw)


def set_quote(book, ticker, strike, right, bid, ask, underlying="600", expiry=EXPIRY, **greeks):
    book.set(OptionContract(ticker, expiry, D(strike), right),
             LegQuote(bid=D(bid), ask=D(ask), underlying_price=D(underlying), **greeks))


async def filled_at_the_broker(db, broker, p, contracts=3, run_id="run-1"):
    """Stage, approve, place and fill `p` in full at the paper broker; the book is not told yet."""
    record = await stage(db, p, contracts, run_id=run_id)
    await approve(db, record.order_id)
    await broker.place(record)
    fills = await broker.process()
    assert fills and sum(f.quantity for f in fills) == contracts
    return record


async def open_position(db, broker, p, contracts=3, run_id="run-1"):
    record = await filled_at_the_broker(db, broker, p, contracts, run_id)
    await Book(db).ingest_fills()
    return record


@dataclass
class Desk:
    """One paper account on an injected clock, with its quotes, broker and book."""

    clock: Clock
    quotes: QuoteBook
    broker: PaperBroker
    book: Book


async def desk_with(db, p, units: int, *, underlying="600", config: BookConfig | None = None, **broker_kw) -> Desk:
    """A desk holding `units` of proposal `p`, opened (filled at the mid) and booked."""
    await run_row(db)
    clock = Clock()
    quotes = book_for(p, underlying=underlying)
    desk = Desk(clock, quotes, paper(db, quotes, clock, **broker_kw), Book(db, config=config))
    await open_position(db, desk.broker, p, units)
    return desk


async def approve_and_fill(db, broker, record):
    await OrderRepository(db.pool).transition(record.order_id, OrderState.APPROVED, actor="approver", reason="test")
    await broker.place(record)
    return await broker.process()


async def assert_nlv_agrees(book: Book, broker: PaperBroker, quotes, now, **kw):
    report = await book.mark(now, quotes, **kw)
    account = await broker.account()
    assert report.snapshot.net_liquidation == account.net_liquidation
    assert report.snapshot.cash == account.cash
    assert report.snapshot.margin_used == account.margin_used
    return report


async def test_vertical_round_trip_marks_exit_and_realized_pnl(db):
    await run_row(db)
    clock = Clock()
    p = bull_put_spread()  # sell 580P 3.00/3.20, buy 575P 2.10/2.26: credit 0.92 at the mid
    quotes = book_for(p)
    broker = paper(db, quotes, clock)
    book = Book(db)
    opened = await stage(db, p, 3)
    await approve(db, opened.order_id)
    await broker.place(opened)
    await broker.process()

    report = await book.ingest_fills()
    assert len(report.booked) == 1 and report.refused == ()
    assert (await book.ingest_fills()).booked == ()  # idempotent per fill id
    [position] = await book.positions()
    assert (position.units_open, position.entry_price, position.structure) == (3, D("-0.92"), "bull_put_spread")
    assert position.order_id == opened.order_id and position.run_id == "run-1"
    assert position.realized_pnl == D("-3.90")  # the opening commission, 6 contracts x 0.65

    # Next day: the puts cheapen; the mark is -(0.65) + 0.35 = -0.30 per share per unit.
    clock.advance(days=1)
    set_quote(quotes, "SPY", "580", "P", "0.60", "0.70", delta=-0.10, gamma=0.01, vega=0.2, theta=-0.05)
    set_quote(quotes, "SPY", "575", "P", "0.30", "0.40", delta=-0.06, gamma=0.008, vega=0.15, theta=-0.04)
    marked = await assert_nlv_agrees(book, broker, quotes, clock.now, spx_price=D("6000"))
    [m] = marked.marks
    assert m.mark == D("-0.30") and m.unrealized_pnl == D("186.00")  # (-0.30 + 0.92) x 3 x 100
    assert m.greeks.delta == pytest.approx((0.10 - 0.06) * 300)
    assert marked.snapshot.unrealized_pnl == D("186.00") and marked.snapshot.spx_price == D("6000")
    gate_view = await book.open_positions()
    assert gate_view[0].delta == pytest.approx(12.0) and gate_view[0].max_loss == D("1200")

    # 62 of max profit 100 per unit >= 50%: take profit, staged as a closing order for approval.
    exits = await book.exit_orders(clock.now, quotes)
    assert [(e.rule, e.order.quantity, e.order.limit_price) for e in exits] == [("take_profit", 3, D("0.30"))]
    [staged] = await book.stage_exits(clock.now, exits, provider="simulated")
    assert staged.created and staged.order.state == "STAGED"
    row = await db.pool.fetchrow("SELECT closes_position_id, exit_rule, structure FROM orders WHERE order_id = $1",
                                 staged.order.order_id)
    assert dict(row) == {"closes_position_id": position.position_id, "exit_rule": "take_profit",
                         "structure": "close_bull_put_spread"}
    # One live exit per position: the next slot stages nothing new.
    again = await book.stage_exits(clock.now + timedelta(minutes=30), await book.exit_orders(clock.now, quotes), provider="simulated")
    assert not again[0].created and again[0].order.order_id == staged.order.order_id

    fills = await approve_and_fill(db, broker, staged.order)
    assert fills[0].price == D("0.30")
    await book.ingest_fills()
    closed = await book.position(position.position_id)
    assert closed.status == "closed" and closed.units_open == 0
    # -(entry + close) x units x multiplier - commissions = -(-0.92 + 0.30) x 300 - 7.80
    assert closed.realized_pnl == D("178.20")
    assert await broker.ledger.realized_pnl() == D("186.00")  # the broker's realized, before commissions
    report = await assert_nlv_agrees(book, broker, quotes, clock.now + timedelta(minutes=1))
    assert report.snapshot.net_liquidation == D("100000") + closed.realized_pnl
    assert await book.reconcile(await broker.positions()) == []


async def test_rejected_exit_is_restaged_at_a_later_slot(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 2, config=BookConfig(close_at_dte=30))  # 28 DTE: the DTE rule fires at once
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    exits = await book.exit_orders(clock.now, quotes)
    assert [e.rule for e in exits] == ["dte"]
    [first] = await book.stage_exits(clock.now, exits, provider="simulated")
    await OrderRepository(db.pool).transition(first.order.order_id, OrderState.REJECTED, actor="approver", reason="no")
    same_slot = await book.stage_exits(clock.now, exits, provider="simulated")
    assert same_slot[0].order is None and not same_slot[0].created
    [later] = await book.stage_exits(clock.now + timedelta(minutes=30), await book.exit_orders(clock.now, quotes), provider="simulated")
    assert later.created and later.order.order_id != first.order.order_id


async def test_closing_more_than_is_open_is_refused(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 2, config=BookConfig(close_at_dte=30))
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    [exit_trade] = await book.exit_orders(clock.now, quotes)
    [staged] = await book.stage_exits(clock.now, [exit_trade], provider="simulated")
    # Someone edits the closing order to 3 units before it is approved and filled.
    await db.pool.execute("UPDATE orders SET quantity = 3 WHERE order_id = $1", staged.order.order_id)
    record = await OrderRepository(db.pool).get(staged.order.order_id)
    await approve_and_fill(db, broker, record)
    report = await book.ingest_fills()
    assert report.booked == () and len(report.refused) == 1
    assert "closes 3 units" in report.refused[0][1] and "only 2 open" in report.refused[0][1]
    [position] = await book.positions()
    assert position.units_open == 2  # nothing changed
    diffs = await book.reconcile(await broker.positions())
    assert {d.contract.strike for d in diffs} == {D("580"), D("575")}  # the broker went short 1 more unit


async def test_spx_cash_settlement(db):
    p = proposal([leg("5800", "P", "sell", "30.00", "31.00"), leg("5790", "P", "buy", "26.00", "27.00")],
                 ticker="SPX", max_loss="600")
    desk = await desk_with(db, p, 2, underlying="5850")
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    cash_before = await broker.ledger.cash()
    [position] = await book.positions()
    assert position.entry_price == D("-4.00")
    # Expiry day, after the close: SPX settles at 5795 -> the 5800 put is worth 5, the 5790 nothing.
    clock.now = datetime.combine(EXPIRY, time(16, 15), tzinfo=NEW_YORK)
    assert await book.settle_expired(clock.now - timedelta(hours=1), lambda t: D("5795"), broker=broker) == []
    [result] = await book.settle_expired(clock.now, lambda t: D("5795"), broker=broker)
    assert result.status == "settled" and result.value_per_unit == D("-5")
    assert result.realized_pnl == D("-200.00")  # (-5 + 4) x 2 x 100
    assert await broker.ledger.cash() == cash_before - D("1000")  # 5 x 2 x 100 paid in cash
    assert await broker.positions() == []
    assert await book.settle_expired(clock.now, lambda t: D("5795"), broker=broker) == []  # once
    settled = await book.position(position.position_id)
    assert settled.status == "settled" and settled.realized_pnl == D("-200.00") - D("2.60")
    await assert_nlv_agrees(book, broker, quotes, clock.now)
    assert await broker.ledger.realized_pnl() == D("-200.00")


async def test_equity_short_put_assigned_into_shares(db):
    p = proposal([leg("580", "P", "sell", "3.00", "3.20")], structure="short_put", max_loss="57000")
    desk = await desk_with(db, p, 1, share_prices=lambda t: D("575"))
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    cash_before = await broker.ledger.cash()
    clock.now = datetime.combine(EXPIRY, time(17, 0), tzinfo=NEW_YORK)
    [result] = await book.settle_expired(clock.now, lambda t: D("575"), broker=broker)
    assert result.status == "assigned" and result.realized_pnl == D("-190.00")  # (-5 + 3.10) x 100
    assert await broker.ledger.cash() == cash_before - D("58000")  # bought 100 shares at the strike
    [shares] = await broker.share_positions()
    assert (shares.ticker, shares.quantity) == ("SPY", 100)
    assert await broker.positions() == []
    report = await assert_nlv_agrees(book, broker, quotes, clock.now, share_prices=lambda t: D("575"))
    assert report.snapshot.shares_value == D("57500")
    snap = report.snapshot
    assert snap.net_liquidation == D("100000") + snap.realized_pnl + snap.unrealized_pnl == D("99809.35")
    [entry] = [e for e in await broker.ledger.cash_entries() if e["kind"] == "assignment"]
    assert entry["amount"] == D("-58000")


async def test_vertical_fully_in_the_money_nets_to_its_width(db):
    p = bull_call_spread()  # buy 600C, sell 610C: debit 3.55 at the mid
    desk = await desk_with(db, p, 2)
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    cash_before = await broker.ledger.cash()
    clock.now = datetime.combine(EXPIRY + timedelta(days=3), time(9, 0), tzinfo=NEW_YORK)  # any later time
    [result] = await book.settle_expired(clock.now, lambda t: D("620"), broker=broker)
    assert result.value_per_unit == D("10") and result.realized_pnl == D("1290.00")  # (10 - 3.55) x 200
    assert await broker.ledger.cash() == cash_before + D("2000")  # width x 2 units x 100
    assert await broker.share_positions() == []  # exercised +200, assigned -200
    await assert_nlv_agrees(book, broker, quotes, clock.now)


async def test_pin_risk_the_session_before_expiry(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 1, underlying="582")
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    assert await book.pin_risk(clock.now, quotes) == []  # weeks away
    day_before = datetime.combine(EXPIRY - timedelta(days=1), time(15, 0), tzinfo=NEW_YORK)
    [warning] = await book.pin_risk(day_before, quotes)
    assert warning.strike == D("580") and "pin risk" in warning.message
    assert await book.pin_risk(day_before, quotes, distance=0.001) == []


async def test_account_rules_act_on_real_fills(db):
    """A loss beyond 3% of NLV halts trading; the lockout lifts at the daily reset; the cooldown
    follows the losing close; opening fills count toward trades per day."""
    await run_row(db)
    matrix = load_risk_matrix()
    clock = Clock()
    p = bull_call_spread()
    quotes = book_for(p)
    broker = paper(db, quotes, clock)
    book = Book(db)
    reset = last_daily_reset(clock.now, matrix.daily_reset.at, matrix.daily_reset.timezone)
    await book.mark(clock.now - timedelta(hours=1), quotes, daily_reset=reset)  # the day's first snapshot
    await open_position(db, broker, p, 10)
    state = await book.account_state(clock.now, reset, quotes=quotes)
    assert state.trades_today == 1 and state.last_loss_at is None
    assert state.net_liquidation == (await broker.account()).net_liquidation

    # The spread collapses: a debit stop stages the close, which fills at a loss of 3,450 + commissions.
    clock.advance(hours=1)
    set_quote(quotes, "SPY", "600", "C", "0.15", "0.25")
    set_quote(quotes, "SPY", "610", "C", "0.05", "0.15")
    [exit_trade] = await book.exit_orders(clock.now, quotes)
    assert exit_trade.rule == "debit_stop"
    [staged] = await book.stage_exits(clock.now, [exit_trade], provider="simulated")
    await approve_and_fill(db, broker, staged.order)
    state = await book.account_state(clock.now, reset, quotes=quotes)
    assert state.daily_realized_pnl == D("-3450") - D("26")
    assert state.last_loss_at == clock.now
    decision = pre_trade("QQQ", "index", state, await book.open_positions(), regime(), matrix, clock.now)
    codes = {v.code for v in decision.vetoes}
    assert {"daily_loss_halt", "daily_loss_lockout", "cooldown"} <= codes
    # Half an hour later the cooldown is over; the day's loss still halts and locks out.
    later = clock.now + timedelta(minutes=31)
    state = await book.account_state(later, reset, quotes=quotes)
    codes = {v.code for v in pre_trade("QQQ", "index", state, [], regime(), matrix, later).vetoes}
    assert "cooldown" not in codes and {"daily_loss_halt", "daily_loss_lockout"} <= codes

    # After the daily reset the loss is yesterday's; the cooldown has long passed.
    next_day = datetime.combine(clock.now.astimezone(NEW_YORK).date() + timedelta(days=1), time(10, 0), tzinfo=NEW_YORK)
    new_reset = last_daily_reset(next_day, matrix.daily_reset.at, matrix.daily_reset.timezone)
    assert new_reset.astimezone(NEW_YORK).time() == time(0, 0) and new_reset <= next_day
    await book.mark(new_reset - timedelta(minutes=1), quotes)
    state = await book.account_state(next_day, new_reset, quotes=quotes)
    assert state.daily_realized_pnl == 0 and state.daily_unrealized_pnl == 0 and state.trades_today == 0
    decision = pre_trade("QQQ", "index", state, await book.open_positions(), regime(), matrix, next_day)
    assert not {"daily_loss_halt", "daily_loss_lockout", "cooldown"} & {v.code for v in decision.vetoes}


async def test_gate_view_from_the_opening_proposal_until_marked_then_from_the_mark(db):
    """Until a position is marked the gate sees its opening proposal's Greeks (scaled to the open
    units) and underlying price, then its latest mark's. `account_and_positions` is `account_state`
    and `open_positions` from one read, and books a fill that is not booked yet first."""
    await run_row(db)
    clock = Clock()
    p = bull_put_spread()  # proposal: delta 0.1, gamma -0.001, vega -0.05, theta 0.02 per share, SPY at 600
    quotes = book_for(p)
    broker = paper(db, quotes, clock)
    book = Book(db)
    await filled_at_the_broker(db, broker, p, 3)  # not booked yet
    reset = clock.now - timedelta(hours=1)
    state, [view] = await book.account_and_positions(clock.now, reset, quotes=quotes)
    assert state.trades_today == 1 and state.net_liquidation == (await broker.account()).net_liquidation
    assert (view.delta, view.gamma, view.vega, view.theta) == pytest.approx((30.0, -0.3, -15.0, 6.0))
    assert view.underlying_price == 600.0
    assert (state, [view]) == (await book.account_state(clock.now, reset, quotes=quotes),
                               await book.open_positions(quotes=quotes))

    clock.advance(hours=1)
    set_quote(quotes, "SPY", "580", "P", "0.60", "0.70", underlying="605", delta=-0.10, gamma=0.01, vega=0.25, theta=-0.05)
    set_quote(quotes, "SPY", "575", "P", "0.30", "0.40", underlying="605", delta=-0.06, gamma=0.008, vega=0.15, theta=-0.04)
    await book.mark(clock.now, quotes)
    state, [view] = await book.account_and_positions(clock.now, reset, quotes=quotes)
    assert (view.delta, view.gamma, view.vega, view.theta) == pytest.approx((12.0, -0.6, -30.0, 3.0))
    assert view.underlying_price == 605.0 and view.market_value == D("-90.00")  # the mark, -0.30 x 300
    assert (state, [view]) == (await book.account_state(clock.now, reset, quotes=quotes),
                               await book.open_positions(quotes=quotes))


async def test_trades_per_day_counts_opening_orders_filled_since_the_reset(db):
    matrix = load_risk_matrix()
    clock = Clock()
    quotes = book_for(bull_put_spread(), bull_call_spread())
    broker = paper(db, quotes, clock, max_contracts_per_fill=1)
    book = Book(db)
    limit = matrix.regimes.neutral.account_rules.max_trades_per_day
    for i in range(limit):
        await run_row(db, f"run-{i}")
        record = await stage(db, bull_put_spread() if i % 2 else bull_call_spread(), 2, run_id=f"run-{i}")
        await approve(db, record.order_id)
        await broker.place(record)
        await broker.process()
        await broker.process()  # filled in two parts: still one trade
    reset = last_daily_reset(clock.now, matrix.daily_reset.at, matrix.daily_reset.timezone)
    state = await book.account_state(clock.now, reset, quotes=quotes)
    assert state.trades_today == limit
    decision = pre_trade("QQQ", "index", state, await book.open_positions(), regime(), matrix, clock.now)
    assert "trade_frequency" in {v.code for v in decision.vetoes}


async def test_reconcile_reports_differences_on_both_sides(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 2)
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    held = await broker.positions()
    assert await book.reconcile(held) == []
    extra = BrokerPosition(OptionContract("QQQ", EXPIRY, D("500"), "C"), 1, D("2"))
    diffs = await book.reconcile(held[:1] + [extra])
    assert sorted(d.label for d in diffs) == sorted([
        "QQQ 2026-12-18 500C: broker +1, book +0", f"{held[1].contract.label()}: broker +0, book {held[1].quantity:+d}"])


async def test_queries_for_the_commands(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 2)
    clock, quotes, broker, book = desk.clock, desk.quotes, desk.broker, desk.book
    first = await book.mark(clock.now, quotes)
    assert any("10 x SPY" in note for note in first.snapshot.missing)  # no spx_price given: said so
    clock.advance(days=1)
    set_quote(quotes, "SPY", "580", "P", "2.00", "2.20")
    set_quote(quotes, "SPY", "575", "P", "1.40", "1.60")
    await book.mark(clock.now, quotes)
    [row] = await book.positions_report()
    assert row["units"] == 2 and row["mark"] == D("-0.6") and row["unrealized_pnl"] == D("64.00")
    day0 = T0.astimezone(NEW_YORK).date()
    days = await book.pnl_by_day(day0, day0 + timedelta(days=1))
    assert [d["day"] for d in days] == [day0, day0 + timedelta(days=1)]
    assert days[0]["realized_pnl"] == D("-2.60") and days[0]["unrealized_pnl"] == 0
    assert days[1]["unrealized_pnl"] == D("64.00") and days[1]["unrealized_change"] == D("64.00")
    [strategy] = await book.pnl_by_strategy(day0, day0 + timedelta(days=1))
    assert strategy["structure"] == "bull_put_spread" and strategy["unrealized_pnl"] == D("64.00")
    now = await book.account_now(clock.now, last_daily_reset(clock.now, time(0)))
    assert now["net_liquidation"] == (await broker.account()).net_liquidation
    assert now["open_positions"] == 1


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        last_daily_reset(datetime(2026, 1, 1, 12), time(0))


async def test_concurrent_ingestion_books_each_fill_once(db):
    await run_row(db)
    clock = Clock()
    p = bull_put_spread()
    quotes = book_for(p)
    broker = paper(db, quotes, clock, max_contracts_per_fill=1)
    record = await stage(db, p, 3)
    await approve(db, record.order_id)
    await broker.place(record)
    for _ in range(3):
        await broker.process()
    books = [Book(db) for _ in range(4)]
    reports = await asyncio.gather(*(b.ingest_fills() for b in books))
    assert sorted(f for r in reports for f in r.booked) == sorted(f.fill_id for f in await broker.fills(record.order_id))
    [position] = await books[0].positions()
    assert (position.units_opened, position.units_open, position.commissions) == (3, 3, D("3.90"))


async def test_a_crash_between_staging_and_linking_an_exit_restages_the_same_order(db):
    p = bull_put_spread()
    desk = await desk_with(db, p, 2, config=BookConfig(close_at_dte=30))
    exits = await desk.book.exit_orders(desk.clock.now, desk.quotes)
    [first] = await desk.book.stage_exits(desk.clock.now, exits, provider="simulated")
    # As if the process died after OrderRepository.stage and before the link was written.
    await db.pool.execute("UPDATE orders SET closes_position_id = NULL, exit_rule = NULL WHERE order_id = $1",
                          first.order.order_id)
    [again] = await desk.book.stage_exits(desk.clock.now + timedelta(minutes=30), exits, provider="simulated")
    assert again.order.order_id == first.order.order_id and not again.created
    assert await db.pool.fetchval("SELECT count(*) FROM orders WHERE structure = 'close_bull_put_spread'") == 1
    linked = await db.pool.fetchval("SELECT closes_position_id FROM orders WHERE order_id = $1", first.order.order_id)
    assert linked == exits[0].position_id


async def test_the_exits_of_one_slot_are_staged_into_one_run_awaiting_approval_each_order_linked(db):
    await run_row(db)
    clock, put_spread, call_spread = Clock(), bull_put_spread(), bull_call_spread()
    quotes = book_for(put_spread, call_spread)
    broker, book = paper(db, quotes, clock), Book(db, config=BookConfig(close_at_dte=30))  # 28 DTE: both exit
    for p in (put_spread, call_spread):
        await open_position(db, broker, p, 2)
    exits = await book.exit_orders(clock.now, quotes)
    assert [e.rule for e in exits] == ["dte", "dte"]
    staged = await book.stage_exits(clock.now, exits, provider="simulated")
    assert [s.created for s in staged] == [True, True]
    for s, e in zip(staged, exits):  # the order returned is the order as linked to its position
        assert (s.order.closes_position_id, s.order.exit_rule) == (e.position_id, "dte")
        assert s.order == await OrderRepository(db.pool).get(s.order.order_id)
    [run] = await db.pool.fetch("SELECT run_id, status FROM runs WHERE watchlist = 'exits'")
    assert run["status"] == "awaiting_approval" and {s.order.run_id for s in staged} == {run["run_id"]}


async def test_exit_stagers_at_one_instant_take_turns_per_position_and_stage_each_exit_once(db):
    await run_row(db)
    clock, put_spread, call_spread = Clock(), bull_put_spread(), bull_call_spread()
    quotes = book_for(put_spread, call_spread)
    broker, book = paper(db, quotes, clock), Book(db, config=BookConfig(close_at_dte=30))
    for p in (put_spread, call_spread):
        await open_position(db, broker, p, 2)
    exits = await book.exit_orders(clock.now, quotes)
    # A stager holding one position's lock holds off another stager of that position until it lets go.
    async with book.store.position_locks([exits[0].position_id]):
        waiting = asyncio.create_task(Book(db).stage_exits(clock.now, list(reversed(exits)), provider="simulated"))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert await db.pool.fetchval("SELECT count(*) FROM orders WHERE closes_position_id IS NOT NULL") == 0
    first = await asyncio.wait_for(waiting, 10)
    # Stagers of overlapping positions at once, locks taken in opposite orders: no deadlock, one order each.
    results = await asyncio.gather(*(Book(db).stage_exits(clock.now, order, provider="simulated")
                                     for order in (exits, list(reversed(exits)), exits)))
    assert [s.created for s in first] == [True, True]
    assert not any(s.created for r in results for s in r)
    assert await db.pool.fetchval("SELECT count(*) FROM orders WHERE closes_position_id IS NOT NULL") == 2
