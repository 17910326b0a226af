"""The paper broker on a real Postgres: approval gate, idempotent placing, fills, books, margin."""
from __future__ import annotations

from dataclasses import replace
import asyncio
import contextlib
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brokers.base import (
    Broker,
    MarginUnavailable,
    OrderMismatch,
    OrderNotApproved,
    OrderNotWorking,
    UnknownBrokerOrder,
)
from domain.orders import ComboLeg, Fill, Order, combo_prices
from brokers.margin import margin_requirement, reg_t_naked_per_share
from domain.order_state import OrderState
from brokers.paper import InsufficientBuyingPower, PaperBroker, SlippageModel, is_marketable, model_fill_price
from storage.broker_ledger import FillRejected, apply_to_position
from storage.orders import OrderRepository, UnknownOrder
from tools.chain import NEW_YORK
from tests.broker_factories import (
    D, EXPIRY, T0, Clock, approve, book_for, bull_call_spread, bull_put_spread, contract, quote, run_row, stage,
)


def broker_for(db, book, clock=None, **kwargs) -> PaperBroker:
    return PaperBroker(db, book, clock=clock or Clock(), **kwargs)


async def states(db, order_id):
    return [(h["from_state"], h["to_state"]) for h in await OrderRepository(db.pool).history(order_id)]


# ------------------------------------------------------------------ pure pricing rules
def test_fill_price_is_mid_plus_a_fraction_of_the_half_spread_on_a_cent():
    p = bull_put_spread()
    legs = [ComboLeg.from_any(l) for l in p.legs]
    quotes = [quote(str(l.bid), str(l.ask)) for l in p.legs]
    assert combo_prices(legs, quotes) == (D("-0.92"), D("-0.74"), D("-1.10"))
    # legs: 580P sold at 3.10 - 0.25*0.10 = 3.075, 575P bought at 2.18 + 0.25*0.08 = 2.20 -> -0.875,
    # rounded up (against us) to -0.87; the half cent goes to the leg with most room in its quote
    # (580P: 0.075 above its bid; 575P: 0.06 below its ask).
    price, leg_prices = model_fill_price(legs, quotes, D("0.25"))
    assert price == D("-0.87") and leg_prices == (D("3.07"), D("2.20"))
    assert -leg_prices[0] + leg_prices[1] == price
    assert model_fill_price(legs, quotes, D(0))[0] == D("-0.92")  # f = 0: the mid
    assert model_fill_price(legs, quotes, D(1))[0] == D("-0.74")  # f = 1: the natural price
    with pytest.raises(ValueError):
        model_fill_price(legs, quotes, D("1.5"))


quote_pairs = st.tuples(st.integers(1, 2000), st.integers(0, 300)).map(
    lambda bs: (Decimal(bs[0]) / 100, Decimal(bs[0] + bs[1]) / 100))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(quote_pairs, st.sampled_from(["buy", "sell"]), st.integers(1, 3)), min_size=1, max_size=4),
       st.integers(0, 100).map(lambda n: Decimal(n) / 100))
def test_model_fill_prices_stay_inside_every_quote_and_add_up(legs_spec, fraction):
    legs = [ComboLeg(EXPIRY, D(100 + 5 * i), "P", side, ratio) for i, (_, side, ratio) in enumerate(legs_spec)]
    quotes = [quote(str(b), str(a)) for (b, a), _, _ in legs_spec]
    mid, natural, _ = combo_prices(legs, quotes)
    price, leg_prices = model_fill_price(legs, quotes, fraction)
    assert price == price.quantize(D("0.01")) and price <= natural and price > mid - D("0.01")
    assert all(q.bid <= p <= q.ask for q, p in zip(quotes, leg_prices))
    total = sum((l.sign * l.ratio * p for l, p in zip(legs, leg_prices)), D(0))
    # Exact when a ratio-1 leg can take the rounding residual; within the ledger's tolerance otherwise.
    assert abs(total - price) <= D("0.00001")


def test_marketability_of_debit_and_credit_limits():
    # Credit spread: the market gives 0.87. Asking for 0.92 (limit -0.92) is not marketable;
    # asking for 0.85 (limit -0.85) is, and fills at the better 0.87.
    assert not is_marketable(D("-0.87"), D("-0.92"))
    assert is_marketable(D("-0.87"), D("-0.85"))
    assert is_marketable(D("-0.87"), D("-0.87"))
    # Debit spread: the market costs 3.59. Paying at most 3.55 is not marketable; 3.60 is.
    p = bull_call_spread()
    legs = [ComboLeg.from_any(l) for l in p.legs]
    price, _ = model_fill_price(legs, [quote(str(l.bid), str(l.ask)) for l in p.legs], D("0.25"))
    assert price == D("3.59")  # 3.55 + 0.25 * (3.70 - 3.55) = 3.5875 -> 3.59
    assert not is_marketable(price, D("3.55")) and is_marketable(price, D("3.60"))


def test_position_arithmetic_averages_and_realizes():
    assert apply_to_position(0, D(0), -3, D("3.075")) == (-3, D("3.075000"), D(0))
    assert apply_to_position(2, D("1.00"), 2, D("2.00")) == (4, D("1.500000"), D(0))
    # Buying back 2 of 3 shorts opened at 3.075 for 1.00 realizes 2 * 2.075 per share.
    assert apply_to_position(-3, D("3.075"), 2, D("1.00")) == (-1, D("3.075"), D("4.150"))
    # Selling 5 against a long 2 at 1.00 for 1.50: realizes 2 * 0.50 and opens 3 short at 1.50.
    assert apply_to_position(2, D("1.00"), -5, D("1.50")) == (-3, D("1.500000"), D("1.00"))
    assert apply_to_position(2, D("1.00"), -2, D("0.40")) == (0, D(0), D("-1.20"))


# ------------------------------------------------------------------ margin rules
def test_margin_of_defined_risk_is_the_max_loss():
    held = [(contract("580", "P"), -3), (contract("575", "P"), 3)]
    # width 5 * 3 contracts * 100 - credit 261 received
    assert margin_requirement(held, D("-261")).requirement == D("1239")
    assert margin_requirement(held, D("-261")).method == "max_loss"
    condor = [(contract("95", "P"), -1), (contract("90", "P"), 1), (contract("105", "C"), -1), (contract("110", "C"), 1)]
    assert margin_requirement(condor, D("-150")).requirement == D("350")  # the worse side only
    assert margin_requirement([(contract("600", "C"), 2)], D("1040")).requirement == D("1040")  # long: its debit
    assert margin_requirement([], D(0)).requirement == D(0)


def test_margin_of_naked_shorts_is_reg_t():
    # Short put K=100, S=110, mark 1.50: max(0.2*110 - 10, 0.1*100) + 1.50 = 13.50 per share.
    assert reg_t_naked_per_share("P", D(100), D(110), D("1.50")) == D("13.50")
    # Deep OTM put hits the 10% of strike floor: max(22 - 30, 8) + 0.10.
    assert reg_t_naked_per_share("P", D(80), D(110), D("0.10")) == D("8.10")
    # Short call K=120, S=110, mark 1.00: max(22 - 10, 11) + 1.
    assert reg_t_naked_per_share("C", D(120), D(110), D("1.00")) == D("13.00")
    put = contract("100", "P", ticker="XYZ")
    book = {put: quote("1.40", "1.60", underlying="110")}
    result = margin_requirement([(put, -1)], D("-150"), book.get)
    assert result.requirement == D("1200") and result.method == "reg_t"  # 1350 - 150 credit
    with pytest.raises(MarginUnavailable):
        margin_requirement([(put, -1)], D("-150"), lambda c: None)
    # A 1x2 put ratio: one short covered by the long (requirement 0 in the pair), one naked.
    long_put = contract("105", "P", ticker="XYZ")
    ratio = margin_requirement([(long_put, 1), (put, -2)], D("-20"), book.get)
    assert ratio.requirement == D("1350") - D("20") and ratio.naked == (put.label(),)


def test_margin_of_calendars_and_diagonals_pairs_across_expiries():
    near, far = date(2026, 12, 18), date(2027, 1, 15)
    calendar = [(contract("100", "C", "XYZ", near), -1), (contract("100", "C", "XYZ", far), 1)]
    assert margin_requirement(calendar, D("200")).requirement == D("200")  # the debit
    diagonal = [(contract("100", "C", "XYZ", near), -1), (contract("105", "C", "XYZ", far), 1)]
    assert margin_requirement(diagonal, D("100")).requirement == D("600")  # 5-point gap + debit
    # A long that expires first does not cover the later short: that short is naked.
    short_far = [(contract("100", "C", "XYZ", far), -1), (contract("100", "C", "XYZ", near), 1)]
    with pytest.raises(MarginUnavailable):
        margin_requirement(short_far, D("-100"))


def test_a_book_of_covered_spreads_has_no_naked_short():
    """Regression (a 20-ticker simulated backtest, BAC, February 2022): a March 4 short paired with
    the only long of March 18 and left that expiry's short "naked" (and unpriceable)."""
    feb25, mar4, mar18 = date(2022, 2, 25), date(2022, 3, 4), date(2022, 3, 18)
    held = [(contract("480", "C", "BAC", feb25), 5), (contract("500", "C", "BAC", feb25), -10),
            (contract("510", "C", "BAC", feb25), 5), (contract("575", "C", "BAC", mar4), 8),
            (contract("585", "C", "BAC", mar4), -8), (contract("585", "C", "BAC", mar18), 2),
            (contract("595", "C", "BAC", mar18), -2)]
    result = margin_requirement(held, D("1000"))
    # Only the fly's upper half risks anything: 5 x (510 - 500) per share; the bull spreads none.
    assert result.naked == () and result.requirement == D("5000") + D("1000")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["C", "P"]), st.integers(80, 120),
                          st.integers(1, 10), st.integers(1, 5)), min_size=1, max_size=6))
def test_spreads_each_covered_within_its_expiry_never_make_a_naked_short(spreads):
    held = []
    for week, right, strike, width, count in spreads:
        expiry = date(2026, 12, 4) + timedelta(weeks=week)
        # A debit spread: the long is nearer the money than the short.
        long_strike, short_strike = (strike, strike + width) if right == "C" else (strike + width, strike)
        held += [(contract(str(long_strike), right, "XYZ", expiry), count),
                 (contract(str(short_strike), right, "XYZ", expiry), -count)]
    assert margin_requirement(held, D(0)).naked == ()


# ------------------------------------------------------------------ the approval gate
@pytest.mark.parametrize("decision", ["STAGED", "REJECTED", "EXPIRED", "CANCELLED"])
async def test_broker_refuses_every_order_that_is_not_approved(db, decision):
    await run_row(db)
    p = bull_put_spread()
    record = await stage(db, p)
    if decision != "STAGED":
        await OrderRepository(db.pool).transition(record.order_id, decision, actor="approver@example")
    broker = broker_for(db, book_for(p))
    with pytest.raises(OrderNotApproved, match="not APPROVED"):
        await broker.place(record)
    assert (await OrderRepository(db.pool).get(record.order_id)).state == decision
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0
    with pytest.raises(UnknownBrokerOrder):
        await broker.status(record.order_id)


async def test_broker_refuses_an_order_that_differs_from_the_approved_one(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    broker = broker_for(db, book_for(p))
    approved = record
    bigger = Order(approved.order_id, approved.ticker, approved.legs, approved.quantity + 1, approved.limit_price)
    with pytest.raises(OrderMismatch, match="quantity 4 != approved 3"):
        await broker.place(bigger)
    other_legs = Order(approved.order_id, approved.ticker,
                            (ComboLeg(EXPIRY, D("580"), "P", "sell"), ComboLeg(EXPIRY, D("570"), "P", "buy")),
                            approved.quantity, approved.limit_price)
    with pytest.raises(OrderMismatch, match="legs differ"):
        await broker.place(other_legs)
    assert (await OrderRepository(db.pool).get(record.order_id)).state == "APPROVED"


# ------------------------------------------------------------------ the whole life of an order
async def test_place_partial_fill_fill_updates_positions_and_cash(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=3)).order_id)
    assert record.limit_price == D("-0.92")
    clock = Clock()
    broker = broker_for(db, book_for(p), clock, max_contracts_per_fill=2)
    assert isinstance(broker, Broker)  # the protocol every broker implements
    delivered: list[Fill] = []

    async def collect(fill: Fill) -> None:
        delivered.append(fill)

    broker.subscribe_fills(collect)
    order = record
    what_if = await broker.what_if(order)
    # At the -0.92 limit: max loss 3 * (500 - 92) = 1224; commission 0.65 * 2 legs * 3.
    assert what_if.initial_margin_change == D("1224") and what_if.margin_before == D(0)
    assert what_if.commission == D("3.90") and what_if.cash_change == D("276") - D("3.90")
    assert what_if.method == "max_loss"

    broker_order_id = await broker.place(order)
    assert (await broker.status(record.order_id)).state == OrderState.SUBMITTED
    # Asking 0.92 while the market gives 0.87: nothing fills.
    assert await broker.process() == []
    status = await broker.replace_limit(record.order_id, D("-0.85"))
    assert status.limit_price == D("-0.85") and status.state == OrderState.SUBMITTED

    clock.advance(seconds=5)
    first = await broker.process()
    assert [(f.quantity, f.price) for f in first] == [(2, D("-0.87"))]
    status = await broker.status(record.order_id)
    assert status.state == OrderState.PARTIALLY_FILLED and status.filled_quantity == 2 and status.remaining == 1
    clock.advance(seconds=5)
    second = await broker.process()
    assert [(f.quantity, f.price) for f in second] == [(1, D("-0.87"))]
    status = await broker.status(record.order_id)
    assert status.state == OrderState.FILLED and status.avg_fill_price == D("-0.87")
    assert await broker.process() == []  # a filled order never fills again
    assert delivered == first + second
    assert [f.fill_id for f in await broker.fills(record.order_id)] == [f"{broker_order_id}-F001", f"{broker_order_id}-F002"]
    assert first[0].at.tzinfo is not None and first[0].commission == D("2.60")

    assert await states(db, record.order_id) == [
        (None, "DRAFT"), ("DRAFT", "STAGED"), ("STAGED", "APPROVED"), ("APPROVED", "SUBMITTED"),
        ("SUBMITTED", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "FILLED")]

    positions = {(pos.contract.strike, pos.contract.right): (pos.quantity, pos.avg_price) for pos in await broker.positions()}
    assert positions == {(D("580"), "P"): (-3, D("3.07")), (D("575"), "P"): (3, D("2.20"))}
    account = await broker.account()
    # 100000 + 3 * 87 credit - 3.90 commission
    assert account.cash == D("100257.10")
    # marks at the mids: -3 * 310 + 3 * 218 = -276
    assert account.positions_value == D("-276") and account.net_liquidation == D("99981.10")
    assert account.margin_used == D("1239")  # 1500 width - 261 credit received
    assert account.free_margin == account.net_liquidation - D("1239")
    assert account.realized_pnl == 0 and account.unmarked == ()
    assert account.to_account_state().net_liquidation == D("99981.10")


async def test_the_account_opens_once_with_one_deposit_even_when_opened_concurrently(db):
    ledger = PaperBroker(db, book_for(bull_put_spread()), opening_cash=D("25000")).ledger
    created = await asyncio.gather(*(ledger.ensure_account(D("25000"), T0) for _ in range(4)))
    assert sorted(created) == [False, False, False, True]
    assert await ledger.ensure_account(D("99"), T0) is False  # an open account keeps its opening cash
    assert [(e["kind"], e["amount"], e["at"]) for e in await ledger.cash_entries()] == [("deposit", D("25000"), T0)]
    assert await ledger.cash() == D("25000")
    # Each broker (a new one per run) opens its account once, and its books start from the deposit.
    broker = broker_for(db, book_for(bull_put_spread()), opening_cash=D("25000"))
    await broker.ensure_connected()
    assert (await broker.account()).net_liquidation == D("25000")


async def test_account_realized_pnl_in_all_and_since_new_york_midnight(db):
    await run_row(db)
    p = bull_call_spread()  # buy 600C, sell 610C: debit 3.55 at the mid
    record = await approve(db, (await stage(db, p, contracts=2)).order_id)
    clock = Clock()
    broker = broker_for(db, book_for(p), clock, slippage=SlippageModel(fraction=D(0)))
    await broker.place(record)
    assert [f.price for f in await broker.process()] == [D("3.55")]
    opened = await broker.account()
    assert (opened.realized_pnl, opened.realized_pnl_today) == (0, 0)
    # Three days after expiry, 09:00 New York: both calls settle in the money, 10 wide.
    clock.now = datetime.combine(EXPIRY + timedelta(days=3), time(9, 0), tzinfo=NEW_YORK)
    await broker.settle_expiries(clock.now, lambda t: D("620"))
    settled = await broker.account()
    assert settled.realized_pnl == settled.realized_pnl_today == D("1290.00")  # (10 - 3.55) x 2 x 100
    assert settled.cash == opened.cash + D("2000") and settled.positions_value == 0
    clock.now = datetime.combine(EXPIRY + timedelta(days=4), time(0, 0), tzinfo=NEW_YORK)  # the next day begins
    next_day = await broker.account()
    assert (next_day.realized_pnl, next_day.realized_pnl_today) == (D("1290.00"), 0)
    assert next_day.cash == settled.cash and next_day.as_of == clock.now


async def test_a_repeated_fill_report_is_ignored_and_an_overfill_refused(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=3)).order_id)
    broker = broker_for(db, book_for(p), max_contracts_per_fill=2)
    await broker.place(replace(record, limit_price=D("-0.85")))
    [fill] = await broker.process()
    cash, positions = (await broker.account()).cash, await broker.positions()
    assert await broker.record_fill(fill) is False  # the same fill id again
    assert (await broker.account()).cash == cash and await broker.positions() == positions
    assert (await broker.status(record.order_id)).filled_quantity == 2
    too_many = Fill(order_id=fill.order_id, broker_order_id=fill.broker_order_id, fill_id="external-9", quantity=2,
                    price=fill.price, leg_prices=fill.leg_prices, at=fill.at)
    with pytest.raises(FillRejected, match="exceeds the 1 units still open"):
        await broker.record_fill(too_many)
    bad_legs = Fill(order_id=fill.order_id, broker_order_id=fill.broker_order_id, fill_id="external-10", quantity=1,
                    price=fill.price, leg_prices=(D("3.00"), D("2.00")), at=fill.at)
    with pytest.raises(FillRejected, match="leg prices add up to -1.00"):
        await broker.record_fill(bad_legs)
    assert await db.pool.fetchval("SELECT count(*) FROM broker_fills") == 1
    # A real external report of the last contract completes the order.
    last = Fill(order_id=fill.order_id, broker_order_id=fill.broker_order_id, fill_id="external-11", quantity=1,
                price=D("-0.86"), leg_prices=(D("3.06"), D("2.20")), at=fill.at)
    assert await broker.record_fill(last) is True
    assert (await broker.status(record.order_id)).state == OrderState.FILLED
    with pytest.raises(OrderNotWorking):
        await broker.record_fill(Fill(order_id=fill.order_id, broker_order_id=fill.broker_order_id, fill_id="late",
                                      quantity=1, price=D("-0.86"), leg_prices=(D("3.06"), D("2.20")), at=fill.at))


async def test_placing_twice_makes_one_broker_order(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    order = record
    broker = broker_for(db, book_for(p))
    ids = await asyncio.gather(*(broker.place(order) for _ in range(4)))
    # A restarted process (a new broker object) retrying the same approved order.
    again = await broker_for(db, book_for(p)).place(order)
    assert len(set(ids) | {again}) == 1
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 1
    assert (await states(db, record.order_id)).count(("APPROVED", "SUBMITTED")) == 1


async def test_a_crash_between_approved_and_submitted_leaves_no_half_order(db):
    """The broker order and the APPROVED -> SUBMITTED move commit together: a failure in between
    (injected by the database refusing the SUBMITTED history row) leaves the order APPROVED with no
    broker order, and the retry places exactly one."""
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    await db.pool.execute("""
        CREATE FUNCTION crash_on_submit() RETURNS trigger AS $$
        BEGIN IF NEW.to_state = 'SUBMITTED' THEN RAISE EXCEPTION 'simulated crash'; END IF; RETURN NEW; END
        $$ LANGUAGE plpgsql;
        CREATE TRIGGER crash BEFORE INSERT ON order_state_history FOR EACH ROW EXECUTE FUNCTION crash_on_submit();
    """)
    broker = broker_for(db, book_for(p))
    with pytest.raises(Exception, match="simulated crash"):
        await broker.place(record)
    assert (await OrderRepository(db.pool).get(record.order_id)).state == "APPROVED"
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0
    await db.pool.execute("DROP TRIGGER crash ON order_state_history")
    first = await broker_for(db, book_for(p)).place(record)
    assert first == await broker.place(record)
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 1
    assert (await OrderRepository(db.pool).get(record.order_id)).state == "SUBMITTED"


# ------------------------------------------------------------------ cancel, expiry, rejection
async def test_cancel_from_submitted_and_from_partially_filled(db):
    await run_row(db)
    p, q = bull_put_spread(), bull_call_spread()
    a = await approve(db, (await stage(db, p, contracts=3)).order_id)
    b = await approve(db, (await stage(db, q, contracts=3)).order_id)
    broker = broker_for(db, book_for(p, q), max_contracts_per_fill=1)
    await broker.place(a)  # at -0.92: never marketable
    await broker.place(replace(b, limit_price=D("3.60")))  # debit, marketable at 3.59
    fills = await broker.process()
    assert [(f.order_id, f.quantity, f.price) for f in fills] == [(b.order_id, 1, D("3.59"))]
    cancelled = await broker.cancel(a.order_id, reason="approver withdrew")
    assert cancelled.state == OrderState.CANCELLED and cancelled.filled_quantity == 0
    partial = await broker.cancel(b.order_id)
    assert partial.state == OrderState.CANCELLED and partial.filled_quantity == 1
    assert await broker.process() == []
    with pytest.raises(OrderNotWorking):
        await broker.cancel(a.order_id)
    with pytest.raises(OrderNotWorking):
        await broker.replace_limit(b.order_id, D("3.70"))
    # The filled contract stays: one long 600C, one short 610C.
    assert {(pos.contract.strike, pos.quantity) for pos in await broker.positions()} == {(D("600"), 1), (D("610"), -1)}
    assert (await states(db, b.order_id))[-2:] == [("SUBMITTED", "PARTIALLY_FILLED"), ("PARTIALLY_FILLED", "CANCELLED")]
    await run_row(db, "run-2")
    never_placed = await stage(db, bull_put_spread(), run_id="run-2")
    with pytest.raises(UnknownBrokerOrder):
        await broker.cancel(never_placed.order_id)


async def test_a_venue_step_decides_on_the_locked_row_when_the_order_changed_after_it_was_listed(db):
    """`process()` lists the working orders unlocked and takes an order's locks only when it may
    fill. A limit replaced (or a cancel) between the listing and the lock is what counts."""
    await run_row(db)
    p, q = bull_call_spread(), bull_call_spread()
    a = await approve(db, (await stage(db, p)).order_id)
    await run_row(db, "run-2")
    b = await approve(db, (await stage(db, q, run_id="run-2")).order_id)
    broker = broker_for(db, book_for(p))
    await broker.place(replace(a, limit_price=D("3.60")))  # marketable at 3.59
    await broker.place(replace(b, limit_price=D("3.60")))
    listed = {r["order_id"]: r for r in await broker.ledger.orders_in_states(["SUBMITTED"])}
    await broker.replace_limit(a.order_id, D("3.50"))  # no longer marketable
    await broker.cancel(b.order_id, reason="withdrawn")
    now = broker.clock()
    assert await broker._step_order(listed[a.order_id], now) is None
    assert await broker._step_order(listed[b.order_id], now) is None
    assert await broker.fills(a.order_id) == [] and await broker.fills(b.order_id) == []
    assert (await broker.status(a.order_id)).state == OrderState.SUBMITTED
    # Unchanged since it was listed, the order fills at the price drawn on the listed row.
    await broker.replace_limit(a.order_id, D("3.60"))
    listed = {r["order_id"]: r for r in await broker.ledger.orders_in_states(["SUBMITTED"])}
    fill = await broker._step_order(listed[a.order_id], now)
    assert fill is not None and fill.price == D("3.59") and (await broker.status(a.order_id)).state == OrderState.FILLED


async def test_day_orders_are_cancelled_at_the_close(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    clock = Clock()
    broker = broker_for(db, book_for(p), clock)
    await broker.place(record)  # -0.92: not marketable
    clock.advance(hours=5, minutes=59)  # 15:59 New York
    assert await broker.process() == []
    assert (await broker.status(record.order_id)).state == OrderState.SUBMITTED
    clock.advance(minutes=1)  # 16:00 New York
    await broker.process()
    assert (await broker.status(record.order_id)).state == OrderState.CANCELLED
    assert "DAY order expired" in (await OrderRepository(db.pool).history(record.order_id))[-1]["reason"]


async def test_an_order_beyond_the_buying_power_is_rejected(db):
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=3)).order_id)
    broker = broker_for(db, book_for(p), opening_cash=D("1000"))
    with pytest.raises(InsufficientBuyingPower, match="margin need 1224"):
        await broker.place(record)
    assert (await OrderRepository(db.pool).get(record.order_id)).state == "REJECTED"
    assert await db.pool.fetchval("SELECT count(*) FROM broker_orders") == 0


async def test_slippage_jitter_is_seeded(db):
    await run_row(db)
    prices = {}
    for run_id, account in (("run-a", "a"), ("run-b", "b"), ("run-c", "c")):
        await run_row(db, run_id)
        p = bull_call_spread()
        record = await approve(db, (await stage(db, p, run_id=run_id)).order_id)
        broker = broker_for(db, book_for(p), account_id=account, seed=1 if account != "c" else 2,
                            slippage=SlippageModel(fraction=D("0.2"), jitter=D("0.8")))
        await broker.place(replace(record, limit_price=D("3.70")))
        [fill] = await broker.process()
        prices[account] = fill.price
        assert D("3.55") + D("0.2") * D("0.15") <= fill.price <= D("3.70")
    assert prices["a"] == prices["b"]


# ------------------------------------------------------------------ quotes from real chains
def test_chain_quotes_match_the_cboe_file_and_its_vendor_deltas(shared_data):
    import numpy as np

    from domain.orders import OptionContract
    from brokers.quote_source import ChainQuotes
    from tools.cboe import implied_forwards, read_cboe_quote_table

    chain = read_cboe_quote_table(shared_data / "cboe" / "spy_quotedata_2023-09-14.csv")
    quotes = ChainQuotes({"SPY": chain}, {"SPY": implied_forwards(chain)})
    put = quotes(OptionContract("SPY", date(2023, 9, 19), D("445"), "P"))
    assert (put.bid, put.ask, put.underlying_price) == (D("0.46"), D("0.47"), D("450.81"))
    assert put.as_of == chain.as_of and -0.5 < put.delta < 0 and put.vega > 0 and put.theta < 0
    assert quotes(OptionContract("SPY", date(2023, 9, 19), D("445.5"), "P")) is None  # not listed
    zero_bid = np.flatnonzero((chain.bid == 0) & (chain.ask > 0))[0]
    assert quotes(OptionContract("SPY", chain.expiry[zero_bid].astype(object), D(repr(float(chain.strike[zero_bid]))),
                                 "C" if chain.is_call[zero_bid] else "P")) is None  # rejected quote: no price
    # Oracle: Cboe's own deltas for 10-40 delta options 3-60 days out.
    t = chain.time_to_expiry * 365
    diffs = []
    for i in np.flatnonzero(np.isfinite(chain.vendor_delta) & (np.abs(chain.vendor_delta) >= 0.1)
                            & (np.abs(chain.vendor_delta) <= 0.4) & (t >= 3) & (t <= 60)):
        q = quotes(OptionContract("SPY", chain.expiry[i].astype(object), D(repr(float(chain.strike[i]))),
                                  "C" if chain.is_call[i] else "P"))
        if q is not None and q.delta is not None:
            diffs.append(abs(q.delta - chain.vendor_delta[i]))
    assert len(diffs) > 200
    assert np.median(diffs) < 0.006 and max(diffs) < 0.03


def test_chain_quotes_greeks_per_expiry_equal_the_whole_chain_solve(shared_data):
    """Quotes solve implied vols only for the expiry asked about; each row's vol and Greeks are the
    ones a solve over the whole chain gives it."""
    import numpy as np

    from domain.orders import OptionContract
    from brokers.quote_source import ChainQuotes
    from tools.cboe import implied_forwards, read_cboe_quote_table
    from tools.implied_vol import chain_implied_vol
    from tools.pricing import bsm_greeks

    chain = read_cboe_quote_table(shared_data / "cboe" / "spy_quotedata_2023-09-14.csv")
    curve = implied_forwards(chain)
    quotes = ChainQuotes({"SPY": chain}, {"SPY": curve})
    civ = chain_implied_vol(chain, curve.forwards_by_expiry(), curve.discounts_by_expiry())
    t = chain.time_to_expiry
    with np.errstate(all="ignore"):
        rate = np.where(t > 0, -np.log(civ.discount) / np.where(t > 0, t, 1.0), chain.rate)
        q = np.where(t > 0, rate - np.log(civ.forward / chain.spot) / np.where(t > 0, t, 1.0), chain.dividend_yield)
    whole = bsm_greeks(chain.spot, chain.strike, t, rate, q, civ.vol, chain.is_call)
    compared = 0
    for i in np.flatnonzero(np.isfinite(civ.vol))[::7]:
        got = quotes(OptionContract("SPY", chain.expiry[i].astype(object), D(repr(float(chain.strike[i]))),
                                    "C" if chain.is_call[i] else "P"))
        if got is None or got.iv is None:
            continue
        assert got.iv == pytest.approx(civ.vol[i], rel=1e-12, abs=1e-14)
        assert got.delta == pytest.approx(whole.delta[i], rel=1e-10, abs=1e-14)
        assert got.gamma == pytest.approx(whole.gamma[i], rel=1e-10, abs=1e-14)
        compared += 1
    assert compared > 100


async def test_a_paper_trade_on_the_real_spy_chain(db, shared_data):
    from brokers.quote_source import ChainQuotes
    from tests.broker_factories import leg, proposal
    from tools.cboe import read_cboe_quote_table

    chain = read_cboe_quote_table(shared_data / "cboe" / "spy_quotedata_2023-09-14.csv")
    quotes = ChainQuotes({"SPY": chain})
    expiry = date(2023, 9, 19)
    # 445P 0.46/0.47 sold, 440P 0.14/0.15 bought: mid -0.32, natural -0.31.
    p = proposal([leg("445", "P", "sell", "0.46", "0.47", expiry=expiry), leg("440", "P", "buy", "0.14", "0.15", expiry=expiry)])
    await run_row(db)
    record = await approve(db, (await stage(db, p, contracts=5)).order_id)
    broker = broker_for(db, quotes, Clock(chain.as_of))
    # The file was taken at 16:31, after the close: a DAY order would be cancelled, so GTC.
    await broker.place(replace(record, limit_price=D("-0.31"), time_in_force="GTC"))
    [fill] = await broker.process()
    # 445P at 0.465 - 0.25 * 0.005, 440P at 0.145 + 0.25 * 0.005: -0.3175 -> -0.31 on the cent.
    assert fill.price == D("-0.31") and fill.quantity == 5
    assert -fill.leg_prices[0] + fill.leg_prices[1] == D("-0.31")
    assert all(q.bid <= price <= q.ask for q, price in zip(
        (quotes(c) for c in record.contracts()), fill.leg_prices))


def test_a_zero_bid_under_a_positive_ask_is_a_quote_a_held_wing_can_be_marked_by():
    """A far wing nobody bids for (0 / 0.01) is still a market: without its quote the 2011-2019
    backtest could not mark or close condors and held them into assignment. A zero ask is not."""
    from dataclasses import replace

    import numpy as np

    from brokers.quote_source import ChainQuotes
    from domain.orders import OptionContract
    from tools.providers.simulated import SimulatedMarket
    from tests.broker_factories import T0

    chain = SimulatedMarket(7).snapshot(["SPY"], T0).tickers["SPY"].chain
    bid, ask = chain.bid.copy(), chain.ask.copy()
    bid[0], ask[0] = 0.0, 0.01  # no bid
    bid[1], ask[1] = 0.0, 0.0  # no ask either
    quotes = ChainQuotes({"SPY": replace(chain, bid=bid, ask=ask)})

    def contract(i):
        expiry = chain.expiry[i].astype("datetime64[D]").astype(object)
        return OptionContract("SPY", expiry, Decimal(str(chain.strike[i])), "C" if chain.is_call[i] else "P")

    no_bid = quotes(contract(0))
    assert no_bid is not None and no_bid.bid == 0 and no_bid.ask == Decimal("0.01")
    assert quotes(contract(1)) is None
    assert np.isfinite(chain.bid[2]) and quotes(contract(2)) is not None


def test_chain_quotes_take_the_first_valid_row_where_spx_and_spxw_share_a_strike(shared_data):
    """SPX and SPXW list some of the same expiries and strikes: the first row with a valid quote is
    the quote, an expiry's rows are found whichever expiry is asked first, and an equal contract
    asked again gets the same quote back."""
    from dataclasses import replace

    import numpy as np

    from brokers.quote_source import ChainQuotes
    from domain.orders import OptionContract
    from tools.cboe import read_cboe_quote_table

    chain = read_cboe_quote_table(shared_data / "cboe" / "spx_quotedata_2022-02-04.csv")
    days = chain.expiry.astype("datetime64[D]")
    first_rows = {}
    for i, key in enumerate(zip(days.tolist(), chain.strike.tolist(), chain.is_call.tolist())):
        first_rows.setdefault(key, []).append(i)
    # Two roots quoting one contract differently, both quotes valid; the last such pair is in a later expiry.
    pairs = [rows for rows in first_rows.values() if len(rows) == 2 and chain.bid[rows[0]] > 0
             and chain.ask[rows[0]] > chain.bid[rows[0]] and chain.bid[rows[1]] > 0
             and chain.ask[rows[1]] > chain.bid[rows[1]] and chain.ask[rows[0]] != chain.ask[rows[1]]]
    (i, j), (later, _) = pairs[0], pairs[-1]
    assert chain.root[i] != chain.root[j] and days[later] > days[i]

    def contract(row, strike=None):
        return OptionContract(chain.underlying, days[row].astype(object), strike or Decimal(repr(float(chain.strike[row]))),
                              "C" if chain.is_call[row] else "P")

    def prices(row):
        return Decimal(repr(float(chain.bid[row]))), Decimal(repr(float(chain.ask[row])))

    quotes = ChainQuotes({chain.underlying: chain})
    assert (quotes(contract(later)).bid, quotes(contract(later)).ask) == prices(later)
    first = quotes(contract(i))
    assert (first.bid, first.ask) == prices(i) and prices(i) != prices(j)
    assert quotes(contract(i, Decimal(repr(float(chain.strike[i]))) + Decimal("0.000"))) is first
    bid = np.array(chain.bid)
    bid[i] = chain.ask[i] + 1.0  # the first root's quote crossed: the second root's is the quote
    crossed = ChainQuotes({chain.underlying: replace(chain, bid=bid)})(contract(i))
    assert (crossed.bid, crossed.ask) == prices(j)


# ------------------------------------------------------------------ one statement per walk level
async def test_a_limit_replace_writes_its_event_and_returns_the_status_in_one_statement(db):
    """`replace_limit` is one statement: it moves the limit, writes the `limit_replaced` event (with
    the previous limit) and returns the order's status; an unchanged limit writes nothing."""
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=2)).order_id)
    clock = Clock()
    broker = broker_for(db, book_for(p), clock, max_contracts_per_fill=1)
    await broker.place(replace(record, limit_price=D("-0.87")))  # marketable: one contract fills
    await broker.process()
    clock.advance(seconds=5)
    status = await broker.replace_limit(record.order_id, D("-0.95"))
    assert status == await broker.status(record.order_id)
    assert (status.limit_price, status.state, status.filled_quantity, status.avg_fill_price, status.updated_at) == (
        D("-0.95"), OrderState.PARTIALLY_FILLED, 1, D("-0.87"), clock.now)
    events = await broker.ledger.events(record.order_id)
    assert [(e["kind"], e["limit_price"], e["at"]) for e in events] == [
        ("placed", D("-0.87"), T0), ("fill", None, T0), ("limit_replaced", D("-0.95"), clock.now)]
    assert events[-1]["detail"] == {"previous": "-0.8700"}
    clock.advance(seconds=5)
    assert await broker.replace_limit(record.order_id, D("-0.95")) == status  # unchanged: no write at all
    assert len(await broker.ledger.events(record.order_id)) == 3
    assert await broker.process() == []  # -0.95 is not marketable against 0.87
    await broker.cancel(record.order_id)
    with pytest.raises(OrderNotWorking):
        await broker.replace_limit(record.order_id, D("-0.80"))
    assert (await broker.status(record.order_id)).limit_price == D("-0.95")
    assert [e["kind"] for e in await broker.ledger.events(record.order_id)][-1] == "cancelled"
    # Another account's order, and an order that does not exist, are refused by the same statement.
    other = broker_for(db, book_for(p), clock, account_id="paper-2")
    await run_row(db, "run-2")
    placed_elsewhere = await approve(db, (await stage(db, p, run_id="run-2")).order_id)
    await broker.place(placed_elsewhere)
    with pytest.raises(UnknownBrokerOrder):
        await other.replace_limit(placed_elsewhere.order_id, D("-0.90"))
    with pytest.raises(UnknownOrder):
        await broker.replace_limit("no-such-order", D("-0.90"))
    assert [e["kind"] for e in await broker.ledger.events(placed_elsewhere.order_id)] == ["placed"]


@contextlib.asynccontextmanager
async def holding_the_order_locks(db, broker, order_id):
    """A concurrent writer's transaction holding the working order's locks (`conn`, its locked row);
    it commits when the block ends."""
    async with db.pool.acquire() as conn, conn.transaction():
        yield conn, await broker._lock_working(conn, order_id)


async def waiting_for_the_locks(coro):
    """`coro` started as a task, checked to be waiting (on the locks held around it)."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(0.3)
    assert not task.done()  # waiting for the order's lock
    return task


async def test_a_limit_replace_waits_for_a_concurrent_cancel_and_sees_it(db):
    """The statement locks the order before it decides: a replace that arrives while a cancel
    holds the locks waits for it, then finds the order cancelled and changes nothing."""
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    broker = broker_for(db, book_for(p))
    await broker.place(record)
    async with holding_the_order_locks(db, broker, record.order_id) as (conn, bo):
        replacing = await waiting_for_the_locks(broker.replace_limit(record.order_id, D("-0.80")))
        await broker._cancel_locked(conn, bo, "withdrawn", "cancelled")
    with pytest.raises(OrderNotWorking):
        await replacing
    status = await broker.status(record.order_id)
    assert status.state == OrderState.CANCELLED and status.limit_price == D("-0.92")
    assert [e["kind"] for e in await broker.ledger.events(record.order_id)] == ["placed", "cancelled"]


async def test_a_limit_replace_that_waited_for_a_fill_reports_the_fill(db):
    """A fill committed while the replace waited for the lock is in the status it returns."""
    await run_row(db)
    p = bull_put_spread()
    record = await approve(db, (await stage(db, p, contracts=2)).order_id)
    broker = broker_for(db, book_for(p), max_contracts_per_fill=1)
    broker_order_id = await broker.place(record)
    fill = Fill(order_id=record.order_id, broker_order_id=broker_order_id, fill_id=f"{broker_order_id}-F001",
                quantity=1, price=D("-0.90"), leg_prices=(D("3.10"), D("2.20")), at=T0, commission=D("1.30"))
    async with holding_the_order_locks(db, broker, record.order_id) as (conn, bo):
        replacing = await waiting_for_the_locks(broker.replace_limit(record.order_id, D("-0.88")))
        await broker._apply_locked(conn, fill, bo)
    status = await replacing
    assert (status.state, status.filled_quantity, status.avg_fill_price, status.limit_price) == (
        OrderState.PARTIALLY_FILLED, 1, D("-0.90"), D("-0.88"))


async def test_a_venue_step_that_waits_for_a_concurrent_replace_decides_on_the_new_limit(db):
    """A step that may fill takes the order's locks; a limit replaced while it waited for them is
    the limit it decides on (here: no longer marketable, so nothing fills)."""
    await run_row(db)
    p = bull_call_spread()
    record = await approve(db, (await stage(db, p)).order_id)
    broker = broker_for(db, book_for(p))
    await broker.place(replace(record, limit_price=D("3.60")))  # marketable at 3.59
    [listed] = await broker.ledger.orders_in_states(["SUBMITTED"])
    async with holding_the_order_locks(db, broker, record.order_id) as (conn, _):
        await conn.execute("UPDATE broker_orders SET limit_price = 3.50 WHERE order_id = $1", record.order_id)
        stepping = await waiting_for_the_locks(broker._step_order(listed, broker.clock()))
    assert await stepping is None
    assert await broker.fills(record.order_id) == []
    assert (await broker.status(record.order_id)).state == OrderState.SUBMITTED
