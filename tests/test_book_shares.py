"""Shares an expiry delivers, on a real Postgres with the real paper broker: valued at the
underlying's market price, counted with delta 1 by the book and the risk gate, flattened the next
session by an exit order for the shares (staged, approved, filled with slippage and commission),
and their realized P&L booked into the position that was assigned or exercised."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest

from brokers.base import BrokerError
from brokers.book import Book
from brokers.live import LiveOrderBook, refuse_shares
from brokers.paper import PaperBroker, SlippageModel
from domain.order_state import OrderState
from domain.orders import ComboLeg, LegQuote, OptionContract, Order
from storage.book import BookStore
from storage.broker_ledger import ShareHolding
from storage.orders import OrderRepository
from tests.broker_factories import D, EXPIRY, Clock, approve, book_for, leg, proposal, run_row, stage
from tools.chain import NEW_YORK

AFTER_EXPIRY = datetime.combine(EXPIRY, time(17, 0), tzinfo=NEW_YORK)  # Friday, after the close
NEXT_SESSION = datetime.combine(EXPIRY + timedelta(days=3), time(10, 0), tzinfo=NEW_YORK)  # Monday
SHARES = OptionContract.shares("SPY")


def set_shares(quotes, bid: str, ask: str) -> None:
    quotes.set(SHARES, LegQuote(bid=D(bid), ask=D(ask), underlying_price=(D(bid) + D(ask)) / 2))


async def open_short(db, option, units: int):
    """A short option opened at its mid (`units` contracts) and booked: (clock, quotes, broker, book)."""
    await run_row(db)
    clock = Clock()
    p = proposal([option], structure="short_put" if option.right == "P" else "short_call", max_loss="50000")
    quotes = book_for(p)
    broker = PaperBroker(db, quotes, clock=clock, slippage=SlippageModel(fraction=D(0)), opening_cash=D("200000"))
    book = Book(db)
    record = await stage(db, p, units)
    await approve(db, record.order_id)
    await broker.place(record)
    assert sum(f.quantity for f in await broker.process()) == units
    await book.ingest_fills()
    return clock, quotes, broker, book


async def nlv_agrees(book: Book, broker: PaperBroker, quotes, now) -> Decimal:
    report = await book.mark(now, quotes)
    account = await broker.account()
    assert report.snapshot.net_liquidation == account.net_liquidation
    state = await book.account_state(now, now - timedelta(hours=12), quotes=quotes)
    assert state.net_liquidation == account.net_liquidation
    return account.net_liquidation


async def flatten_shares(db, book: Book, broker: PaperBroker, quotes, now):
    """The next session's exit check: stage the shares exit, approve it, let the venue fill it."""
    [exit_trade] = await book.exit_orders(now, quotes)
    [staged] = await book.stage_exits(now, [exit_trade], provider="simulated")
    assert staged.created and staged.order.state == OrderState.STAGED.value
    await approve(db, staged.order.order_id)
    await broker.place(staged.order)
    fills = await broker.process()
    await book.ingest_fills()
    return exit_trade, staged.order, fills


async def test_a_short_put_assigned_is_flattened_the_next_session_and_its_share_pnl_realized(db):
    clock, quotes, broker, book = await open_short(db, leg("580", "P", "sell", "3.00", "3.20"), 1)
    [position] = await book.positions()
    assert position.entry_price == D("-3.10") and position.realized_pnl == D("-0.65")

    clock.now = AFTER_EXPIRY
    [settled] = await book.settle_expired(clock.now, lambda t: D("575"), broker=broker)
    assert settled.status == "assigned" and settled.realized_pnl == D("-190.00")  # (-5 + 3.10) x 100
    held = await book.position(position.position_id)
    assert (held.status, held.units_open, held.shares_open, held.shares_cost) == ("assigned", 0, 100, D("57500"))
    assert await book.exit_orders(clock.now, quotes) == []  # no price for the shares yet: nothing staged
    # Not an outcome for Kelly while it still holds the shares.
    assert await BookStore(db.pool, "paper").closed_outcomes(clock.now + timedelta(days=30)) == []

    # Monday: SPY trades 578.40 / 578.42. The shares count in NLV at market, in the delta, and at the gate.
    clock.now = NEXT_SESSION
    set_shares(quotes, "578.40", "578.42")
    nlv_before = await nlv_agrees(book, broker, quotes, clock.now)
    cash_before = await broker.ledger.cash()
    assert nlv_before == cash_before + D("57841")
    snapshot = (await book.mark(clock.now + timedelta(seconds=1), quotes)).snapshot
    assert snapshot.delta == pytest.approx(100.0) and snapshot.shares_value == D("57841")
    [gate_view] = await book.open_positions(quotes=quotes)
    assert (gate_view.structure, gate_view.delta, gate_view.max_loss) == ("shares", 100.0, D("57841"))

    exit_trade, order, [fill] = await flatten_shares(db, book, broker, quotes, clock.now)
    assert exit_trade.rule == "delivered_shares" and exit_trade.order.limit_price == D("-578.40")  # sell at the bid
    assert (order.is_shares, order.quantity, order.multiplier, order.structure) == (True, 100, 1, "close_shares")
    assert order.closes_position_id == position.position_id
    assert (fill.price, fill.commission) == (D("-578.41"), D("1.00"))  # at the mid; 100 x 0.005, at least 1.00

    closed = await book.position(position.position_id)
    assert closed.shares_open == 0 and closed.shares_cost == 0 and closed.closed_at == fill.at
    premium, assignment_cost, sale_proceeds = D("310"), D("58000"), -fill.price * 100
    commissions = D("0.65") + fill.commission
    assert closed.realized_pnl == premium + sale_proceeds - assignment_cost - commissions == D("149.35")
    assert closed.commissions == commissions
    share_fill = await db.pool.fetchrow("SELECT * FROM position_fills WHERE kind = 'shares'")
    # The share leg alone: sale proceeds - the shares' value at delivery (575) - its commission.
    assert (share_fill["units"], share_fill["realized_pnl"]) == (100, sale_proceeds - D("57500") - D("1.00"))
    assert await broker.share_positions() == []
    assert await broker.ledger.cash() == cash_before + sale_proceeds - fill.commission
    # NLV moved by the half spread crossed (none: filled at the mid) and the commission only.
    nlv_after = await nlv_agrees(book, broker, quotes, clock.now + timedelta(minutes=1))
    assert nlv_after == nlv_before - fill.commission == D("200000") + closed.realized_pnl
    assert await book.open_positions(quotes=quotes) == []
    assert await book.exit_orders(clock.now + timedelta(minutes=1), quotes) == []  # flat: nothing more


async def test_a_short_call_assigned_is_bought_back_with_slippage(db):
    clock, quotes, broker, book = await open_short(db, leg("610", "C", "sell", "1.50", "1.60"), 4)
    [position] = await book.positions()
    [open_fill] = await broker.fills(position.order_id)
    clock.now = AFTER_EXPIRY
    [settled] = await book.settle_expired(clock.now, lambda t: D("620"), broker=broker)
    assert settled.status == "assigned"
    [shares] = await broker.share_positions()
    assert (shares.quantity, shares.avg_price) == (-400, D("620"))
    assert (await book.position(position.position_id)).shares_open == -400

    clock.now = NEXT_SESSION
    set_shares(quotes, "617.50", "617.60")
    nlv_before = await nlv_agrees(book, broker, quotes, clock.now)
    [gate_view] = await book.open_positions(quotes=quotes)
    assert gate_view.delta == -400.0
    broker.slippage = SlippageModel(fraction=D("0.5"))  # half way from the mid to the ask
    exit_trade, order, [fill] = await flatten_shares(db, book, broker, quotes, clock.now)
    assert order.legs == (ComboLeg.shares("buy"),) and order.limit_price == D("617.60")  # buy back at the ask
    assert fill.price == D("617.58") and fill.commission == D("2.00")  # mid + half the half spread; 400 x 0.005

    closed = await book.position(position.position_id)
    assert closed.shares_open == 0
    premium = -open_fill.price * 400
    assignment_proceeds, buy_back = D("610") * 400, fill.price * 400
    commissions = open_fill.commission + fill.commission
    assert closed.realized_pnl == premium + assignment_proceeds - buy_back - commissions
    assert await broker.share_positions() == []
    nlv_after = await nlv_agrees(book, broker, quotes, clock.now + timedelta(minutes=1))
    # Bought 0.03 above the mid on 400 shares, plus the commission.
    assert nlv_after == nlv_before - D("0.03") * 400 - fill.commission == D("200000") + closed.realized_pnl


async def test_assigned_shares_are_valued_at_the_underlyings_price_not_at_cost(db):
    clock, quotes, broker, book = await open_short(db, leg("580", "P", "sell", "3.00", "3.20"), 1)
    clock.now = AFTER_EXPIRY
    await book.settle_expired(clock.now, lambda t: D("575"), broker=broker)
    cash = await broker.ledger.cash()
    unpriced = await book.mark(clock.now, quotes)  # no price for the shares: at cost, and said so
    assert unpriced.snapshot.shares_value == D("57500") and "SPY shares: no price, carried at cost" in unpriced.snapshot.missing
    clock.now = NEXT_SESSION
    set_shares(quotes, "589.99", "590.01")  # SPY rallied 15 over the delivery price
    report = await book.mark(clock.now, quotes)
    assert report.snapshot.shares_value == D("59000")
    assert report.snapshot.net_liquidation == cash + D("59000") == (await broker.account()).net_liquidation
    state = await book.account_state(clock.now, clock.now - timedelta(hours=12), quotes=quotes)
    assert state.net_liquidation == cash + D("59000")
    # realized (premium - intrinsic - commission) + unrealized on the shares (590 - 575) x 100
    assert report.snapshot.unrealized_pnl == D("1500")
    assert report.snapshot.net_liquidation == D("200000") + D("-190.65") + D("1500")
    # The broker's shares and the book's delivered shares reconcile; a difference is reported.
    assert await book.reconcile(await broker.positions(), await broker.share_positions()) == []
    [diff] = await book.reconcile([], [ShareHolding("SPY", 200, D("575"))])
    assert diff.label == "SPY shares: broker +200, book +100"


async def test_a_shares_fill_that_would_not_reduce_the_delivered_shares_is_refused(db):
    clock, quotes, broker, book = await open_short(db, leg("580", "P", "sell", "3.00", "3.20"), 1)
    clock.now = AFTER_EXPIRY
    [position] = await book.positions()
    await book.settle_expired(clock.now, lambda t: D("575"), broker=broker)
    clock.now = NEXT_SESSION
    set_shares(quotes, "578.40", "578.42")
    [exit_trade] = await book.exit_orders(clock.now, quotes)
    [staged] = await book.stage_exits(clock.now, [exit_trade], provider="simulated")
    await db.pool.execute("UPDATE orders SET quantity = 150 WHERE order_id = $1", staged.order.order_id)
    record = await OrderRepository(db.pool).get(staged.order.order_id)
    await approve(db, record.order_id)
    await broker.place(record)
    await broker.process()
    report = await book.ingest_fills()
    assert report.booked == () and "closes 150 shares" in report.refused[0][1] and "only 100" in report.refused[0][1]
    assert (await book.position(position.position_id)).shares_open == 100  # nothing booked


async def test_live_brokers_refuse_an_order_for_shares_in_one_line(db):
    clock, quotes, broker, book = await open_short(db, leg("580", "P", "sell", "3.00", "3.20"), 1)
    clock.now = AFTER_EXPIRY
    await book.settle_expired(clock.now, lambda t: D("575"), broker=broker)
    set_shares(quotes, "578.40", "578.42")
    [staged] = await book.stage_exits(NEXT_SESSION, await book.exit_orders(NEXT_SESSION, quotes), provider="simulated")
    await approve(db, staged.order.order_id)
    # What both adapters (brokers/ibkr.py, brokers/tastytrade.py) check before anything is sent.
    live = LiveOrderBook(db.pool, "ibkr:U1", "ibkr", "broker:ibkr")
    with pytest.raises(BrokerError) as refused:
        await live.approved_record(staged.order)
    assert "\n" not in str(refused.value) and "ibkr does not trade shares" in str(refused.value)
    # Decided for good: REJECTED with the reason, so recovery does not retry it.
    assert await OrderRepository(db.pool).state(staged.order.order_id) == OrderState.REJECTED.value
    history = await OrderRepository(db.pool).history(staged.order.order_id)
    assert "does not trade shares" in history[-1]["reason"]
    with pytest.raises(BrokerError, match="tastytrade does not trade shares"):
        refuse_shares(staged.order, "tastytrade")


def test_an_order_for_shares_is_that_one_leg_at_multiplier_one():
    shares = ComboLeg.shares("sell")
    assert shares.contract("spy") == SHARES and SHARES.label() == "SPY shares"
    Order(order_id="o", ticker="SPY", legs=(shares,), quantity=100, limit_price=D("-578.40"), multiplier=1)
    with pytest.raises(ValueError, match="one leg, ratio 1, multiplier 1"):
        Order(order_id="o", ticker="SPY", legs=(shares,), quantity=100, limit_price=D("-578.40"))
    with pytest.raises(ValueError, match="one leg"):
        Order(order_id="o", ticker="SPY", legs=(shares, ComboLeg(EXPIRY, D("580"), "P", "buy")), quantity=1,
              limit_price=D("1.00"), multiplier=1)
    with pytest.raises(ValueError, match="no expiry and no strike"):
        ComboLeg(EXPIRY, None, "S", "buy")
    with pytest.raises(ValueError, match="needs an expiry and a strike"):
        ComboLeg(None, D("580"), "P", "buy")
