"""The book: what the account owns after its fills, valued, settled and exited.

- **Positions from fills.** Each opening order becomes one strategy position (its structure as one
  unit, linked to its order, run and thesis); every broker fill is booked once (`position_fills`
  is keyed by the fill id, the position row is locked while it changes, so `ingest_fills` is safe
  to call at any time and concurrently). A fill of an order with `closes_position_id` reduces that
  position and realizes P&L = -(entry + close price) x units x multiplier - commission (prices
  per share per unit, signed + paid / - received); closing more than is open is refused.
  Commissions are realized when paid (an opening fill realizes -commission), so at every moment
  NLV = opening cash + realized + unrealized, and NLV = cash + sum of marks (+ shares).
- **Marks.** `mark` values each open position at its legs' mids (a leg without a quote at its
  entry price, named in `missing`), with Greeks from the quotes, and records an account snapshot.
- **Expiry.** `settle_expired` settles positions whose legs expired (`brokers.expiry`): cash-settled
  indexes at intrinsic value, equity options into shares (the broker's side is
  `PaperBroker.settle_expiries`), worthless ones at zero. `pin_risk` warns the session before.
- **Exits.** `exit_orders` applies the SPEC rules (`config.settings.BookConfig`) and
  `stage_exits` stages each as a closing order for approval, one live exit per position.
- **Delivered shares.** The shares an exercise or assignment delivers stay the position's
  (`shares_open`, at their price at delivery, as the broker books them; the options' intrinsic
  value is realized at settlement). The book does not mean to own stock: from the first exit check
  after the delivery, `exit_orders` flattens them (rule `delivered_shares`: sell long shares, buy
  back short ones) with one order for the shares (`domain.orders` SHARES leg, through the same
  approval, order manager and broker) at the marketable side of the shares quote; delivery is
  after the close, so the order goes out at the next session's open. Its fill realizes
  -(cost at delivery + fill price x shares) - commission into the position; the position counts as
  an outcome (Kelly, `BookStore.closed_outcomes`) once it is flat, `closed_at` then. Shares count
  in the Greeks (delta 1 each) and in what the risk gate sees (`open_positions`).
- **The account the gate reads.** `account_state` and `open_positions`.
- **Reconciliation.** `reconcile` compares the broker's leg positions with the book's.

Greeks and units as in `brokers.portfolio`; money Decimal; times timezone-aware.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from brokers.base import MarginUnavailable
from domain.orders import CENT, BrokerPosition, ComboLeg, LegQuote, OptionContract, Order, PortfolioGreeks, QuoteSource
from brokers.expiry import CASH_SETTLED, is_expired, settlement
from brokers.flatten import FlattenOrder
from brokers.margin import margin_requirement
from brokers.portfolio import portfolio_greeks
from brokers.quote_source import share_prices_of
from config.settings import BookConfig
from domain.decision import AccountState, OptionLeg, Position
from storage.book import LIVE_ORDER_STATES, BookRead, BookStore
from storage.broker_ledger import ShareHolding
from storage.journal import AccountSnapshot, Journal
from storage.orders import OrderRepository, order_from_row
from storage.runs import RunRepository
from tools.chain import NEW_YORK
from tools.market_hours import day_start

COST_PLACES = Decimal("0.00000001")
MONEY_PLACES = Decimal("0.0001")
ZERO = Decimal(0)


class BookError(ValueError):
    """A fill or event the book refuses (closing more than is open, legs that do not match ...)."""


# ------------------------------------------------------------------ value types
@dataclass(frozen=True)
class BookLeg:
    """One leg of a strategy position per unit; `cost` = sum of its unsigned fill price x units
    still open (per share), so cost / units_open is the leg's average entry price."""

    expiry: date
    strike: Decimal
    right: str
    side: str
    ratio: int
    cost: Decimal

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1

    def contract(self, ticker: str, multiplier: int) -> OptionContract:
        return OptionContract(ticker, self.expiry, self.strike, self.right, multiplier)

    def to_json(self) -> dict[str, Any]:
        return {"expiry": self.expiry.isoformat(), "strike": str(self.strike), "right": self.right,
                "side": self.side, "ratio": self.ratio, "cost": str(self.cost)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "BookLeg":
        leg = ComboLeg.from_any(value)
        return cls(leg.expiry, leg.strike, leg.right, leg.side, leg.ratio, Decimal(str(value.get("cost", "0"))))


@dataclass(frozen=True)
class StrategyPosition:
    position_id: str
    order_id: str
    run_id: str
    account_id: str
    ticker: str
    sector: str
    structure: str
    legs: tuple[BookLeg, ...]
    multiplier: int
    units_opened: int
    units_open: int
    entry_cost: Decimal  # signed entry price x units still open, per share
    entry_price: Decimal  # average signed entry price per share per unit
    max_profit: Decimal | None  # dollars per unit
    max_loss: Decimal | None  # dollars per unit
    probability_of_profit: float | None
    thesis: str
    opened_at: datetime
    closed_at: datetime | None
    status: str
    realized_pnl: Decimal
    commissions: Decimal
    shares_open: int = 0  # signed shares its options delivered at expiry, still held
    shares_cost: Decimal = ZERO  # signed: shares_open x their price at delivery

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "StrategyPosition":
        values = {k: row[k] for k in cls.__dataclass_fields__}
        values["legs"] = tuple(BookLeg.from_json(leg) for leg in row["legs"])
        return cls(**values)

    @property
    def expiry(self) -> date:
        return min(leg.expiry for leg in self.legs)

    def contracts(self) -> list[OptionContract]:
        return [leg.contract(self.ticker, self.multiplier) for leg in self.legs]

    def holdings(self) -> list[tuple[OptionContract, int]]:
        """The open option legs (the delivered shares are `share_holdings`)."""
        return [(leg.contract(self.ticker, self.multiplier), leg.sign * leg.ratio * self.units_open) for leg in self.legs]

    def share_holdings(self) -> list[tuple[OptionContract, int]]:
        return [(OptionContract.shares(self.ticker), self.shares_open)] if self.shares_open else []

    def has_naked_short(self) -> bool:
        for right in ("C", "P"):
            sold = sum(leg.ratio for leg in self.legs if leg.right == right and leg.sign < 0)
            bought = sum(leg.ratio for leg in self.legs if leg.right == right and leg.sign > 0)
            if sold > bought:
                return True
        return False


@dataclass(frozen=True)
class IngestReport:
    booked: tuple[str, ...]  # fill ids booked by this call
    refused: tuple[tuple[str, str], ...]  # (fill id, why) left unbooked


@dataclass(frozen=True)
class PositionMark:
    position_id: str
    ticker: str
    structure: str
    units: int
    mark: Decimal  # per share per unit, signed like the entry
    value: Decimal  # dollars
    unrealized_pnl: Decimal  # dollars
    underlying_price: Decimal | None
    greeks: PortfolioGreeks
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class MarkReport:
    marks: tuple[PositionMark, ...]
    snapshot: AccountSnapshot


@dataclass(frozen=True)
class SettlementResult:
    position_id: str
    ticker: str
    structure: str
    status: str  # "settled" (cash or worthless) or "assigned" (shares delivered)
    value_per_unit: Decimal  # per share: the unit's intrinsic value at expiry, signed for our side
    realized_pnl: Decimal  # dollars realized by this settlement
    legs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class PinRisk:
    position_id: str
    ticker: str
    contract: str
    strike: Decimal
    underlying_price: Decimal
    distance: float  # |strike - spot| / spot
    expiry: date
    message: str


@dataclass(frozen=True)
class ExitTrade:
    position_id: str
    rule: str  # "take_profit", "dte", "credit_stop", "debit_stop", "delivered_shares"
    reason: str
    order: FlattenOrder  # the closing combo: the position's legs, sides flipped, `units_open` units (or its shares)


@dataclass(frozen=True)
class StagedExit:
    position_id: str
    rule: str
    order: Order | None  # None when a live exit order already existed
    created: bool
    note: str = ""


@dataclass(frozen=True)
class Difference:
    contract: OptionContract
    broker_quantity: int
    book_quantity: int

    @property
    def label(self) -> str:
        return f"{self.contract.label()}: broker {self.broker_quantity:+d}, book {self.book_quantity:+d}"


def last_daily_reset(now: datetime, at, timezone: str = "America/New_York") -> datetime:
    """The latest daily reset at or before `now` (`at` a `datetime.time` in `timezone`)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), at, tzinfo=zone)
    if candidate > now:
        candidate = datetime.combine(local.date() - timedelta(days=1), at, tzinfo=zone)
    return candidate


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_EVEN)


def _cost(value: Decimal) -> Decimal:
    return value.quantize(COST_PLACES, rounding=ROUND_HALF_EVEN)


def _share(part: Decimal, units: int, units_open: int) -> Decimal:
    """The part of an open cost `part` that `units` of `units_open` carry (all of it when closing all)."""
    return part if units == units_open else _cost(part * units / units_open)


# ------------------------------------------------------------------ the book
class Book:
    """The strategy book of one broker account. `db` is a `storage.database.Database` or a pool."""

    def __init__(self, db: Any, *, account_id: str = "paper", broker: str = "paper",
                 config: BookConfig | None = None, betas: Mapping[str, float] | None = None):
        self.pool = getattr(db, "pool", db)
        self.account_id = account_id
        self.broker = broker
        self.config = config or BookConfig()
        self.betas = dict(betas or {})
        self.store = BookStore(self.pool, account_id)
        self.journal = Journal(self.pool)

    # -------------------------------------------------------------- 1. fills -> positions
    async def ingest_fills(self) -> IngestReport:
        """Book every broker fill of the account not yet booked (see the module doc)."""
        booked, refused = [], []
        for row in await self.store.unbooked_fills():
            try:
                if await self._book_fill(row):
                    booked.append(row["fill_id"])
            except BookError as exc:
                refused.append((row["fill_id"], str(exc)))
        return IngestReport(tuple(booked), tuple(refused))

    async def _book_fill(self, row: Mapping[str, Any]) -> bool:
        legs = [ComboLeg.from_any(leg) for leg in row["broker_legs"]]
        leg_prices = [Decimal(str(p)) for p in row["leg_prices"]]
        async with self.store.transaction() as conn:
            if await self.store.fill_booked(conn, row["fill_id"]):
                return False
            if legs[0].is_shares:
                return await self._book_shares(conn, row, legs[0])
            if row["closes_position_id"] is None:
                return await self._book_opening(conn, row, legs, leg_prices)
            return await self._book_closing(conn, row, legs)

    async def _book_opening(self, conn, row, legs: list[ComboLeg], leg_prices: list[Decimal]) -> bool:
        units, price, commission = row["quantity"], row["price"], row["commission"]
        position = await self.store.lock_position(conn, order_id=row["order_id"])
        if position is None:
            proposal = row["proposal"] or {}
            created = await self.store.insert_position(conn, {
                "position_id": f"pos_{row['order_id']}", "order_id": row["order_id"], "run_id": row["run_id"],
                "account_id": self.account_id, "ticker": row["ticker"], "sector": row["sector"],
                "structure": row["structure"],
                "legs": [BookLeg(l.expiry, l.strike, l.right, l.side, l.ratio, _cost(p * units)).to_json()
                         for l, p in zip(legs, leg_prices)],
                "multiplier": row["multiplier"], "units_opened": units, "units_open": units,
                "entry_cost": _cost(price * units), "entry_price": _cost(price),
                "max_profit": _optional_decimal(proposal.get("max_profit")),
                "max_loss": _optional_decimal(proposal.get("max_loss")),
                "probability_of_profit": proposal.get("probability_of_profit"),
                "thesis": proposal.get("rationale") or "", "opened_at": row["filled_at"],
                "realized_pnl": -commission, "commissions": commission})
            if created:
                if not await self.store.insert_position_fill(
                        conn, fill_id=row["fill_id"], position_id=f"pos_{row['order_id']}", order_id=row["order_id"],
                        kind="open", units=units, price=price, commission=commission, gross_pnl=ZERO,
                        realized_pnl=-commission, at=row["filled_at"]):
                    raise BookError(f"fill {row['fill_id']} was booked twice")
                return True
            position = await self.store.lock_position(conn, order_id=row["order_id"])
        p = StrategyPosition.from_row(position)
        if p.status != "open":
            raise BookError(f"fill {row['fill_id']} opens more of position {p.position_id}, which is {p.status}")
        if not await self.store.insert_position_fill(
                conn, fill_id=row["fill_id"], position_id=p.position_id, order_id=row["order_id"], kind="open",
                units=units, price=price, commission=commission, gross_pnl=ZERO, realized_pnl=-commission,
                at=row["filled_at"]):
            return False
        entry_cost = p.entry_cost + price * units
        await self.store.update_position(conn, p.position_id, {
            "units_opened": p.units_opened + units, "units_open": p.units_open + units,
            "entry_cost": _cost(entry_cost), "entry_price": _cost(entry_cost / (p.units_open + units)),
            "legs": [BookLeg(l.expiry, l.strike, l.right, l.side, l.ratio, _cost(l.cost + lp * units)).to_json()
                     for l, lp in zip(p.legs, leg_prices)],
            "realized_pnl": p.realized_pnl - commission, "commissions": p.commissions + commission})
        return True

    async def _book_closing(self, conn, row, legs: list[ComboLeg]) -> bool:
        units, commission = row["quantity"], row["commission"]
        position = await self.store.lock_position(conn, position_id=row["closes_position_id"])
        if position is None:
            raise BookError(f"fill {row['fill_id']} closes unknown position {row['closes_position_id']}")
        p = StrategyPosition.from_row(position)
        expected = sorted((l.expiry, l.strike, l.right, "sell" if l.sign > 0 else "buy", l.ratio) for l in p.legs)
        if sorted(leg.key() for leg in legs) != expected:
            raise BookError(f"fill {row['fill_id']}: the closing order's legs are not position {p.position_id}'s "
                            "legs with their sides flipped")
        if units > p.units_open:
            raise BookError(f"fill {row['fill_id']} closes {units} units of position {p.position_id}, "
                            f"which has only {p.units_open} open")
        released = _share(p.entry_cost, units, p.units_open)
        realized = await self._book_reducing_fill(conn, row, p.position_id, "close", released, p.multiplier)
        if realized is None:
            return False
        left = p.units_open - units
        await self.store.update_position(conn, p.position_id, {
            "units_open": left, "entry_cost": _cost(p.entry_cost - released),
            "legs": [BookLeg(l.expiry, l.strike, l.right, l.side, l.ratio,
                             _cost(l.cost - _share(l.cost, units, p.units_open))).to_json() for l in p.legs],
            "realized_pnl": p.realized_pnl + realized, "commissions": p.commissions + commission,
            **({"status": "closed", "closed_at": row["filled_at"]} if left == 0 else {})})
        return True

    async def _book_shares(self, conn, row, leg: ComboLeg) -> bool:
        """A fill of the order that flattens a position's delivered shares (the module doc)."""
        units, commission = row["quantity"], row["commission"]
        position = None
        if row["closes_position_id"] is not None:
            position = await self.store.lock_position(conn, position_id=row["closes_position_id"])
        if position is None:
            raise BookError(f"fill {row['fill_id']}: an order for shares must close the shares a known position's "
                            f"options delivered (closes {row['closes_position_id']})")
        p = StrategyPosition.from_row(position)
        held = p.shares_open
        if held == 0 or (leg.sign > 0) == (held > 0):
            raise BookError(f"fill {row['fill_id']}: position {p.position_id} holds {held:+d} shares, which "
                            f"{leg.side} {units} does not reduce")
        if units > abs(held):
            raise BookError(f"fill {row['fill_id']} closes {units} shares of position {p.position_id}, "
                            f"which holds only {abs(held)}")
        released = _share(p.shares_cost, units, abs(held))
        realized = await self._book_reducing_fill(conn, row, p.position_id, "shares", released, 1)
        if realized is None:
            return False
        left = held + leg.sign * units
        await self.store.update_position(conn, p.position_id, {
            "shares_open": left, "shares_cost": _cost(p.shares_cost - released),
            "realized_pnl": p.realized_pnl + realized, "commissions": p.commissions + commission,
            **({"closed_at": row["filled_at"]} if left == 0 else {})})
        return True

    async def _book_reducing_fill(self, conn, row, position_id: str, kind: str, released: Decimal,
                                  multiplier: int) -> Decimal | None:
        """Record a fill that takes `row['quantity']` units (or shares) off a position whose cost
        basis for them is `released`: realized = -(released + price x units) x multiplier -
        commission. Returns it, or None when the fill was already booked."""
        units, price, commission = row["quantity"], row["price"], row["commission"]
        gross = _money(-(released + price * units) * multiplier)
        realized = gross - commission
        if not await self.store.insert_position_fill(
                conn, fill_id=row["fill_id"], position_id=position_id, order_id=row["order_id"], kind=kind,
                units=units, price=price, commission=commission, gross_pnl=gross, realized_pnl=realized,
                at=row["filled_at"]):
            return None
        return realized

    async def positions(self, status: str | None = "open") -> list[StrategyPosition]:
        return [StrategyPosition.from_row(r) for r in await self.store.positions(status=status)]

    async def position(self, position_id: str) -> StrategyPosition | None:
        rows = await self.store.positions(status=None, position_id=position_id)
        return StrategyPosition.from_row(rows[0]) if rows else None

    async def holding_shares(self) -> list[StrategyPosition]:
        """Positions whose expired options delivered shares the book still holds."""
        return [StrategyPosition.from_row(r) for r in await self.store.holding_shares()]

    async def _read(self, daily_reset: datetime | None) -> BookRead:
        """The book and the account figures at one instant (`BookStore.read`), with every broker
        fill booked: `ingest_fills` runs (and the book is read again) only when the read finds a
        fill not booked yet."""
        books = await self.store.read(daily_reset)
        if books.unbooked_fills:
            await self.ingest_fills()
            books = await self.store.read(daily_reset)
        return books

    # -------------------------------------------------------------- 2. marks and snapshots
    def _value(self, p: StrategyPosition, quotes: QuoteSource | None) -> tuple[Decimal, Decimal | None, list[str]]:
        """(mark per share per unit, underlying price, missing) at the legs' mids; a leg without a
        quote is carried at its entry price (as the paper broker carries an unquoted contract)."""
        mark, underlying, missing = ZERO, None, []
        for leg in p.legs:
            contract = leg.contract(p.ticker, p.multiplier)
            quote: LegQuote | None = quotes(contract) if quotes is not None else None
            if quote is None:
                price = leg.cost / p.units_open if p.units_open else ZERO
                missing.append(f"{contract.label()}: no quote, carried at entry")
            else:
                price = quote.mid
                underlying = underlying if underlying is not None else quote.underlying_price
            mark += leg.sign * leg.ratio * price
        return mark, underlying, missing

    def _spx(self, spx_price: Decimal | None, quotes: QuoteSource,
             positions: Sequence[StrategyPosition]) -> tuple[float | None, list[str]]:
        if spx_price is not None:
            return float(spx_price), []
        for ticker, scale, note in (("SPX", 1, None), ("SPXW", 1, None),
                                    ("SPY", 10, "SPX level unknown: 10 x SPY used for the beta-weighted delta")):
            for p in positions:
                if p.ticker == ticker:
                    _, underlying, _ = self._value(p, quotes)
                    if underlying is not None:
                        return float(underlying) * scale, [note] if note else []
        return None, ["no SPX level (no spx_price, no SPX or SPY position): beta-weighted delta unavailable"]

    def _greeks(self, holdings, quotes: QuoteSource, spx: float | None) -> PortfolioGreeks:
        greeks = portfolio_greeks(holdings, quotes, spx_price=spx if spx else 1.0, betas=self.betas)
        if spx is None:
            greeks = PortfolioGreeks(greeks.delta, greeks.gamma, greeks.vega, greeks.theta, greeks.dollar_delta,
                                     math.nan, greeks.theta_vega_ratio, greeks.missing)
        return greeks

    @staticmethod
    def _shares_value(shares: Sequence[Mapping[str, Any]],
                      share_prices: Callable[[str], Decimal | None] | None) -> tuple[Decimal, Decimal, list[str]]:
        """(value, unrealized P&L, missing) of the shares held from exercises and assignments
        (`shares`: the broker's holdings, `BookRead.shares`)."""
        value, unrealized, missing = ZERO, ZERO, []
        for row in shares:
            price = share_prices(row["ticker"]) if share_prices is not None else None
            if price is None:
                price = row["avg_price"]
                missing.append(f"{row['ticker']} shares: no price, carried at cost")
            value += row["quantity"] * Decimal(price)
            unrealized += row["quantity"] * (Decimal(price) - row["avg_price"])
        return value, unrealized, missing

    def _margin(self, positions: Sequence[StrategyPosition], quotes: QuoteSource | None) -> tuple[Decimal, list[str]]:
        by_ticker: dict[str, list[StrategyPosition]] = {}
        for p in positions:
            by_ticker.setdefault(p.ticker, []).append(p)
        total, missing = ZERO, []
        for ticker, group in by_ticker.items():
            holdings = [h for p in group for h in p.holdings()]
            paid = sum((p.entry_cost * p.multiplier for p in group), ZERO)
            try:
                total += margin_requirement(holdings, paid, quotes).requirement
            except MarginUnavailable as exc:
                fallback = sum(((p.max_loss or ZERO) * p.units_open for p in group), ZERO)
                total += fallback
                missing.append(f"{ticker} margin: {exc}; max loss {fallback} used")
        return total, missing

    async def mark(self, now: datetime, quotes: QuoteSource, *, spx_price: Decimal | None = None,
                   daily_reset: datetime | None = None, share_prices: Callable[[str], Decimal | None] | None = None,
                   vix: float | None = None, regime: str | None = None) -> MarkReport:
        """Mark every open position at `now` into `position_marks` and record an account snapshot
        (NLV = cash + marks + shares; `daily_pnl` = NLV change since the last snapshot at or
        before `daily_reset`, when given). Safe to repeat at the same instant (nothing doubles)."""
        _aware(now)
        books = await self._read(daily_reset)
        positions = _open(books)
        spx, spx_notes = self._spx(spx_price, quotes, positions)
        marks, rows = [], []
        for p in positions:
            mark, underlying, missing = self._value(p, quotes)
            greeks = self._greeks(p.holdings(), quotes, spx)
            value = _money(mark * p.units_open * p.multiplier)
            unrealized = _money((mark * p.units_open - p.entry_cost) * p.multiplier)
            marks.append(PositionMark(p.position_id, p.ticker, p.structure, p.units_open, mark, value, unrealized,
                                      underlying, greeks, tuple(missing) + greeks.missing))
            rows.append((p.position_id, now, p.units_open, mark, value, unrealized, underlying,
                         *(_finite(getattr(greeks, g)) for g in ("delta", "gamma", "vega", "theta")),
                         list(missing) + list(greeks.missing)))
        await self.store.insert_marks(rows)
        cash = books.cash
        shares_value, shares_unrealized, share_notes = self._shares_value(books.shares, share_prices_of(quotes, share_prices))
        margin, margin_notes = self._margin(positions, quotes)
        holders = [StrategyPosition.from_row(r) for r in books.holding_shares]
        book_greeks = self._greeks([h for p in positions for h in p.holdings()]
                                   + [h for p in holders for h in p.share_holdings()], quotes, spx)
        nlv = cash + sum((m.value for m in marks), ZERO) + shares_value
        unrealized = sum((m.unrealized_pnl for m in marks), ZERO) + _money(shares_unrealized)
        daily_pnl = None
        if daily_reset is not None:
            base = books.reset_net_liquidation
            daily_pnl = nlv - (base if base is not None else books.opening_cash)
        snapshot = AccountSnapshot(
            account_id=self.account_id, broker=self.broker, captured_at=now, net_liquidation=nlv, cash=cash,
            margin_used=margin, delta=book_greeks.delta, gamma=book_greeks.gamma, vega=book_greeks.vega,
            theta=book_greeks.theta, spx_beta_weighted_delta=book_greeks.spx_beta_weighted_delta,
            theta_vega_ratio=book_greeks.theta_vega_ratio, vix=vix,
            spx_price=None if spx is None else Decimal(repr(spx)).quantize(MONEY_PLACES), regime=regime,
            missing=tuple(spx_notes + share_notes + margin_notes) + book_greeks.missing,
            realized_pnl=books.realized_total, daily_pnl=daily_pnl, unrealized_pnl=unrealized,
            shares_value=shares_value)
        await self.journal.record_snapshot(snapshot)
        return MarkReport(tuple(marks), snapshot)

    # -------------------------------------------------------------- 3. expiry
    async def settle_expired(self, now: datetime, underlying_price: Callable[[str], Decimal], *,
                             broker: Any = None) -> list[SettlementResult]:
        """Settle every open position whose legs have all expired at `now` (see `brokers.expiry`).

        With `broker` (a `PaperBroker`) its ledger is settled first, so cash and shares move with
        the book. A position whose legs expire on different dates is left open until all have
        expired (the broker settles each contract as it expires). Safe to repeat."""
        _aware(now)
        if broker is not None:
            await broker.settle_expiries(now, underlying_price)
        await self.ingest_fills()
        results = []
        for p in await self.positions():
            if not all(is_expired(leg.expiry, now) for leg in p.legs):
                continue
            price = Decimal(underlying_price(p.ticker))
            value, delivered, shares_per_unit, legs = ZERO, False, 0, []
            for leg in p.legs:
                outcome, intrinsic, shares = settlement(p.ticker, leg.right, leg.strike, leg.sign * leg.ratio,
                                                        p.multiplier, price)
                value += leg.sign * leg.ratio * intrinsic
                delivered = delivered or shares != 0
                shares_per_unit += shares
                legs.append({"contract": leg.contract(p.ticker, p.multiplier).label(), "outcome": outcome,
                             "intrinsic": intrinsic, "shares_per_unit": shares})
            status = "assigned" if delivered else "settled"
            result = await self._settle(p, now, value, status, shares_per_unit, price)
            if result is not None:
                results.append(SettlementResult(p.position_id, p.ticker, p.structure, status, value, result, tuple(legs)))
        return results

    async def _settle(self, p: StrategyPosition, now: datetime, value: Decimal, status: str, shares_per_unit: int,
                      price: Decimal) -> Decimal | None:
        async with self.store.transaction() as conn:
            row = await self.store.lock_position(conn, position_id=p.position_id)
            p = StrategyPosition.from_row(row)
            if p.status != "open" or p.units_open == 0:
                return None
            gross = _money((value * p.units_open - p.entry_cost) * p.multiplier)
            kind = "settle" if value != 0 or status == "assigned" else "expire"
            if not await self.store.insert_position_fill(
                    conn, fill_id=f"expiry:{p.position_id}", position_id=p.position_id, order_id=None, kind=kind,
                    units=p.units_open, price=-value, commission=ZERO, gross_pnl=gross, realized_pnl=gross, at=now):
                return None
            # Delivered shares (net of the legs: a vertical fully in the money delivers none) are
            # held at the settlement price, as the broker books them.
            shares = shares_per_unit * p.units_open
            await self.store.update_position(conn, p.position_id, {
                "units_open": 0, "entry_cost": ZERO, "status": status, "closed_at": now,
                "legs": [BookLeg(l.expiry, l.strike, l.right, l.side, l.ratio, ZERO).to_json() for l in p.legs],
                "realized_pnl": p.realized_pnl + gross, "shares_open": p.shares_open + shares,
                "shares_cost": _cost(p.shares_cost + shares * price)})
        return gross

    async def pin_risk(self, now: datetime, quotes: QuoteSource, *, distance: float | None = None) -> list[PinRisk]:
        """Short strikes within `distance` (default `config.pin_risk_distance`, a fraction of spot)
        of the underlying, for positions expiring at the next NYSE session (or today, before the
        close): the approver is warned of assignment risk."""
        _aware(now)
        limit = self.config.pin_risk_distance if distance is None else distance
        today = now.astimezone(NEW_YORK).date()
        warnings = []
        for p in await self.positions():
            for leg in p.legs:
                if leg.sign > 0 or is_expired(leg.expiry, now) or leg.expiry != _next_expiry_session(today, leg.expiry):
                    continue
                contract = leg.contract(p.ticker, p.multiplier)
                quote = quotes(contract)
                if quote is None or quote.underlying_price is None:
                    warnings.append(PinRisk(p.position_id, p.ticker, contract.label(), leg.strike, ZERO, math.nan,
                                            leg.expiry, f"{contract.label()} short, expiring {leg.expiry}: "
                                                        "no underlying price to judge pin risk"))
                    continue
                spot = quote.underlying_price
                gap = float(abs(leg.strike - spot) / spot)
                if gap <= limit:
                    warnings.append(PinRisk(p.position_id, p.ticker, contract.label(), leg.strike, spot, gap, leg.expiry,
                                            f"pin risk: short {contract.label()} x{leg.ratio * p.units_open} is "
                                            f"{gap:.2%} from spot {spot}, expiring {leg.expiry}"))
        return warnings

    # -------------------------------------------------------------- 4. exits
    async def exit_orders(self, now: datetime, quotes: QuoteSource, rules: BookConfig | None = None) -> list[ExitTrade]:
        """Closing trades for every open position an exit rule triggers on at `now` (checked in
        this order: the stop of its kind, take profit, days to expiry), and for the shares every
        exercised or assigned position still holds (`delivered_shares`). A position with a leg (or
        shares) without a quote is skipped: a close cannot be priced."""
        _aware(now)
        rules = rules or self.config
        await self.ingest_fills()
        today = now.astimezone(NEW_YORK).date()
        trades = []
        for p in await self.positions():
            if p.units_open == 0:
                continue
            quoted = [(leg, quotes(leg.contract(p.ticker, p.multiplier))) for leg in p.legs]
            if any(q is None for _, q in quoted):
                continue
            mark = sum((leg.sign * leg.ratio * q.mid for leg, q in quoted), ZERO)
            entry = p.entry_cost / p.units_open
            pnl = (mark - entry) * p.multiplier  # dollars per unit
            dte = (p.expiry - today).days
            rule = reason = None
            if entry < 0 and -pnl >= Decimal(str(rules.credit_stop_multiple)) * -entry * p.multiplier:
                rule, reason = "credit_stop", f"loss {-pnl:.2f}/unit reached {rules.credit_stop_multiple}x the credit {-entry * p.multiplier:.2f}"
            elif entry > 0 and -pnl >= Decimal(str(rules.debit_stop_fraction)) * entry * p.multiplier:
                rule, reason = "debit_stop", f"loss {-pnl:.2f}/unit reached {rules.debit_stop_fraction:.0%} of the debit {entry * p.multiplier:.2f}"
            elif p.max_profit is not None and p.max_profit > 0 and pnl >= Decimal(str(rules.take_profit_fraction)) * p.max_profit:
                rule, reason = "take_profit", f"profit {pnl:.2f}/unit reached {rules.take_profit_fraction:.0%} of max profit {p.max_profit}"
            elif dte <= rules.close_at_dte:
                rule, reason = "dte", f"{dte} days to expiry <= {rules.close_at_dte}"
            if rule is not None:
                trades.append(ExitTrade(p.position_id, rule, reason, _closing_order(p, quoted, rule, reason)))
        for p in await self.holding_shares():
            quote = quotes(OptionContract.shares(p.ticker))
            if quote is None:
                continue  # no price for the shares now: the next check flattens them
            reason = (f"{p.shares_open:+d} {p.ticker} shares delivered when its options were {p.status} "
                      "at expiry: the book does not hold stock")
            trades.append(ExitTrade(p.position_id, "delivered_shares", reason, _shares_order(p, quote, reason)))
        return trades

    async def stage_exits(self, now: datetime, exits: Sequence[ExitTrade], *, provider: str, actor: str = "book",
                          seed: int = 0, config: Mapping[str, Any] | None = None,
                          market_source: Mapping[str, Any] | None = None) -> list[StagedExit]:
        """Stage each exit as a closing order for approval in a graph-less run `exits-<time>`
        on `provider` (the market that re-quotes it at transmission, rebuilt from `market_source`), with
        `closes_position_id` and `exit_rule` set. One live exit order per position: a
        position whose exit order is still live is skipped; a rejected, expired or cancelled one
        may be re-staged at a later slot. Idempotent: the order's key is (position, number of
        exit orders before it), so a crash between staging and linking re-finds the same order."""
        _aware(now)
        if not exits:
            return []
        run_id = f"exits-{now.astimezone(NEW_YORK):%Y%m%d-%H%M%S}"
        runs, repo = RunRepository(self.pool), OrderRepository(self.pool)

        opened = False

        async def open_run() -> str:
            # Created only when an order is about to be staged (a slot with nothing new leaves no
            # run), and once: the slot's later exits are staged into the same run.
            nonlocal opened
            if not opened:
                await runs.create_if_absent(run_id=run_id, slot_key=f"exits|{now.isoformat()}", watchlist="exits",
                                            as_of=now, tickers=sorted({e.order.ticker for e in exits}), seed=seed,
                                            provider=provider, config=dict(config or {}),
                                            market_source=None if market_source is None else dict(market_source))
                await runs.set_status(run_id, "awaiting_approval")
                opened = True
            return run_id

        async with self.store.position_locks([e.position_id for e in exits]):
            return [await self._stage_one(now, open_run, exit_trade, repo, actor) for exit_trade in exits]

    async def _stage_one(self, now: datetime, open_run, exit_trade: ExitTrade, repo: OrderRepository,
                         actor: str) -> StagedExit:
        position = await self.position(exit_trade.position_id)
        if position is None or (position.shares_open == 0 if exit_trade.order.is_shares else position.status != "open"):
            return StagedExit(exit_trade.position_id, exit_trade.rule, None, False, "position is no longer open")
        previous = await self.store.exit_orders_of(exit_trade.position_id)
        live = [o for o in previous if o["state"] in LIVE_ORDER_STATES]
        if live:
            return StagedExit(exit_trade.position_id, exit_trade.rule, await repo.get(live[0]["order_id"]), False,
                              f"exit order {live[0]['order_id']} is still {live[0]['state']}")
        if previous and previous[-1]["created_at"] >= now:
            return StagedExit(exit_trade.position_id, exit_trade.rule, None, False,
                              "an exit order was already decided at this slot; re-staged at a later one")
        key = hashlib.sha256(f"exit|{exit_trade.position_id}|{len(previous)}".encode()).hexdigest()
        trade = exit_trade.order.to_sized_trade(now)
        record, created = await repo.stage(
            order_id=f"ord_{key[:20]}", idempotency_key=key, run_id=await open_run(), trade=trade, sector=position.sector,
            limit_price=exit_trade.order.limit_price, requires_acknowledgement=exit_trade.order.quantity > 10,
            actor=actor, created_at=now)
        linked = await self.store.link_exit(record.order_id, exit_trade.position_id, exit_trade.rule)
        order = order_from_row(linked) if linked is not None else await repo.get(record.order_id)
        return StagedExit(exit_trade.position_id, exit_trade.rule, order, created)

    # -------------------------------------------------------------- 5. the account the gate reads
    async def account_state(self, now: datetime, daily_reset: datetime, *, quotes: QuoteSource | None = None,
                            share_prices: Callable[[str], Decimal | None] | None = None,
                            halted: bool = False, halt_reason: str | None = None) -> AccountState:
        """The risk gate's account at `now`; `daily_reset` is the latest reset at or before `now`
        (`last_daily_reset`). Positions are valued at `quotes` when given, else at their latest
        marks (a position not marked yet at its entry). daily_realized_pnl: realized since the
        reset (commissions included); daily_unrealized_pnl: unrealized now minus the unrealized
        of the last snapshot at or before the reset; last_loss_at: the last close at a loss;
        trades_today: opening orders filled since the reset."""
        _aware(now)
        _aware(daily_reset)
        books = await self._read(daily_reset)
        return self._account_state(books, _open(books), quotes, share_prices, halted, halt_reason)

    async def open_positions(self, *, quotes: QuoteSource | None = None,
                             share_prices: Callable[[str], Decimal | None] | None = None) -> list[Position]:
        """The open book as the risk gate sees it: Greeks from the latest marks (the opening
        proposal's when a position has no mark with a Greek yet), max loss for the open units;
        and the shares exercises and assignments delivered (`_shares_position`), priced from
        `share_prices` or the quote source (`share_prices_of`)."""
        books = await self._read(None)
        return self._open_positions(books, _open(books), quotes, share_prices)

    async def account_and_positions(self, now: datetime, daily_reset: datetime, *, quotes: QuoteSource | None = None,
                                    share_prices: Callable[[str], Decimal | None] | None = None, halted: bool = False,
                                    halt_reason: str | None = None) -> tuple[AccountState, list[Position]]:
        """`account_state` and `open_positions` (same arguments) from one read of the book."""
        _aware(now)
        _aware(daily_reset)
        books = await self._read(daily_reset)
        positions = _open(books)
        return (self._account_state(books, positions, quotes, share_prices, halted, halt_reason),
                self._open_positions(books, positions, quotes, share_prices))

    def _account_state(self, books: BookRead, positions: Sequence[StrategyPosition], quotes: QuoteSource | None,
                       share_prices: Callable[[str], Decimal | None] | None, halted: bool,
                       halt_reason: str | None) -> AccountState:
        latest = books.latest_marks
        value = unrealized = ZERO
        for p in positions:
            if quotes is not None:
                mark, _, _ = self._value(p, quotes)
                position_value = mark * p.units_open * p.multiplier
            elif p.position_id in latest and latest[p.position_id]["units"] == p.units_open:
                position_value = latest[p.position_id]["value"]
            else:
                position_value = p.entry_cost * p.multiplier
            value += position_value
            unrealized += position_value - p.entry_cost * p.multiplier
        shares_value, shares_unrealized, _ = self._shares_value(books.shares, share_prices_of(quotes, share_prices))
        unrealized += shares_unrealized
        cash = books.cash
        margin, _ = self._margin(positions, quotes)
        base_unrealized = books.reset_unrealized_pnl or ZERO
        return AccountState(
            net_liquidation=_money(cash + value + shares_value), cash=cash, margin_used=_money(margin),
            daily_realized_pnl=books.realized_since_reset,
            daily_unrealized_pnl=_money(unrealized - base_unrealized), last_loss_at=books.last_loss_at,
            trades_today=books.trades_since_reset, halted=halted, halt_reason=halt_reason)

    def _open_positions(self, books: BookRead, positions: Sequence[StrategyPosition], quotes: QuoteSource | None,
                        share_prices: Callable[[str], Decimal | None] | None) -> list[Position]:
        share_prices = share_prices_of(quotes, share_prices)
        latest, proposals = books.latest_marks, books.proposals
        out = []
        for p in positions:
            m = latest.get(p.position_id)
            proposal = proposals.get(p.order_id) or {}
            scale = p.units_open * p.multiplier
            greeks = {}
            for g in ("delta", "gamma", "vega", "theta"):
                marked = m[g] if m is not None and m["units"] == p.units_open else None
                greeks[g] = marked if marked is not None else float(proposal.get(g, 0.0)) * scale
            underlying = (m["underlying_price"] if m is not None else None) or proposal.get("underlying_price", 0.0)
            out.append(Position(
                ticker=p.ticker, sector=p.sector, structure=p.structure, quantity=p.units_open,
                max_loss=(p.max_loss or ZERO) * p.units_open,
                market_value=m["value"] if m is not None and m["units"] == p.units_open else p.entry_cost * p.multiplier,
                underlying_price=float(underlying), has_naked_short=p.has_naked_short(),
                beta=float(self.betas.get(p.ticker, 1.0)), **greeks))
        for r in books.holding_shares:
            out.append(self._shares_position(StrategyPosition.from_row(r), share_prices))
        return out

    def _shares_position(self, p: StrategyPosition, share_prices: Callable[[str], Decimal | None] | None) -> Position:
        """Delivered shares as the gate sees them: delta 1 per share, no other Greek; at risk (and in
        the ticker's and sector's exposure) is their whole market value, until they are flattened."""
        price = share_prices(p.ticker) if share_prices is not None else None
        if price is None:
            price = p.shares_cost / p.shares_open  # no price now: at their price at delivery
        value = _money(p.shares_open * Decimal(price))
        return Position(ticker=p.ticker, sector=p.sector, structure="shares", quantity=abs(p.shares_open),
                        max_loss=abs(value), market_value=value, delta=float(p.shares_open),
                        underlying_price=float(price), beta=float(self.betas.get(p.ticker, 1.0)))

    # -------------------------------------------------------------- 6. reconciliation
    async def reconcile(self, broker_positions: Sequence[BrokerPosition],
                        broker_shares: Sequence[ShareHolding] | None = None) -> list[Difference]:
        """Every contract where the broker's signed quantity differs from the sum of the book's open
        legs (either side may be wrong: both numbers are reported, neither is corrected); with
        `broker_shares` (the broker's share holdings), every ticker whose shares differ from the
        delivered shares the book holds."""
        await self.ingest_fills()
        diffs = await self._reconcile_options(broker_positions)
        if broker_shares is not None:
            book_shares: dict[str, int] = {}
            for p in await self.holding_shares():
                book_shares[p.ticker] = book_shares.get(p.ticker, 0) + p.shares_open
            held = {h.ticker: h.quantity for h in broker_shares}
            for ticker in sorted(set(book_shares) | set(held)):
                if held.get(ticker, 0) != book_shares.get(ticker, 0):
                    diffs.append(Difference(OptionContract.shares(ticker), held.get(ticker, 0), book_shares.get(ticker, 0)))
        return diffs

    async def _reconcile_options(self, broker_positions: Sequence[BrokerPosition]) -> list[Difference]:
        book: dict[tuple, tuple[OptionContract, int]] = {}
        for p in await self.positions():
            for contract, quantity in p.holdings():
                key = (contract.ticker, contract.expiry, contract.strike, contract.right)
                held = book.get(key, (contract, 0))[1]
                book[key] = (contract, held + quantity)
        broker: dict[tuple, tuple[OptionContract, int]] = {}
        for bp in broker_positions:
            c = bp.contract
            key = (c.ticker, c.expiry, c.strike, c.right)
            broker[key] = (c, broker.get(key, (c, 0))[1] + bp.quantity)
        diffs = []
        for key in sorted(set(book) | set(broker)):
            contract = (broker.get(key) or book.get(key))[0]
            b, k = broker.get(key, (contract, 0))[1], book.get(key, (contract, 0))[1]
            if b != k:
                diffs.append(Difference(contract, b, k))
        return diffs

    # -------------------------------------------------------------- 7. queries for the commands
    async def positions_report(self) -> list[dict[str, Any]]:
        """Open positions with their last mark and Greeks (plain dicts, Decimal money)."""
        await self.ingest_fills()
        positions = await self.positions()
        latest = await self.store.latest_marks([p.position_id for p in positions])
        out = []
        for p in positions:
            m = latest.get(p.position_id)
            exits = await self.store.exit_orders_of(p.position_id)
            out.append({
                "position_id": p.position_id, "order_id": p.order_id, "run_id": p.run_id, "ticker": p.ticker,
                "structure": p.structure, "expiry": p.expiry.isoformat(), "units": p.units_open,
                "multiplier": p.multiplier, "entry_price": p.entry_cost / p.units_open if p.units_open else p.entry_price,
                "legs": [leg.to_json() for leg in p.legs], "opened_at": p.opened_at, "thesis": p.thesis,
                "max_profit": p.max_profit, "max_loss": p.max_loss, "realized_pnl": p.realized_pnl,
                "mark": None if m is None else m["mark"], "marked_at": None if m is None else m["marked_at"],
                "value": None if m is None else m["value"],
                "unrealized_pnl": None if m is None else m["unrealized_pnl"],
                "greeks": None if m is None else {g: m[g] for g in ("delta", "gamma", "vega", "theta")},
                "missing": [] if m is None else list(m["missing"]),
                "exit_orders": [dict(e) for e in exits]})
        return out

    async def pnl_by_day(self, start: date, end: date) -> list[dict[str, Any]]:
        """One row per New York day in [start, end]: realized P&L of the day and the unrealized P&L
        at the day's last snapshot (and its change from the previous snapshot day)."""
        since, until = day_start(start), day_start(end + timedelta(days=1))
        realized = {r["day"]: r["realized_pnl"] for r in await self.store.realized_by_day(since, until, "America/New_York")}
        snaps = {r["day"]: r for r in await self.store.last_snapshot_by_day(since, until, "America/New_York")}
        before = await self.store.snapshot_at_or_before(since)
        previous = (before["unrealized_pnl"] or ZERO) if before is not None else ZERO
        out = []
        for day in sorted(set(realized) | set(snaps)):
            snap = snaps.get(day)
            unrealized = snap["unrealized_pnl"] if snap is not None and snap["unrealized_pnl"] is not None else None
            change = None if unrealized is None else unrealized - previous
            out.append({"day": day, "realized_pnl": realized.get(day, ZERO), "unrealized_pnl": unrealized,
                        "unrealized_change": change,
                        "total_pnl": realized.get(day, ZERO) + (change or ZERO),
                        "net_liquidation": None if snap is None else snap["net_liquidation"]})
            if unrealized is not None:
                previous = unrealized
        return out

    async def pnl_by_strategy(self, start: date, end: date) -> list[dict[str, Any]]:
        """Per structure: P&L realized between the New York days [start, end] and the unrealized
        P&L of its open positions at their latest marks."""
        since, until = day_start(start), day_start(end + timedelta(days=1))
        rows = {r["structure"]: {"structure": r["structure"], "realized_pnl": r["realized_pnl"],
                                 "unrealized_pnl": ZERO, "positions": r["positions"], "open_positions": 0}
                for r in await self.store.realized_by_strategy(since, until)}
        positions = await self.positions()
        latest = await self.store.latest_marks([p.position_id for p in positions])
        for p in positions:
            row = rows.setdefault(p.structure, {"structure": p.structure, "realized_pnl": ZERO,
                                                "unrealized_pnl": ZERO, "positions": 0, "open_positions": 0})
            row["open_positions"] += 1
            if p.position_id in latest:
                row["unrealized_pnl"] += latest[p.position_id]["unrealized_pnl"]
        return [rows[k] for k in sorted(rows)]

    async def account_now(self, now: datetime, daily_reset: datetime, *, quotes: QuoteSource | None = None) -> dict[str, Any]:
        """The account as the gate sees it, with the latest snapshot's Greeks and notes."""
        state = await self.account_state(now, daily_reset, quotes=quotes)
        snaps = await self.journal.snapshots(account_id=self.account_id, limit=1)
        snap = snaps[-1] if snaps else None
        return {**state.model_dump(), "as_of": now, "realized_pnl": await self.store.realized_between(None),
                "open_positions": len(await self.positions()),
                "last_snapshot": None if snap is None else {
                    "captured_at": snap.captured_at, "net_liquidation": snap.net_liquidation, "delta": _finite(snap.delta),
                    "gamma": _finite(snap.gamma), "vega": _finite(snap.vega), "theta": _finite(snap.theta),
                    "spx_beta_weighted_delta": _finite(snap.spx_beta_weighted_delta),
                    "theta_vega_ratio": snap.theta_vega_ratio, "spx_price": snap.spx_price,
                    "unrealized_pnl": snap.unrealized_pnl, "missing": list(snap.missing)}}


# ------------------------------------------------------------------ helpers
def _open(books: BookRead) -> list[StrategyPosition]:
    return [StrategyPosition.from_row(r) for r in books.positions]


def _aware(value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError("times must be timezone-aware")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _optional_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))



def _next_expiry_session(today: date, expiry: date) -> date | None:
    """`expiry` when it is today or the next NYSE session after `today`, else None."""
    if expiry == today:
        return expiry
    if expiry < today:
        return None
    import exchange_calendars  # the NYSE calendar (holidays), as risk.gate uses

    calendar = exchange_calendars.get_calendar("XNYS")
    following = calendar.date_to_session(today + timedelta(days=1), direction="next").date()
    return expiry if following == expiry else None


def _closing_order(p: StrategyPosition, quoted: Sequence[tuple[BookLeg, LegQuote]], rule: str, reason: str) -> FlattenOrder:
    legs = tuple(OptionLeg(expiry=leg.expiry, strike=leg.strike, right=leg.right,
                           side="sell" if leg.sign > 0 else "buy", ratio=leg.ratio, bid=q.bid, ask=q.ask, mid=q.mid,
                           iv=q.iv, delta=q.delta, gamma=q.gamma, vega=q.vega, theta=q.theta) for leg, q in quoted)
    mid = sum((l.sign * l.ratio * l.mid for l in legs), ZERO)
    natural = sum((l.ratio * (l.ask if l.sign > 0 else -l.bid) for l in legs), ZERO)
    underlying = next((q.underlying_price for _, q in quoted if q.underlying_price is not None), None)
    return FlattenOrder(ticker=p.ticker, legs=legs, quantity=p.units_open, mid_price=mid, natural_price=natural,
                        limit_price=mid.quantize(CENT, rounding=ROUND_FLOOR), underlying_price=underlying,
                        multiplier=p.multiplier, closes=(f"{p.position_id} ({p.structure} x{p.units_open})",),
                        rationale=f"Exit {rule}: {reason}", structure=f"close_{p.structure}")


def _shares_order(p: StrategyPosition, quote: LegQuote, reason: str) -> FlattenOrder:
    """The order flattening `p`'s delivered shares: sell long shares at the bid, buy short ones back
    at the ask (marketable: the limit is that natural price, a sub-cent one rounded to the cent on
    the side that still fills)."""
    side = "sell" if p.shares_open > 0 else "buy"
    leg = OptionLeg(expiry=None, strike=None, right="S", side=side, ratio=1, bid=quote.bid, ask=quote.ask,
                    mid=quote.mid, delta=1.0, gamma=0.0, vega=0.0, theta=0.0)
    natural = quote.ask if leg.sign > 0 else -quote.bid
    return FlattenOrder(ticker=p.ticker, legs=(leg,), quantity=abs(p.shares_open), mid_price=leg.sign * quote.mid,
                        natural_price=natural, limit_price=natural.quantize(CENT, rounding=ROUND_CEILING),
                        underlying_price=quote.underlying_price if quote.underlying_price is not None else quote.mid,
                        multiplier=1, closes=(f"{p.position_id} ({p.shares_open:+d} {p.ticker} shares)",),
                        rationale=f"Exit delivered_shares: {reason}", structure="close_shares")
