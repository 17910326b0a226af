"""Flatten risk: closing orders for short options, staged and executed like any other order."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from agents.staging import idempotency_key, order_id_for
from brokers.base import QuoteUnavailable
from domain.orders import BrokerPosition, LegQuote
from brokers.flatten import FLATTEN_STRUCTURE, flatten_orders
from domain.order_state import OrderState
from brokers.paper import PaperBroker
from storage.orders import OrderRepository
from tests.broker_factories import D, T0, Clock, approve, book_for, bull_put_spread, contract, run_row, stage


def held(c, quantity, avg="1.00") -> BrokerPosition:
    return BrokerPosition(contract=c, quantity=quantity, avg_price=D(avg))


def book():
    from brokers.quote_source import QuoteBook

    b = QuoteBook()
    b.set(contract("580", "P"), LegQuote(bid=D("3.00"), ask=D("3.20"), underlying_price=D("600"), delta=-0.3,
                                         gamma=0.01, vega=0.5, theta=-0.15))
    b.set(contract("575", "P"), LegQuote(bid=D("2.10"), ask=D("2.26"), underlying_price=D("600"), delta=-0.25,
                                         gamma=0.009, vega=0.45, theta=-0.13))
    b.set(contract("620", "C"), LegQuote(bid=D("1.00"), ask=D("1.10"), underlying_price=D("600")))
    b.set(contract("630", "C"), LegQuote(bid=D("0.40"), ask=D("0.46"), underlying_price=D("600")))
    b.set(contract("600", "C"), LegQuote(bid=D("5.00"), ask=D("5.20"), underlying_price=D("600")))
    b.set(contract("400", "C", ticker="QQQ"), LegQuote(bid=D("2.00"), ask=D("2.10"), underlying_price=D("390")))
    return b


POSITIONS = [
    held(contract("580", "P"), -3), held(contract("575", "P"), 3),  # bull put spread
    held(contract("620", "C"), -2), held(contract("630", "C"), 4),  # short call covered by more longs
    held(contract("600", "C"), 2),  # a plain long call
    held(contract("400", "C", ticker="QQQ"), -1),  # a naked short call
]


def test_default_closes_every_short_and_leaves_longs_alone():
    orders = flatten_orders(POSITIONS, book())
    summary = [(o.ticker, [(str(l.strike), l.right, l.side, l.ratio) for l in o.legs], o.quantity) for o in orders]
    assert summary == [
        ("QQQ", [("400", "C", "buy", 1)], 1),
        ("SPY", [("620", "C", "buy", 1)], 2),
        ("SPY", [("580", "P", "buy", 1)], 3),
    ]
    spy_put = orders[2]
    assert (spy_put.mid_price, spy_put.natural_price, spy_put.limit_price) == (D("3.10"), D("3.20"), D("3.10"))
    assert spy_put.closes == ("SPY 2026-12-18 580P x -3",)
    assert flatten_orders([held(contract("600", "C"), 2)], book()) == []


def test_with_protection_closes_each_structure_as_one_combo():
    orders = flatten_orders(POSITIONS, book(), with_protection=True)
    summary = [(o.ticker, sorted((str(l.strike), l.right, l.side, l.ratio) for l in o.legs), o.quantity) for o in orders]
    # SPY: the put spread and the call short with 2 of its 4 long 630 calls, one combo of 4 legs x 1:
    # ratios 3/3 on the puts, 2/2 on the calls; gcd(3, 3, 2, 2) = 1. The long 600 call stays.
    assert summary == [
        ("QQQ", [("400", "C", "buy", 1)], 1),
        ("SPY", [("575", "P", "sell", 3), ("580", "P", "buy", 3), ("620", "C", "buy", 2), ("630", "C", "sell", 2)], 1),
    ]
    spy = orders[1]
    # mid: 3*(3.10 - 2.18) + 2*(1.05 - 0.43) = 2.76 + 1.24; natural: 3*(3.20 - 2.10) + 2*(1.10 - 0.40)
    assert spy.mid_price == D("4.00") and spy.natural_price == D("4.70")
    only_spread = flatten_orders(POSITIONS[:2], book(), with_protection=True)
    assert [(o.quantity, [l.ratio for l in o.legs]) for o in only_spread] == [(3, [1, 1])]


def test_a_missing_quote_is_named():
    b = book()
    b.remove(contract("620", "C"))
    b.remove(contract("400", "C", ticker="QQQ"))
    with pytest.raises(QuoteUnavailable, match="QQQ 2026-12-18 400C, SPY 2026-12-18 620C"):
        flatten_orders(POSITIONS, b)


def test_flatten_proposal_is_a_closing_trade():
    [order] = flatten_orders(POSITIONS[:2], book(), with_protection=True)
    trade = order.to_sized_trade(T0)
    proposal = trade.proposal
    assert proposal.structure == FLATTEN_STRUCTURE and trade.contracts == 3
    assert proposal.net_debit == D("0.92") and proposal.natural_debit == D("1.10")
    # Bought back alone the 580/575 put spread is a debit spread: max loss its 0.92 debit.
    assert proposal.max_loss == D("92") and proposal.max_profit == D("408")
    assert proposal.delta == pytest.approx(-0.05) and proposal.dte == 28
    assert trade.kelly_fraction == 0 and "not Kelly-sized" in trade.caps_applied[0]


async def test_flatten_orders_are_staged_approved_and_executed_like_any_order(db):
    await run_row(db)
    p = bull_put_spread()
    opened = await approve(db, (await stage(db, p, contracts=3)).order_id)
    clock = Clock(T0)
    quotes = book_for(p)
    broker = PaperBroker(db, quotes, clock=clock)
    await broker.place(replace(opened, limit_price=D("-0.85")))
    await broker.process()
    assert {pos.quantity for pos in await broker.positions()} == {-3, 3}

    [close] = flatten_orders(await broker.positions(), quotes, with_protection=True)
    trade = close.to_sized_trade(clock.now)
    key = idempotency_key("run-1", trade.proposal)
    repo = OrderRepository(db.pool)
    staged, _ = await repo.stage(order_id=order_id_for(key), idempotency_key=key, run_id="run-1", trade=trade,
                                 sector="index", limit_price=close.limit_price, requires_acknowledgement=False)
    order = close.combo_order(staged.order_id)
    with pytest.raises(Exception, match="not APPROVED"):
        await broker.place(order)  # a flatten is approved like anything else
    await repo.transition(staged.order_id, OrderState.APPROVED, actor="approver@example")
    what_if = await broker.what_if(order)
    assert what_if.initial_margin_change == -what_if.margin_before < 0  # closing releases all the margin
    await broker.place(close.combo_order(staged.order_id, limit_price=close.natural_price))
    [fill] = await broker.process()
    # Buying back the spread: 580P at 3.10 + 0.025, 575P sold at 2.18 - 0.02 -> 0.965 -> 0.97.
    assert fill.price == D("0.97") and fill.quantity == 3
    assert await broker.positions() == []
    account = await broker.account()
    assert account.margin_used == 0 and account.positions_value == 0
    # Opened for 0.87 credit, closed for 0.97 debit: -0.10 * 3 * 100 realized.
    assert account.realized_pnl == Decimal("-30")
    assert account.cash == D("100000") + D("261") - D("291") - D("0.65") * 12


def test_buying_back_a_short_call_has_a_finite_stated_max_profit():
    """A short call's close alone has unbounded profit: the order carries it at the +3 SD price on
    the legs' IV, and says so (it used to fail to stage at all)."""
    from datetime import date, datetime

    from domain.orders import OptionContract
    from tools.chain import NEW_YORK

    held = [BrokerPosition(OptionContract("SPY", date(2026, 12, 18), Decimal(600), "C"), -2, Decimal("3.00"))]

    def quotes(contract):
        return LegQuote(Decimal("2.00"), Decimal("2.20"), underlying_price=Decimal("590"), delta=0.3, gamma=0.01,
                      vega=0.1, theta=-0.05, iv=0.2)

    [close] = flatten_orders(held, quotes)
    proposal = close.to_sized_trade(datetime(2026, 11, 20, 15, 0, tzinfo=NEW_YORK)).proposal
    assert proposal.max_profit.is_finite() and proposal.max_profit > 0
    assert "+3 SD price" in proposal.rationale
    assert proposal.max_loss == Decimal("210.00")  # the premium paid to close, per unit


def test_closing_a_calendar_stages_with_the_premium_as_its_extremes():
    """A calendar's close spans two expiries and has no expiry payoff; it used to raise and stop the
    whole housekeeping pass (found by the 2011 backtest: an exit of a call calendar)."""
    from datetime import date, datetime

    from domain.orders import OptionContract
    from tools.chain import NEW_YORK

    held = [BrokerPosition(OptionContract("SPY", date(2011, 4, 21), Decimal(96), "C"), -1, Decimal("1.00")),
            BrokerPosition(OptionContract("SPY", date(2011, 5, 20), Decimal(96), "C"), 1, Decimal("2.00"))]

    def quotes(contract):
        price = Decimal("1.00") if contract.expiry.month == 4 else Decimal("1.80")
        return LegQuote(price, price + Decimal("0.10"), underlying_price=Decimal("96"), delta=0.5, gamma=0.05,
                        vega=0.1, theta=-0.03, iv=0.2)

    from brokers.flatten import _build

    legs = [(held[0], quotes(held[0].contract), "buy", 1), (held[1], quotes(held[1].contract), "sell", 1)]
    close = _build("SPY", legs, 100)
    proposal = close.to_sized_trade(datetime(2011, 3, 31, 16, 0, tzinfo=NEW_YORK)).proposal
    assert proposal.dte == 21  # to the near expiry
    assert proposal.net_debit == Decimal("-0.80")
    assert proposal.max_profit == proposal.max_loss == Decimal("80.00") and proposal.breakevens == []
    assert "two expiries" in proposal.rationale
