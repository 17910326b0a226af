"""Shared builders for the broker, limit-walk, journal and flatten tests (real Postgres)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from agents.staging import idempotency_key, opening_limit_price, order_id_for
from domain.orders import LegQuote, OptionContract
from domain.order_state import OrderState
from brokers.quote_source import QuoteBook
from domain.decision import OptionLeg, SizedTrade, TradeProposal
from storage.orders import OrderRepository
from storage.runs import RunRepository

D = Decimal
EXPIRY = date(2026, 12, 18)
# 10:00 New York on a trading day, well before the close.
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


def contract(strike: str, right: str, ticker: str = "SPY", expiry: date = EXPIRY) -> OptionContract:
    return OptionContract(ticker, expiry, D(strike), right)


def quote(bid: str, ask: str, underlying: str | None = "600", **greeks) -> LegQuote:
    return LegQuote(bid=D(bid), ask=D(ask), underlying_price=None if underlying is None else D(underlying), **greeks)


def leg(strike: str, right: str, side: str, bid="1.00", ask="1.10", expiry=EXPIRY, ratio=1) -> OptionLeg:
    b, a = D(bid), D(ask)
    return OptionLeg(expiry=expiry, strike=D(strike), right=right, side=side, ratio=ratio, bid=b, ask=a, mid=(b + a) / 2)


def proposal(legs: list[OptionLeg], *, ticker="SPY", structure="bull_put_spread", max_loss="400") -> TradeProposal:
    net = sum((l.sign * l.ratio * l.mid for l in legs), D(0))
    natural = sum((l.ratio * (l.ask if l.sign > 0 else -l.bid) for l in legs), D(0))
    return TradeProposal(
        ticker=ticker, structure=structure, legs=legs, underlying_price=600.0, net_debit=net, natural_debit=natural,
        max_profit=D("100"), max_loss=D(max_loss), breakevens=[579.0], probability_of_profit=0.7,
        delta=0.1, gamma=-0.001, vega=-0.05, theta=0.02, dte=28)


def bull_put_spread() -> TradeProposal:
    """Sell the 580 put (3.00/3.20), buy the 575 put (2.10/2.26): mid -0.92, natural -0.74."""
    return proposal([leg("580", "P", "sell", "3.00", "3.20"), leg("575", "P", "buy", "2.10", "2.26")])


def bull_call_spread() -> TradeProposal:
    """Buy the 600 call (5.00/5.20), sell the 610 call (1.50/1.60): mid 3.55, natural 3.70."""
    return proposal([leg("600", "C", "buy", "5.00", "5.20"), leg("610", "C", "sell", "1.50", "1.60")],
                    structure="bull_call_spread", max_loss="355")


def book_for(*proposals: TradeProposal, underlying="600") -> QuoteBook:
    book = QuoteBook()
    for p in proposals:
        for l in p.legs:
            book.set(OptionContract(p.ticker, l.expiry, l.strike, l.right),
                     LegQuote(bid=l.bid, ask=l.ask, underlying_price=D(underlying)))
    return book


async def run_row(db, run_id="run-1") -> None:
    await RunRepository(db.pool).create_if_absent(
        run_id=run_id, slot_key=f"core|2026-11-20|{run_id}", watchlist="core", as_of=T0, tickers=["SPY"], seed=7,
        provider="simulated", config={})


async def stage(db, p: TradeProposal, contracts: int = 3, run_id="run-1", trade: SizedTrade | None = None,
                limit: Decimal | None = None):
    repo = OrderRepository(db.pool)
    trade = trade or SizedTrade(proposal=p, contracts=contracts, kelly_fraction=0.1, applied_fraction=0.01,
                                win_rate=0.8, payoff_ratio=0.2, capital_at_risk=p.max_loss * contracts)
    key = idempotency_key(run_id, p)
    record, _ = await repo.stage(order_id=order_id_for(key), idempotency_key=key, run_id=run_id, trade=trade,
                                 limit_price=opening_limit_price(p) if limit is None else limit,
                                 requires_acknowledgement=False, sector="index")
    return record


async def approve(db, order_id: str, approver="approver@example"):
    return await OrderRepository(db.pool).transition(order_id, OrderState.APPROVED, actor=approver,
                                                     reason="approved in test")
