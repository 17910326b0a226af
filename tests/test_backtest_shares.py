"""A backtest in which a short put is assigned: the shares it delivers are flattened by an exit the
backtest's approval policy approves, the backtest ends flat in shares, and the share leg's P&L is
the position's (what the Kelly journal and the backtest's metrics read)."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from agents.staging import idempotency_key, order_id_for
from brokers.book import Book
from brokers.paper import PaperBroker
from brokers.quote_source import ProviderQuotes
from domain.decision import OptionLeg, SizedTrade, TradeProposal
from domain.order_state import OrderState
from domain.orders import OptionContract
from service.backtest import BacktestSpec, run_backtest
from service.markets import source_of
from storage.backtests import closed_positions, database_url
from storage.book import BookStore
from storage.database import connect
from storage.orders import OrderRepository
from storage.runs import RunRepository
from tests.conftest import SHARED_DATA
from tools.chain import NEW_YORK
from tools.providers.history import HistoricalMarket

HISTORY = SHARED_DATA / "history"
PUT_EXPIRY = date(2022, 1, 5)  # a Wednesday SPY weekly


class _Stop(Exception):
    pass


def _stop_after_tuesday(day, n, total):
    if day.session == date(2022, 1, 4):
        raise _Stop


async def _sell_an_in_the_money_put(bt, market, account_id: str, at: datetime) -> str:
    """Sell one SPY put expiring PUT_EXPIRY, 10 points in the money, filled by the backtest's paper
    account at `at`; returns its order id. The backtest's recovery journals the fill."""
    quotes = ProviderQuotes(market, lambda: at)
    spot = Decimal(str(quotes.ticker_data("SPY").spot))
    strike = spot.quantize(Decimal(1)) + 10
    quote = quotes(OptionContract("SPY", PUT_EXPIRY, strike, "P"))
    assert quote is not None, f"no {strike} put in the {at:%Y-%m-%d} chain"
    leg = OptionLeg(expiry=PUT_EXPIRY, strike=strike, right="P", side="sell", bid=quote.bid, ask=quote.ask, mid=quote.mid)
    proposal = TradeProposal(
        ticker="SPY", structure="short_put", legs=[leg], underlying_price=float(spot), net_debit=-quote.mid,
        natural_debit=-quote.bid, max_profit=quote.mid * 100, max_loss=(strike - quote.mid) * 100, breakevens=[],
        probability_of_profit=0.1, delta=0.9, gamma=0.0, vega=0.0, theta=0.0, dte=1, rationale="test: to be assigned")
    run_id = "manual-short-put"
    await RunRepository(bt.pool).create_if_absent(
        run_id=run_id, slot_key=f"manual|{at.isoformat()}", watchlist="manual", as_of=at, tickers=["SPY"], seed=0,
        provider=market.name, config={}, market_source=source_of(market))
    key = idempotency_key(run_id, proposal)
    order, _ = await OrderRepository(bt.pool).stage(
        order_id=order_id_for(key), idempotency_key=key, run_id=run_id, sector="index", created_at=at,
        trade=SizedTrade(proposal=proposal, contracts=1, kelly_fraction=0.0, applied_fraction=0.0, win_rate=0.0,
                         payoff_ratio=0.0, capital_at_risk=proposal.max_loss),
        limit_price=(-quote.bid).quantize(Decimal("0.01")), requires_acknowledgement=False)
    await OrderRepository(bt.pool).transition(order.order_id, OrderState.APPROVED, actor="test", reason="to be assigned")
    broker = PaperBroker(bt, quotes, clock=lambda: at, account_id=account_id)
    await broker.place(order)
    assert [f.quantity for f in await broker.process()] == [1]
    await Book(bt, account_id=account_id).ingest_fills()
    return order.order_id


async def test_an_assigned_put_in_a_backtest_is_flattened_and_the_backtest_ends_flat_in_shares(db, pg_server):
    market = HistoricalMarket(HISTORY)
    # The graph is kept from trading (no signal reaches conviction 1 with all four sources agreeing):
    # the one position is the put sold below, so every number here is that position's.
    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 7), ("SPY",), str(HISTORY),
                        overrides={"conviction_threshold": 1.0, "min_agreeing_sources": 4})
    backtest_id = spec.backtest_id(market.fingerprint())
    database, account_id = f"hedgegraph_{backtest_id}", f"backtest-{backtest_id}"
    try:
        with pytest.raises(_Stop):
            await run_backtest(db, spec, market=market, on_day=_stop_after_tuesday)
        # Wednesday morning, the put's expiry day (sold then, so no exit rule closes it before the
        # close: the days-to-expiry rule would have bought back one sold earlier).
        bt = await connect(database_url(db.url, database), max_size=4)
        try:
            opened = await _sell_an_in_the_money_put(bt, market, account_id,
                                                     datetime(2022, 1, 5, 10, 0, tzinfo=NEW_YORK))
        finally:
            await bt.close()

        # Wednesday to Friday: the put is assigned at Wednesday's close, the shares' exit is staged and
        # approved then, and goes out at Thursday's slot.
        result = await run_backtest(db, spec, market=market)
        assert result.continued_after == date(2022, 1, 4)
        bt = await connect(result.database_url, max_size=2)
        try:
            pool = bt.pool
            assert await pool.fetchval("SELECT count(*) FROM broker_share_positions WHERE quantity <> 0") == 0
            position = await pool.fetchrow("SELECT * FROM strategy_positions WHERE order_id = $1", opened)
            assert (position["status"], position["shares_open"]) == ("assigned", 0)
            assert await pool.fetchval("SELECT count(*) FROM strategy_positions WHERE status = 'open'") == 0

            [expiry] = await pool.fetch("SELECT * FROM broker_expiries")
            assert (expiry["outcome"], expiry["quantity"]) == ("assigned", -1)
            exit_order = await pool.fetchrow("SELECT * FROM orders WHERE closes_position_id = $1",
                                             position["position_id"])
            assert (exit_order["exit_rule"], exit_order["structure"], exit_order["state"], exit_order["quantity"]) == \
                ("delivered_shares", "close_shares", "FILLED", 100)
            approval = await pool.fetchrow("SELECT * FROM approvals WHERE order_id = $1", exit_order["order_id"])
            assert (approval["approver"], approval["action"]) == ("backtest-policy", "approve")
            [sale] = await pool.fetch("SELECT * FROM broker_fills WHERE order_id = $1", exit_order["order_id"])
            [opening] = await pool.fetch("SELECT * FROM broker_fills WHERE order_id = $1", opened)
            assert sale["filled_at"] == datetime(2022, 1, 6, 15, 30, tzinfo=NEW_YORK)  # the session after delivery
            assert sale["commission"] == Decimal("1.00")

            premium = -opening["price"] * 100
            assignment_cost = expiry["strike"] * 100
            sale_proceeds = -sale["price"] * 100
            commissions = opening["commission"] + sale["commission"]
            assert position["realized_pnl"] == premium - assignment_cost + sale_proceeds - commissions
            assert position["closed_at"] == sale["filled_at"]
            # The share fill is journaled like any other, and the position is a closed outcome with
            # that whole P&L for the Kelly journal and the backtest's metrics.
            assert await pool.fetchval("SELECT structure FROM trade_journal WHERE fill_id = $1",
                                       sale["fill_id"]) == "close_shares"
            [outcome] = await BookStore(pool, account_id).closed_outcomes(datetime(2022, 1, 8, tzinfo=NEW_YORK))
            assert outcome["pnl"] == position["realized_pnl"]
            assert [r["realized_pnl"] for r in await closed_positions(pool, account_id)] == [position["realized_pnl"]]
            # Flat: the last close's net liquidation is the opening cash plus what was realized.
            opening_cash = await pool.fetchval("SELECT opening_cash FROM broker_accounts WHERE account_id = $1",
                                               account_id)
            assert result.days[-1].net_liquidation == opening_cash + position["realized_pnl"]
        finally:
            await bt.close()
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE);")
