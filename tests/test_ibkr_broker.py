"""The IBKR adapter: ib_async, unmodified, against a fake TWS on 127.0.0.1 (tests/fake_tws.py).

Orders go the one way every order goes: staged by a decision run, approved, then re-checked, placed,
walked and journaled by the order manager. Nothing of ours is mocked; the fake speaks the socket
protocol at the network edge.
"""
from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from brokers.base import OrderNotApproved

from brokers.ibkr import IbkrBroker
from brokers.live import BrokerDisconnected
from domain.order_state import OrderState
from config.connections import IbkrConfig
from service import approvals
from storage.orders import OrderRepository
from tests.fake_tws import ACCOUNT, FakeTws
from tests.live_broker_helpers import approved_order, history, manager_for
from tests.test_order_manager import AS_OF, stage_two

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture
async def tws():
    fake = await FakeTws().start()
    yield fake
    await fake.stop()


async def connected(db, tws, clock, **config) -> IbkrBroker:
    broker = IbkrBroker(db, IbkrConfig(port=tws.port, client_id=11, timeout_s=2, **config), clock=clock)
    return await broker.connect()


async def test_an_approved_order_goes_to_ibkr_as_a_bag_combo_and_its_fill_is_journaled(db, tws):
    clock, order = await approved_order(db)
    broker = await connected(db, tws, clock)
    try:
        what_if = await broker.what_if(order)
        assert what_if.initial_margin_change == Decimal("500") and what_if.method == "ibkr_what_if"
        assert what_if.margin_after == Decimal("10500")
        assert not tws.orders, "what-if places nothing"

        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.outcome == "transmitted" and execution.filled_quantity == order.quantity, execution
        [sent] = tws.orders.values()
        assert sent.order_ref == order.order_id and sent.quantity == order.quantity and sent.limit == order.limit_price
        assert [(leg.action, leg.ratio) for leg in sent.legs] == [(leg.side.upper(), leg.ratio) for leg in order.legs]
        assert (await broker.status(order.order_id)).state == OrderState.FILLED
        [fill] = await broker.fills(order.order_id)
        assert fill.quantity == order.quantity and fill.price == order.limit_price
        assert fill.commission == Decimal("0.65") * order.quantity * len(order.legs)
        assert await db.pool.fetchval("SELECT count(*) FROM trade_journal WHERE order_id = $1", order.order_id) == 1
        assert [s for s, _ in await history(db, order.order_id)][-2:] == ["SUBMITTED", "FILLED"]
        # Placing again (a retried executor) sends nothing new.
        assert await broker.place(await OrderRepository(db.pool).get(order.order_id))
        assert len(tws.orders) == 1
    finally:
        await broker.close()


async def test_only_an_approved_order_is_ever_sent(db, tws):
    ctx, clock, orders, _ = await stage_two(db)
    broker = await connected(db, tws, clock)
    try:
        with pytest.raises(OrderNotApproved):
            await broker.place(orders[0])
        assert not tws.orders
    finally:
        await broker.close()


async def test_a_partial_fill_then_the_walk_cancels_the_rest(db, tws):
    tws.policy = "partial:1"
    clock, order = await approved_order(db)
    assert order.quantity > 1
    broker = await connected(db, tws, clock)
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.filled_quantity == 1
        status = await broker.status(order.order_id)
        assert status.state == OrderState.CANCELLED and status.filled_quantity == 1
        states = [s for s, _ in await history(db, order.order_id)]
        assert states[-3:] == ["SUBMITTED", "PARTIALLY_FILLED", "CANCELLED"]
        assert "limit walk deadline" in (await history(db, order.order_id))[-1][1]
        assert [f.quantity for f in await broker.fills(order.order_id)] == [1]
        assert any(f[0] == "4" for f in tws.received), "a cancelOrder went to TWS"
    finally:
        await broker.close()


async def test_a_rejected_order_carries_ibkrs_reason(db, tws):
    tws.policy = "reject:Insufficient margin: initial margin 25000 exceeds available funds"
    clock, order = await approved_order(db)
    broker = await connected(db, tws, clock)
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.outcome == "refused"
        assert "Insufficient margin" in execution.reasons[0] and "201" in execution.reasons[0]
        state, reason = (await history(db, order.order_id))[-1]
        assert state == "REJECTED" and "Insufficient margin" in reason
    finally:
        await broker.close()


async def test_a_dropped_connection_makes_the_order_unknown_until_ibkr_reports_it(db, tws):
    tws.policy = "hold"
    clock, order = await approved_order(db)
    broker = await connected(db, tws, clock)
    try:
        await broker.place(order)
        assert (await broker.status(order.order_id)).state == OrderState.SUBMITTED
        tws.drop_clients()
        for _ in range(50):
            if (await broker.book.state(order.order_id)) == OrderState.UNKNOWN:
                break
            await asyncio.sleep(0.05)
        assert (await broker.book.state(order.order_id)) == OrderState.UNKNOWN
        assert "connection to TWS/IB Gateway" in (await history(db, order.order_id))[-1][1]
        # While nobody listened, the venue filled it: the reconnect's executions settle it.
        [sent] = tws.orders.values()
        tws.fill(sent.order_id, sent.quantity)
        status = await broker.status(order.order_id)  # reconnects and reconciles
        assert status.state == OrderState.FILLED and status.filled_quantity == order.quantity
        assert [s for s, _ in await history(db, order.order_id)][-3:] == ["SUBMITTED", "UNKNOWN", "FILLED"]
        # The manager's recovery journals what was filled while it was not watching.
        await manager_for(db, broker, clock).recover()
        assert await db.pool.fetchval("SELECT count(*) FROM trade_journal WHERE order_id = $1", order.order_id) == 1
    finally:
        await broker.close()


async def test_an_order_still_working_after_a_reconnect_goes_back_to_submitted(db, tws):
    tws.policy = "hold"
    clock, order = await approved_order(db)
    broker = await connected(db, tws, clock)
    try:
        await broker.place(order)
        tws.drop_clients()
        for _ in range(50):
            if (await broker.book.state(order.order_id)) == OrderState.UNKNOWN:
                break
            await asyncio.sleep(0.05)
        status = await broker.status(order.order_id)
        assert status.state == OrderState.SUBMITTED
        assert "reconciled after reconnect: IBKR reports Submitted" in (await history(db, order.order_id))[-1][1]
    finally:
        await broker.close()


async def test_positions_and_account_come_from_ibkr(db, tws):
    tws.positions = [(777001, "SPY", "20261218", 580.0, "P", -2, 310.0)]
    broker = await connected(db, tws, clock=lambda: AS_OF)
    try:
        [position] = await broker.positions()
        assert position.contract.label() == "SPY 2026-12-18 580P" and position.quantity == -2
        assert position.avg_price == Decimal("3.1")
        account = await broker.account()
        assert account.account_id == ACCOUNT and account.net_liquidation == Decimal("250000")
        assert account.margin_used == Decimal("12000") and account.free_margin == Decimal("238000")
    finally:
        await broker.close()


async def test_a_closed_port_is_named_precisely(db):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = IbkrBroker(db, IbkrConfig(port=port, timeout_s=1))
    with pytest.raises(BrokerDisconnected, match=f"nothing listens on 127.0.0.1:{port} \\(connection refused\\)"):
        await broker.connect()


async def test_the_approver_sees_the_configured_brokers_preview(db, tws, monkeypatch):
    ctx, clock, orders, _ = await stage_two(db)
    order = orders[0]
    # Paper by default: its own margin rule and commission, and the book's Greeks after the trade.
    monkeypatch.delenv("HEDGEGRAPH_BROKER", raising=False)
    paper = (await approvals.order_review(ctx, order.order_id))["broker_preview"]
    assert paper["available"] and paper["broker"] == "paper" and paper["method"] in ("max_loss", "reg_t")
    assert Decimal(paper["commission"]) == Decimal("0.65") * order.quantity * len(order.legs)
    assert paper["book_greeks_before"]["delta"] == 0 and paper["book_greeks_after"]["delta"] != 0
    # IBKR configured: IB's whatIfOrder numbers, and nothing is placed.
    monkeypatch.setenv("HEDGEGRAPH_BROKER", "ibkr")
    monkeypatch.setenv("HEDGEGRAPH_IBKR_PORT", str(tws.port))
    ibkr = (await approvals.order_review(ctx, order.order_id))["broker_preview"]
    assert ibkr["available"] and ibkr["method"] == "ibkr_what_if", ibkr
    assert Decimal(ibkr["initial_margin_change"]) == Decimal("500") and Decimal(ibkr["margin_after"]) == Decimal("10500")
    assert not tws.orders
    # A broker that cannot be reached is named, not hidden.
    await tws.stop()
    down = (await approvals.order_review(ctx, order.order_id))["broker_preview"]
    assert down["available"] is False and "connection refused" in down["reason"]


async def test_market_data_chains_quotes_and_bars_say_whether_they_are_delayed(db, tws):
    from datetime import date

    from domain.orders import OptionContract
    from brokers.ibkr_market import IbkrMarketData

    tws.chain["SPY"] = (["20261218", "20261120"], [575.0, 580.0, 585.0])
    tws.option_quotes[("SPY", "20261218", 580.0, "P")] = (3.0, 3.2, 0.21, -0.31, 0.012, 0.55, -0.09, 601.5)
    tws.daily["SPY"] = [("20261118", 598.0, 603.0, 597.0, 601.0, 5.1e7), ("20261119", 601.0, 604.0, 599.5, 602.5, 4.8e7)]
    broker = await connected(db, tws, clock=lambda: AS_OF)
    market = IbkrMarketData(broker)
    try:
        params = await market.chain_parameters("SPY")
        assert params.expirations == (date(2026, 11, 20), date(2026, 12, 18))
        assert params.strikes == (Decimal("575"), Decimal("580"), Decimal("585")) and params.multiplier == 100
        put = OptionContract("SPY", date(2026, 12, 18), Decimal("580"), "P")
        call = OptionContract("SPY", date(2026, 12, 18), Decimal("585"), "C")
        got = await market.quotes([put, call])
        quote = got.quotes[put]
        assert (quote.bid, quote.ask, quote.underlying_price) == (Decimal("3"), Decimal("3.2"), Decimal("601.5"))
        assert quote.delta == pytest.approx(-0.31) and quote.iv == pytest.approx(0.21)
        assert got.data_types[put] == "delayed" and got.data_type == "delayed"
        assert got.missing == [f"{call.label()}: IBKR error 354: Requested market data is not subscribed."]
        bars = await market.daily_bars("SPY", 2)
        assert list(bars.close) == [601.0, 602.5] and str(bars.dates[-1]) == "2026-11-19"
        sent = sum(1 for fields in tws.received if fields[0] == "20")
        await market.daily_bars("SPY", 2)  # the same request within 15 s: IB's pacing rule, answered locally
        assert sum(1 for fields in tws.received if fields[0] == "20") == sent
        tws.market_data_type = 1
        assert (await market.quotes([put])).data_type == "live"
    finally:
        await broker.close()


async def test_an_ib_warning_is_not_a_rejection_and_the_walk_still_cancels_the_unfilled_order(db, tws):
    tws.policy = "warn"
    clock, order = await approved_order(db)
    broker = await connected(db, tws, clock)
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.outcome == "transmitted" and execution.filled_quantity == 0
        state, reason = (await history(db, order.order_id))[-1]
        assert state == "CANCELLED" and "limit walk deadline" in reason
    finally:
        await broker.close()
