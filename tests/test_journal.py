"""Journal and account snapshots on a real Postgres, and the portfolio Greeks they record."""
from __future__ import annotations

from dataclasses import replace
import math
from datetime import timedelta

import pytest

from domain.orders import Fill, LegQuote
from brokers.paper import PaperBroker
from brokers.portfolio import holdings_after, portfolio_greeks, spx_beta_weighted_delta, theta_vega_ratio
from brokers.quote_source import QuoteBook
from storage.journal import AccountSnapshot, Journal, JournalContext
from tests.broker_factories import D, T0, Clock, approve, bull_put_spread, contract, run_row, stage

SPX = 6000.0


def greek_book() -> QuoteBook:
    book = QuoteBook()
    book.set(contract("580", "P"), LegQuote(bid=D("3.00"), ask=D("3.20"), underlying_price=D("600"),
                                            delta=-0.30, gamma=0.010, vega=0.50, theta=-0.15))
    book.set(contract("575", "P"), LegQuote(bid=D("2.10"), ask=D("2.26"), underlying_price=D("600"),
                                            delta=-0.25, gamma=0.009, vega=0.45, theta=-0.13))
    return book


def test_spx_beta_weighted_delta_hand_example():
    # 10 AAPL calls, delta 0.5, AAPL 180, beta 1.2, SPX 4500: 0.5*10*100*1.2*180/4500 = 24 SPX units.
    assert spx_beta_weighted_delta(0.5, 10, 100, 1.2, 180.0, 4500.0) == pytest.approx(24.0)
    # Short 5 SPY puts, delta -0.3, SPY 450, beta 1, SPX 4500: -0.3 * -5 * 100 * 450 / 4500 = +15.
    assert spx_beta_weighted_delta(-0.3, -5, 100, 1.0, 450.0, 4500.0) == pytest.approx(15.0)
    with pytest.raises(ValueError):
        spx_beta_weighted_delta(0.5, 1, 100, 1.0, 100.0, 0.0)
    assert theta_vega_ratio(-6.0, -15.0) == pytest.approx(0.4)
    assert theta_vega_ratio(6.0, 0.0) is None and theta_vega_ratio(math.nan, 1.0) is None


def test_portfolio_greeks_of_a_spread_and_a_second_underlying():
    book = greek_book()
    aapl = contract("180", "C", ticker="AAPL")
    book.set(aapl, LegQuote(bid=D("5.00"), ask=D("5.20"), underlying_price=D("180"), delta=0.5, gamma=0.02,
                            vega=0.30, theta=-0.05))
    held = [(contract("580", "P"), -3), (contract("575", "P"), 3), (aapl, 10)]
    g = portfolio_greeks(held, book, spx_price=4500.0, betas={"SPY": 1.0, "AAPL": 1.2})
    # SPY spread: delta -3*100*-0.30 + 3*100*-0.25 = 15 shares; AAPL: 10*100*0.5 = 500 shares.
    assert g.delta == pytest.approx(515.0)
    assert g.gamma == pytest.approx(-3 + 2.7 + 20)
    assert g.vega == pytest.approx(-150 + 135 + 300)
    assert g.theta == pytest.approx(45 - 39 - 50)
    assert g.spx_beta_weighted_delta == pytest.approx(15 * 600 / 4500 + 24.0)
    assert g.dollar_delta == pytest.approx(15 * 600 + 500 * 180)
    assert g.theta_vega_ratio == pytest.approx(44 / 285)
    assert g.missing == ()


def test_portfolio_greeks_say_what_is_missing():
    book = greek_book()
    no_greeks = contract("590", "P")
    book.set(no_greeks, LegQuote(bid=D("4.00"), ask=D("4.20"), underlying_price=D("600")))
    g = portfolio_greeks([(contract("580", "P"), -1), (no_greeks, 1)], book, spx_price=SPX)
    assert all(math.isnan(x) for x in (g.delta, g.gamma, g.vega, g.theta, g.spx_beta_weighted_delta))
    assert g.theta_vega_ratio is None
    assert "SPY 2026-12-18 590P: no delta" in g.missing and "SPY: beta unknown, 1.0 used" in g.missing
    g = portfolio_greeks([(contract("123", "C"), 1)], book, spx_price=SPX)
    assert math.isnan(g.delta) and g.missing == ("SPY 2026-12-18 123C: no quote",)
    assert g.to_json()["delta"] is None  # JSON has no NaN


async def test_fills_are_journaled_with_context_and_snapshots_recorded(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=3)).order_id)
    clock = Clock(T0)
    book = greek_book()
    broker = PaperBroker(db, book, clock=clock, max_contracts_per_fill=2)
    journal = Journal(db)
    order = replace(record, limit_price=D("-0.85"))
    pre = portfolio_greeks(await broker.positions(), book, spx_price=SPX, betas={"SPY": 1.0})
    expected_post = portfolio_greeks(holdings_after(await broker.positions(), order), book, spx_price=SPX,
                                     betas={"SPY": 1.0})

    # The first fill arrives with nobody listening: it is found again as an unjournaled fill.
    await broker.place(order)
    [first] = await broker.process()
    assert [f.fill_id for f in await journal.unjournaled_fills()] == [first.fill_id]

    async def journal_fill(fill: Fill) -> None:
        post = portfolio_greeks(await broker.positions(), book, spx_price=SPX, betas={"SPY": 1.0})
        context = JournalContext(approver="approver@example", rationale="IV rich vs realized: bull put spread",
                                 vix=18.5, regime="neutral", underlying_price=D("600"), spx_price=D("6000"),
                                 pre_greeks=pre, post_greeks=post)
        await journal.record_fill(fill, context)

    await journal_fill(first)
    broker.subscribe_fills(journal_fill)
    clock.advance(minutes=1)
    [second] = await broker.process()
    assert await journal.unjournaled_fills() == []
    assert await journal.record_fill(second, JournalContext(approver="x", rationale="again")) is False

    entries = await journal.entries()
    assert [e.fill_id for e in entries] == [second.fill_id, first.fill_id]  # newest first
    latest = entries[0]
    assert (latest.order_id, latest.run_id, latest.broker, latest.account_id) == (record.order_id, "run-1", "paper", "paper")
    assert (latest.ticker, latest.structure, latest.strategy_tag) == ("SPY", "bull_put_spread", "bull_put_spread")
    assert (latest.quantity, latest.price, latest.commission) == (1, D("-0.87"), D("1.30"))
    assert latest.filled_at == T0 + timedelta(minutes=1)
    assert (latest.vix, latest.regime, latest.underlying_price, latest.spx_price) == (18.5, "neutral", D("600"), D("6000"))
    assert latest.approver == "approver@example" and latest.rationale.startswith("IV rich")
    assert [(l["strike"], l["side"], D(l["fill_price"])) for l in latest.legs] == [
        ("580", "sell", D("3.07")), ("575", "buy", D("2.20"))]
    assert latest.pre_greeks["delta"] == 0.0
    # After the whole order: 15 shares of delta, theta 6 $/day, vega -15 $/vol point.
    assert latest.post_greeks["delta"] == pytest.approx(15.0) == expected_post.delta
    assert latest.post_greeks["spx_beta_weighted_delta"] == pytest.approx(15.0 * 600 / 6000)
    assert latest.post_greeks["theta_vega_ratio"] == pytest.approx(6.0 / 15.0)
    assert entries[1].post_greeks["delta"] == pytest.approx(10.0)  # after the first 2 units
    assert [e.fill_id for e in await journal.entries(ticker="spy", regime="neutral", since=T0 + timedelta(seconds=30))] == [second.fill_id]
    assert await journal.entries(run_id="run-other") == []
    with pytest.raises(ValueError, match="not the order's run"):
        await journal.record_fill(first, JournalContext(approver=None, rationale="", run_id="run-other"))

    account = await broker.account()
    greeks = portfolio_greeks(await broker.positions(), book, spx_price=SPX, betas={"SPY": 1.0})
    snap = AccountSnapshot.build(account, greeks, broker="paper", vix=18.5, spx_price=D("6000"), regime="neutral")
    assert await journal.record_snapshot(snap) is True
    assert await journal.record_snapshot(snap) is False  # same account, same instant
    clock.advance(minutes=15)
    book.set(contract("580", "P"), LegQuote(bid=D("2.50"), ask=D("2.70"), underlying_price=D("605")))  # no Greeks now
    later = AccountSnapshot.build(await broker.account(), portfolio_greeks(await broker.positions(), book, spx_price=SPX),
                                  broker="paper", vix=17.0, spx_price=D("6050"), regime="low_vol")
    await journal.record_snapshot(later)

    snaps = await journal.snapshots(account_id="paper")
    assert [s.captured_at for s in snaps] == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=16)]  # oldest first
    first_snap = snaps[0]
    assert first_snap.net_liquidation == D("99981.10") and first_snap.cash == D("100257.10")
    assert first_snap.margin_used == D("1239")
    assert first_snap.delta == pytest.approx(15.0) and first_snap.theta == pytest.approx(6.0)
    assert first_snap.spx_beta_weighted_delta == pytest.approx(1.5)
    assert first_snap.theta_vega_ratio == pytest.approx(0.4) and first_snap.missing == ()
    # The 580 put lost its Greeks: the totals are NaN and the snapshot says why.
    assert math.isnan(snaps[1].delta) and snaps[1].theta_vega_ratio is None
    assert "SPY 2026-12-18 580P: no delta" in snaps[1].missing
    # NLV moved with the marks: short 3 puts now at 2.60 instead of 3.10.
    assert snaps[1].net_liquidation == D("99981.10") + D("150")
    assert [s.regime for s in await journal.snapshots(since=T0 + timedelta(minutes=5))] == ["low_vol"]


async def test_journaling_an_unknown_fill_is_refused(db):
    journal = Journal(db)
    fill = Fill(order_id="ord_missing", broker_order_id="PAPER-ord_missing", fill_id="f1", quantity=1,
                price=D("1.00"), leg_prices=(D("1.00"),), at=T0)
    with pytest.raises(LookupError):
        await journal.record_fill(fill, JournalContext(approver=None, rationale=""))
