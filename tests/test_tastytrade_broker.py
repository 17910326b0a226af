"""The tastytrade adapter: the real `tastytrade` SDK against a fake of its REST API on 127.0.0.1
(tests/fake_tastytrade.py), orders driven by the order manager like any other."""
from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest

from domain.orders import OptionContract
from domain.order_state import OrderState
from brokers.tastytrade import TastytradeBroker, occ_symbol, parse_occ, probe
from config.connections import load_connections
from tests.fake_tastytrade import ACCOUNT, FakeTastytrade
from tests.live_broker_helpers import approved_order, history, manager_for

SECRET = "tt-client-secret-9f8e7d"
REFRESH = "tt-refresh-token-1a2b3c"


@pytest.fixture
def tasty():
    fake = FakeTastytrade(client_secret=SECRET, refresh_token=REFRESH).start()
    yield fake
    fake.stop()


def config_for(fake, **env):
    return load_connections({"HEDGEGRAPH_BROKER": "tastytrade", "HEDGEGRAPH_TASTYTRADE_API_URL": fake.url,
                             "TASTYTRADE_CLIENT_SECRET": SECRET, "TASTYTRADE_REFRESH_TOKEN": REFRESH, **env}).tastytrade


async def connected(db, fake, clock) -> TastytradeBroker:
    return await TastytradeBroker(db, config_for(fake), clock=clock, poll_seconds=0.05).connect()


def test_occ_symbols_round_trip():
    from datetime import date

    symbol = occ_symbol("SPY", date(2026, 12, 18), Decimal("580"), "P")
    assert symbol == "SPY   261218P00580000"
    assert parse_occ(symbol).label() == "SPY 2026-12-18 580P"
    assert parse_occ(occ_symbol("AAPL", date(2027, 1, 15), Decimal("232.5"), "C")).strike == Decimal("232.5")


async def test_dry_run_then_the_approved_order_fills_through_the_order_manager(db, tasty, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    clock, order = await approved_order(db)
    broker = await connected(db, tasty, clock)
    try:
        preview = await broker.what_if(order)
        assert preview.initial_margin_change == Decimal("500.00") and preview.method == "tastytrade_dry_run"
        assert preview.buying_power_change == Decimal("-500.00")
        assert preview.commission == Decimal("1.00") * order.quantity * len(order.legs) + Decimal("0.30")
        assert preview.margin_before == Decimal("4000.00") and preview.warnings
        assert not tasty.orders, "a dry run places nothing"

        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.outcome == "transmitted" and execution.filled_quantity == order.quantity, execution
        [sent] = tasty.orders.values()
        assert sent["external-identifier"] == order.order_id
        # Our signed limit (+ pay) goes out as tastytrade's price with its effect (Debit = pay).
        assert Decimal(sent["price"]) == abs(order.limit_price)
        assert sent["price-effect"] == ("Debit" if order.limit_price > 0 else "Credit")
        assert {leg["action"] for leg in sent["legs"]} <= {"Buy to Open", "Sell to Open"}
        [fill] = await broker.fills(order.order_id)
        assert fill.quantity == order.quantity and fill.price == order.limit_price
        # The fees tastytrade booked on the fill's transactions: $1.12 a contract on every leg.
        contracts = sum(order.quantity * int(leg.get("ratio", 1)) for leg in order.proposal["legs"])
        assert fill.commission == Decimal("1.12") * contracts
        assert any(path.startswith(f"/accounts/{ACCOUNT}/transactions") for _, path, _ in tasty.requests)
        assert (await broker.status(order.order_id)).state == OrderState.FILLED
        assert await db.pool.fetchval("SELECT count(*) FROM trade_journal WHERE order_id = $1", order.order_id) == 1
    finally:
        await broker.close()
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err):
        assert SECRET not in text and REFRESH not in text
    assert any("/oauth/token" == path for _, path, _ in tasty.requests)


async def test_partial_fill_then_cancel_and_a_rejection_with_its_reason(db, tasty):
    tasty.policy = "partial:1"
    clock, order = await approved_order(db)
    broker = await connected(db, tasty, clock)
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.filled_quantity == 1
        status = await broker.status(order.order_id)
        assert status.state == OrderState.CANCELLED and status.filled_quantity == 1
        assert [s for s, _ in await history(db, order.order_id)][-3:] == ["SUBMITTED", "PARTIALLY_FILLED", "CANCELLED"]
        assert any(method == "DELETE" for method, _, _ in tasty.requests)
    finally:
        await broker.close()


async def test_a_rejected_order_shows_tastytrades_reason(db, tasty):
    tasty.policy = "reject:Insufficient buying power: requires 25000.00"
    clock, order = await approved_order(db)
    broker = await connected(db, tasty, clock)
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.outcome == "refused" and "Insufficient buying power" in execution.reasons[0]
        state, reason = (await history(db, order.order_id))[-1]
        assert state == "REJECTED" and "margin_check_failed" in reason
    finally:
        await broker.close()


async def test_a_dropped_connection_makes_the_order_unknown_until_tastytrade_reports_it(db, tasty):
    tasty.policy = "hold"
    clock, order = await approved_order(db)
    broker = await connected(db, tasty, clock)
    try:
        await broker.place(order)
        assert (await broker.status(order.order_id)).state == OrderState.SUBMITTED
        tasty.stop()
        assert (await broker.status(order.order_id)).state == OrderState.UNKNOWN
        assert "connection to tastytrade lost" in (await history(db, order.order_id))[-1][1]
        [sent] = tasty.orders.values()
        tasty.fill(sent["id"], None)  # the venue filled it while we could not hear
        tasty.start()
        status = await broker.status(order.order_id)
        assert status.state == OrderState.FILLED and status.filled_quantity == order.quantity
        assert [s for s, _ in await history(db, order.order_id)][-3:] == ["SUBMITTED", "UNKNOWN", "FILLED"]
    finally:
        await broker.close()


async def test_balances_and_positions_come_from_tastytrade(db, tasty):
    tasty.positions = [{"account-number": ACCOUNT, "symbol": "SPY   261218P00580000", "instrument-type": "Equity Option",
                        "underlying-symbol": "SPY", "quantity": "2", "quantity-direction": "Short",
                        "close-price": "3.10", "average-open-price": "3.25", "multiplier": "100",
                        "cost-effect": "Credit", "is-suppressed": False, "is-frozen": False,
                        "realized-day-gain": "0.0", "realized-today": "12.5",
                        "created-at": "2026-11-20T15:00:00.000+00:00", "updated-at": "2026-11-20T15:00:00.000+00:00"}]
    broker = await connected(db, tasty, clock=lambda: __import__("datetime").datetime.now(
        __import__("datetime").timezone.utc))
    try:
        [position] = await broker.positions()
        assert position.contract.label() == "SPY 2026-12-18 580P" and position.quantity == -2
        assert position.avg_price == Decimal("3.25")
        account = await broker.account()
        assert account.account_id == ACCOUNT and account.net_liquidation == Decimal("90400.00")
        assert account.margin_used == Decimal("4000.00") and account.realized_pnl_today == Decimal("12.5")
    finally:
        await broker.close()


async def test_doctor_probe_logs_in_and_names_a_refused_login_without_the_secret(tasty, caplog):
    caplog.set_level(logging.DEBUG)
    result = await probe(config_for(tasty))
    assert result["status"] == "ok" and ACCOUNT in result["detail"] and "sandbox" in result["detail"]
    refused = await probe(config_for(tasty, TASTYTRADE_REFRESH_TOKEN="expired-token"))
    assert refused["status"] == "error" and "login refused" in refused["detail"]
    assert "invalid_grant" in refused["detail"]
    assert SECRET not in json.dumps([result, refused]) and SECRET not in caplog.text
    assert "expired-token" not in json.dumps(refused) and "expired-token" not in caplog.text


def nested_chain(ticker: str) -> dict:
    strikes = [{"strike-price": str(k), "call": occ_symbol(ticker, __import__("datetime").date(2026, 12, 18), Decimal(k), "C"),
                "put": occ_symbol(ticker, __import__("datetime").date(2026, 12, 18), Decimal(k), "P"),
                "call-streamer-symbol": f".{ticker}261218C{k}", "put-streamer-symbol": f".{ticker}261218P{k}"}
               for k in ("575", "580")]
    return {"underlying-symbol": ticker, "root-symbol": ticker, "option-chain-type": "Standard",
            "shares-per-contract": 100, "tick-sizes": [{"value": "0.01"}],
            "expirations": [{"expiration-type": "Regular", "expiration-date": "2026-12-18", "days-to-expiration": 28,
                             "settlement-type": "PM", "strikes": strikes}]}


async def test_nested_chain_and_dxlink_quotes_with_greeks(db, tasty):
    from datetime import date

    from brokers.tastytrade_market import TastytradeMarketData

    await tasty.start_dxlink()
    tasty.chains["SPY"] = nested_chain("SPY")
    tasty.streamed[".SPY261218P580"] = ("3.00", "3.20", {"volatility": "0.21", "delta": "-0.31", "gamma": "0.012",
                                                          "theta": "-0.09", "rho": "-0.1", "vega": "0.55"})
    broker = await connected(db, tasty, clock=lambda: __import__("datetime").datetime.now(
        __import__("datetime").timezone.utc))
    market = TastytradeMarketData(broker)
    try:
        listed = await market.chain("SPY")
        assert {o.contract.label() for o in listed} == {"SPY 2026-12-18 575C", "SPY 2026-12-18 575P",
                                                        "SPY 2026-12-18 580C", "SPY 2026-12-18 580P"}
        put = OptionContract("SPY", date(2026, 12, 18), Decimal("580"), "P")
        call = OptionContract("SPY", date(2026, 12, 18), Decimal("575"), "C")
        got = await market.quotes([put, call], timeout=1.0)
        quote = got.quotes[put]
        assert (quote.bid, quote.ask) == (Decimal("3.00"), Decimal("3.20"))
        assert quote.delta == pytest.approx(-0.31) and quote.iv == pytest.approx(0.21) and quote.vega == pytest.approx(0.55)
        assert got.missing == [f"{call.label()}: no two-sided quote from DXLink within 1s"]
        auth = [m for m in tasty.dxlink_messages if m["type"] == "AUTH"]
        assert auth and auth[0]["token"] == tasty.dxlink_token
    finally:
        await broker.close()
        await tasty.stop_dxlink()


async def test_a_fill_whose_fees_tastytrade_never_books_is_recorded_with_commission_zero(db, tasty, caplog):
    tasty.book_fees = False
    clock, order = await approved_order(db)
    broker = await TastytradeBroker(db, config_for(tasty), clock=clock, poll_seconds=0.05,
                                    fee_wait_seconds=0).connect()
    try:
        execution = await manager_for(db, broker, clock).transmit(order.order_id)
        assert execution.filled_quantity == order.quantity, execution
        [fill] = await broker.fills(order.order_id)
        assert fill.commission == 0 and "booked no fees" in caplog.text
    finally:
        await broker.close()
