"""The whole wiring from a realized loss to a run that stages nothing, and back.

A paper position is opened and closed through the book's exit rule at a loss above 3% of NLV (real
fills on the paper broker against quotes the test sets); the next decision run — the real graph on
the simulated market — reads that loss from the book and stages nothing, with the reason in its
risk decisions; after the daily reset the halt lifts.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from brokers.book import Book
from brokers.paper import PaperBroker
from config.settings import BookConfig
from service.operations import run_decision
from storage.decisions import DecisionRepository
from tests.broker_factories import D, T0, Clock, approve, book_for, bull_call_spread, contract, quote, run_row, stage
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

TICKERS = ["AMZN", "JPM", "XLE"]  # the slot that stages an AMZN order on a clean account


async def realize_a_loss(db, contracts: int):
    """Open `contracts` SPY 600/610 bull call spreads at 3.70 and close them through the book's debit
    stop at 0.45 (real paper fills): a realized loss of about $328 a contract. Returns the position."""
    clock = Clock(T0)
    spread = bull_call_spread()
    quotes = book_for(spread)
    broker = PaperBroker(db, quotes, clock=clock)
    await run_row(db)
    opening = await stage(db, spread, contracts=contracts)
    await approve(db, opening.order_id)
    await broker.place(broker_combo(opening, limit=D("3.70")))  # at the natural price: fills at once
    assert await broker.process()
    book = Book(db, config=BookConfig())

    # The spread collapses: 3.55 mid -> 0.55; the debit stop (50% of the debit) stages the close.
    clock.advance(minutes=60)
    quotes.set(contract("600", "C"), quote("0.95", "1.05"))
    quotes.set(contract("610", "C"), quote("0.40", "0.50"))
    exits = await book.exit_orders(clock.now, quotes)
    assert [e.rule for e in exits] == ["debit_stop"]
    [staged] = await book.stage_exits(clock.now, exits, provider="simulated")
    await approve(db, staged.order.order_id)
    await broker.place(broker_combo(staged.order, limit=D("0.45")))
    assert await broker.process()
    await book.ingest_fills()
    [position] = await book.positions(status=None)
    assert position.status == "closed"
    return position


async def test_a_realized_loss_above_3pct_stops_the_next_run_until_the_daily_reset(db):
    position = await realize_a_loss(db, contracts=12)
    assert position.realized_pnl < D("-3000")

    # The same afternoon the graph reads the loss from the book and stages nothing, saying why.
    as_of = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
    halted = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=TICKERS, as_of=as_of, seed=7,
                                now=lambda: as_of)
    assert halted.orders == []
    account = halted.state["context"].account
    assert account.daily_realized_pnl == position.realized_pnl and account.last_loss_at is not None
    decisions = await DecisionRepository(db.pool).risk_decisions(halted.run.run_id)
    assert decisions and all(not d["approved"] for d in decisions if d["stage"] == "pre_trade")
    assert any(v["code"] == "daily_loss_halt" for d in decisions for v in d["vetoes"])

    # After the daily reset the realized loss is yesterday's: the halt and the lockout lift.
    monday = datetime(2026, 11, 23, 15, 30, tzinfo=NEW_YORK)
    later = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=TICKERS, as_of=monday, seed=7,
                               now=lambda: monday)
    assert later.state["context"].account.daily_realized_pnl == 0
    codes = {v["code"] for d in await DecisionRepository(db.pool).risk_decisions(later.run.run_id) for v in d["vetoes"]}
    assert not codes & {"daily_loss_halt", "daily_loss_lockout", "cooldown"}


def broker_combo(order, limit=None):
    return order if limit is None else replace(order, limit_price=limit)
