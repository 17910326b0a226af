"""The paper broker: the default broker, a simulated venue with its books in Postgres.

- `place` transmits only an order whose `orders` row is APPROVED (else `OrderNotApproved`), moves
  it APPROVED -> SUBMITTED through the state machine in the same transaction that creates the
  broker order, and is idempotent by order id: placing an already placed order returns the same
  broker order id (a retried executor, a resumed run or two racing workers make one order).
- Nothing fills on its own: `process()` is the explicit step (drive it from a clock or a loop).
  Each step, every working order is priced at the combo mid plus a slippage model (a fraction of
  the combo's half-spread, i.e. of natural - mid, optionally with seeded jitter); it fills only
  when that price is marketable against its limit (signed price <= limit: a debit pays at most
  the limit, a credit receives at least |limit|), at most `max_contracts_per_fill` units per
  step, so larger orders fill in parts: SUBMITTED -> PARTIALLY_FILLED -> FILLED.
- A fill is recorded, applied to positions and cash, and the order moved, in ONE transaction;
  fill ids are unique so a repeated report (`record_fill`) is ignored. Fill callbacks run after
  the commit.
- DAY orders are cancelled by the first step at or after 16:00 New York of the day they were
  placed (the state machine has no SUBMITTED -> EXPIRED, so the state is CANCELLED with the
  reason recorded).
- Orders whose margin need exceeds the free margin are rejected (APPROVED -> REJECTED) at `place`.
- An order for the underlying's shares (one SHARES leg, `domain.orders`) fills the same way
  against the shares quote of the quote source and trades the share holding; it pays
  `commission_per_share` (at least `share_commission_minimum` per fill, IBKR's fixed rate), and
  moves no margin (shares are outside the option margin model, `brokers.margin`).

Conventions: `brokers.base` (signed per-share combo prices, Decimal money, tz-aware times).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from typing import Any

import asyncpg

from config.clock import wall_clock
from brokers.base import (
    BrokerError,
    FillCallback,
    OrderNotApproved,
    OrderNotWorking,
    UnknownBrokerOrder,
    check_matches_approval,
)
from domain.orders import (
    CENT,
    BrokerAccount,
    BrokerOrderStatus,
    BrokerPosition,
    ComboLeg,
    Fill,
    LegQuote,
    Order,
    QuoteSource,
    WhatIfMargin,
    combo_prices,
)
from brokers.expiry import latest_expired_date, settlement
from brokers.margin import margin_requirement
from brokers.quote_source import share_prices_of
from domain.order_state import OrderState
from storage.broker_ledger import AVG_PLACES, AccountFigures, BrokerLedger, premium_basis, status_from_row
from storage.controls import RiskControls
from storage.orders import OrderRepository, UnknownOrder
from tools.chain import NEW_YORK
from tools.market_hours import day_start

log = logging.getLogger(__name__)

WORKING = frozenset({OrderState.SUBMITTED.value, OrderState.PARTIALLY_FILLED.value, OrderState.UNKNOWN.value})
SESSION_CLOSE = time(16, 0)


class InsufficientBuyingPower(BrokerError):
    """The broker rejected the order: its margin need exceeds the account's free margin."""


class TradingHalted(BrokerError):
    """The kill switch is on: nothing is transmitted, the order stays APPROVED."""


class FillCallbackError(BrokerError):
    """One or more fill callbacks failed. The fills themselves are recorded (see `failures`)."""

    def __init__(self, failures: list[tuple[str, BaseException]]):
        super().__init__("fill callbacks failed for " + ", ".join(f for f, _ in failures))
        self.failures = failures


@dataclass(frozen=True)
class SlippageModel:
    """Fill price = combo mid + f * (natural - mid), f = fraction + jitter * U[0, 1) capped at 1.

    natural - mid is the sum of the legs' half-spreads (times ratios), so f = 0 fills at mid and
    f = 1 at the natural price. Each leg fills at its own mid -/+ f * its half-spread, so every
    leg price lies within its quote. U comes from the broker's seeded RNG: same seed, same fills.
    """

    fraction: Decimal = Decimal("0.25")
    jitter: Decimal = Decimal("0")

    def __post_init__(self) -> None:
        for name in ("fraction", "jitter"):
            value = Decimal(getattr(self, name))
            if not (0 <= value <= 1):
                raise ValueError(f"slippage {name} must be in [0, 1], got {value}")
            object.__setattr__(self, name, value)


def utc_now() -> datetime:
    return wall_clock()


def session_close(at: datetime) -> datetime:
    """16:00 New York on the New York calendar day of `at`."""
    local = at.astimezone(NEW_YORK)
    return datetime.combine(local.date(), SESSION_CLOSE, tzinfo=NEW_YORK)



def model_fill_price(legs: Sequence[ComboLeg], quotes: Sequence[LegQuote],
                     fraction: Decimal) -> tuple[Decimal, tuple[Decimal, ...]]:
    """(combo price on a cent, per-leg unsigned prices) for buying one unit at slippage `fraction`.

    Each leg fills at its mid -/+ fraction * its half-spread; the combo's raw price
    mid + fraction * (natural - mid) is rounded up to the cent (against us) but never past the
    natural price. The rounding residual (under a cent) is spread over the legs within their
    quotes, ratio-1 legs first, so every leg price stays inside its bid/ask and
    sum(sign * ratio * leg price) == combo price (to 1e-6 per contract when only legs of ratio > 1
    can absorb it).
    """
    if not (0 <= fraction <= 1):
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    mid, natural, _ = combo_prices(legs, quotes)
    prices = [(q.mid + leg.sign * fraction * q.half_spread).quantize(AVG_PLACES, rounding=ROUND_HALF_EVEN)
              for leg, q in zip(legs, quotes)]
    raw = sum((leg.sign * leg.ratio * p for leg, p in zip(legs, prices)), Decimal(0))
    price = raw.quantize(CENT, rounding=ROUND_CEILING)
    if price > natural:
        price = raw.quantize(CENT, rounding=ROUND_FLOOR)
    residual = price - raw
    direction = 1 if residual > 0 else -1

    def room(i: int) -> Decimal:
        # How far leg i may move (per share) in the direction that moves the combo by `direction`.
        q, p, toward_far = quotes[i], prices[i], legs[i].sign * direction > 0
        return (q.ask - p) if toward_far else (p - q.bid)

    for i in sorted(range(len(legs)), key=lambda i: (legs[i].ratio != 1, -room(i))):
        if residual == 0:
            break
        ratio = legs[i].ratio
        take = min(abs(residual), room(i) * ratio)
        step = (take / ratio).quantize(AVG_PLACES, rounding=ROUND_DOWN)
        prices[i] += legs[i].sign * direction * step
        residual -= direction * step * ratio
    return price, tuple(prices)


def is_marketable(fill_price: Decimal, limit_price: Decimal) -> bool:
    """A combo (bought, signed price) fills at `fill_price` only if it is no worse than the limit."""
    return fill_price <= limit_price


class PaperBroker:
    """See the module docstring. `db` is a `storage.database.Database` or an asyncpg pool."""

    name = "paper"

    def __init__(self, db: Any, quotes: QuoteSource, *, slippage: SlippageModel = SlippageModel(), seed: int = 0,
                 clock: Callable[[], datetime] = utc_now, max_contracts_per_fill: int | None = None,
                 account_id: str = "paper", opening_cash: Decimal = Decimal("100000"),
                 commission_per_contract: Decimal = Decimal("0.65"), check_buying_power: bool = True,
                 actor: str = "broker:paper", share_prices: Callable[[str], Decimal | None] | None = None,
                 commission_per_share: Decimal = Decimal("0.005"), share_commission_minimum: Decimal = Decimal("1.00")):
        if max_contracts_per_fill is not None and max_contracts_per_fill < 1:
            raise ValueError("max_contracts_per_fill must be a positive whole number or None")
        if Decimal(commission_per_contract) < 0 or Decimal(commission_per_share) < 0 or Decimal(share_commission_minimum) < 0:
            raise ValueError("commissions may not be negative")
        self.pool: asyncpg.Pool = getattr(db, "pool", db)
        self.quotes = quotes
        self.slippage = slippage
        self.rng = random.Random(seed)
        self.clock = clock
        self.max_contracts_per_fill = max_contracts_per_fill
        self.account_id = account_id
        self.opening_cash = Decimal(opening_cash)
        self.commission_per_contract = Decimal(commission_per_contract)
        self.commission_per_share = Decimal(commission_per_share)
        self.share_commission_minimum = Decimal(share_commission_minimum)
        self.check_buying_power = check_buying_power
        self.actor = actor
        # Price of a share (exercised / assigned stock): given, or the quote source's underlying price
        # when it is backed by a market; with neither, carried at cost, unmarked.
        self.share_prices = share_prices_of(quotes, share_prices)
        self.orders = OrderRepository(self.pool)
        self.ledger = BrokerLedger(self.pool, account_id, self.name)
        self._callbacks: list[FillCallback] = []
        self._account_ready = False

    # ---------------------------------------------------------------- helpers
    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the broker clock must return timezone-aware datetimes")
        return now

    @property
    def ledger_account_id(self) -> str:
        return self.account_id

    async def ensure_connected(self) -> None:
        """Make sure the paper account exists (opened with `opening_cash` on first use)."""
        await self._ensure_account()

    async def _ensure_account(self) -> None:
        if not self._account_ready:
            await self.ledger.ensure_account(self.opening_cash, self._now())
            self._account_ready = True

    def commission_for(self, legs: Sequence[ComboLeg], quantity: int) -> Decimal:
        """Dollars: the per-contract rate times every contract of every leg; for shares the
        per-share rate times the shares, at least the minimum."""
        if legs[0].is_shares:
            return max(self.commission_per_share * quantity, self.share_commission_minimum)
        return self.commission_per_contract * quantity * sum(leg.ratio for leg in legs)

    def _leg_quotes(self, ticker: str, legs: Sequence[ComboLeg], multiplier: int) -> list[LegQuote] | None:
        quotes = [self.quotes(leg.contract(ticker, multiplier)) for leg in legs]
        return None if any(q is None for q in quotes) else quotes

    def _slippage_fraction(self) -> Decimal:
        fraction = self.slippage.fraction
        if self.slippage.jitter:
            fraction += self.slippage.jitter * Decimal(self.rng.randrange(10_000)) / 10_000
        return min(fraction, Decimal(1))

    # ---------------------------------------------------------------- Broker protocol
    def subscribe_fills(self, callback: FillCallback) -> None:
        """Await `callback(fill)` for every new fill, after it is committed, in fill order."""
        self._callbacks.append(callback)

    async def what_if(self, order: Order) -> WhatIfMargin:
        """Margin before/after this order for its underlying, at its limit price (no side effects)."""
        await self._ensure_account()
        return self._what_if(order, await self.ledger.positions(order.ticker))

    def _what_if(self, order: Order, held: Sequence[BrokerPosition]) -> WhatIfMargin:
        """`what_if` given `held`, the account's open positions in the order's underlying."""
        before = [(p.contract, p.quantity) for p in held]
        if order.is_shares:  # shares move cash, not the option margin
            margin = margin_requirement(before, premium_basis(held), self.quotes)
            commission = self.commission_for(order.legs, order.quantity)
            return WhatIfMargin(
                initial_margin_change=Decimal(0), maintenance_margin_change=Decimal(0), commission=commission,
                cash_change=-order.limit_price * order.quantity - commission, margin_before=margin.requirement,
                margin_after=margin.requirement, method=margin.method)
        after = before + [(leg.contract(order.ticker, order.multiplier), leg.sign * leg.ratio * order.quantity)
                          for leg in order.legs]
        paid_before = premium_basis(held)
        paid_after = paid_before + order.limit_price * order.quantity * order.multiplier
        margin_before = margin_requirement(before, paid_before, self.quotes)
        margin_after = margin_requirement(after, paid_after, self.quotes)
        commission = self.commission_for(order.legs, order.quantity)
        change = margin_after.requirement - margin_before.requirement
        return WhatIfMargin(
            initial_margin_change=change, maintenance_margin_change=change, commission=commission,
            cash_change=-order.limit_price * order.quantity * order.multiplier - commission,
            margin_before=margin_before.requirement, margin_after=margin_after.requirement,
            method=margin_after.method,
        )

    async def place(self, order: Order) -> str:
        """Transmit an APPROVED order; return its broker order id (the same one on every retry)."""
        await self._ensure_account()
        broker_order_id = f"PAPER-{order.order_id}"
        async with self.pool.acquire() as conn, conn.transaction():
            approved = await self.orders.lock(conn, order.order_id)
            if approved is None:
                raise UnknownOrder(order.order_id)
            # Read under the order's row lock: a concurrent place() may have won the race.
            existing = await self.ledger.broker_order_id(order.order_id, conn=conn, any_account=True)
            if existing:
                return existing
            if approved.state != OrderState.APPROVED.value:
                raise OrderNotApproved(order.order_id, approved.state)
            shortfall = await self._margin_shortfall(conn, order) if self.check_buying_power else None
            now = self._now()
            halt = await RiskControls(self.pool).state(conn)
            if halt.halted:
                raise TradingHalted(f"order {order.order_id} not sent: trading is halted ({halt.reason})")
            check_matches_approval(order, approved)
            if shortfall is None:
                good_till = session_close(now) if order.time_in_force == "DAY" else None
                await self.ledger.insert_order(conn, order, broker_order_id, now, good_till)
                await self.orders.transition(order.order_id, OrderState.SUBMITTED, actor=self.actor, conn=conn,
                                             locked_state=approved.state,
                                             reason=f"placed with paper broker as {broker_order_id} at limit {order.limit_price}")
            else:
                await self.orders.transition(order.order_id, OrderState.REJECTED, actor=self.actor, conn=conn,
                                             locked_state=approved.state, reason=f"paper broker rejected: {shortfall}")
        if shortfall is not None:
            raise InsufficientBuyingPower(f"order {order.order_id}: {shortfall}")
        return broker_order_id

    async def _margin_shortfall(self, conn: asyncpg.Connection, order: Order) -> str | None:
        """Why the account cannot carry `order` (its margin need and commission exceed the free
        margin), or None. One read of the books (on `conn`, the placing transaction's connection)
        for both the need and the free margin."""
        checked_at = self._now()
        books = await self.ledger.account_figures(day_start(checked_at), conn=conn)
        need = self._what_if(order, [p for p in books.positions if p.contract.ticker == order.ticker])
        free = self._account(books, checked_at).free_margin
        if need.initial_margin_change > 0 and need.initial_margin_change + need.commission > free:
            return f"margin need {need.initial_margin_change} + commission {need.commission} exceeds free margin {free}"
        return None

    async def replace_limit(self, order_id: str, limit_price: Decimal) -> BrokerOrderStatus:
        """Change a working order's limit (cent tick); the order keeps its id, fills and state.

        One statement (`BrokerLedger.replace_limit`) takes the order's locks, moves the limit and
        writes its event, and returns the order's status."""
        limit = Decimal(limit_price)
        if not limit.is_finite() or limit != limit.quantize(CENT):
            raise ValueError(f"limit_price must be a finite price on a cent tick, got {limit_price}")
        row = await self.ledger.replace_limit(order_id, limit.quantize(CENT), self._now(), sorted(WORKING))
        self._check_working(order_id, row)
        if row["fills_quantity"] != row["filled_quantity"]:
            return await self.status(order_id)  # a fill committed while the lock was awaited
        return status_from_row(order_id, row)

    async def cancel(self, order_id: str, *, reason: str | None = None) -> BrokerOrderStatus:
        """Cancel a working order (SUBMITTED / PARTIALLY_FILLED); filled contracts stay filled."""
        async with self.pool.acquire() as conn, conn.transaction():
            bo = await self._lock_working(conn, order_id)
            await self._cancel_locked(conn, bo, reason or "cancelled", "cancelled")
        return await self.status(order_id)

    async def _lock_working(self, conn: asyncpg.Connection, order_id: str) -> asyncpg.Record:
        """The working order's broker order row with its `orders` state (`state`), it and the order
        locked until the transaction ends."""
        bo = await self.ledger.lock_order(conn, order_id)
        self._check_working(order_id, bo)
        return bo

    def _check_working(self, order_id: str, row: asyncpg.Record | None) -> None:
        """Raise unless `row` (`BrokerLedger.lock_order`'s) is a working order of this account."""
        if row is None:
            raise UnknownOrder(order_id)
        if row["broker_order_id"] is None or row["account_id"] != self.account_id:
            raise UnknownBrokerOrder(f"order {order_id} was never placed with paper account {self.account_id}")
        if row["state"] not in WORKING:
            raise OrderNotWorking(f"order {order_id} is {row['state']}: it is no longer working")

    async def _cancel_locked(self, conn: asyncpg.Connection, bo: asyncpg.Record, reason: str, kind: str) -> None:
        """Cancel the order of `bo` (`BrokerLedger.lock_order`'s row, locked in `conn`)."""
        now = self._now()
        await self.orders.transition(bo["order_id"], OrderState.CANCELLED, actor=self.actor, reason=reason, conn=conn,
                                     locked_state=bo["state"])
        await self.ledger.end_order(conn, bo["broker_order_id"], kind, now,
                                    {"reason": reason, "filled_quantity": bo["filled_quantity"]})

    async def status(self, order_id: str) -> BrokerOrderStatus:
        status = await self.ledger.order_status(order_id)
        if status is None:
            raise UnknownBrokerOrder(f"order {order_id} was never placed with paper account {self.account_id}")
        return status

    async def fills(self, order_id: str) -> list[Fill]:
        return await self.ledger.fills(order_id)

    async def positions(self) -> list[BrokerPosition]:
        return await self.ledger.positions()

    async def account(self) -> BrokerAccount:
        """Cash, marks (quote mids), margin of the open positions and realized P&L."""
        await self._ensure_account()
        now = self._now()
        return self._account(await self.ledger.account_figures(day_start(now)), now)

    def _account(self, books: AccountFigures, now: datetime) -> BrokerAccount:
        """`account` from one read of the books (`BrokerLedger.account_figures` since `day_start(now)`)."""
        cash, positions = books.cash, books.positions
        value, unmarked = Decimal(0), []
        by_ticker: dict[str, list[BrokerPosition]] = {}
        for p in positions:
            quote = self.quotes(p.contract)
            if quote is None:
                mark = p.avg_price
                unmarked.append(p.contract.label())
            else:
                mark = quote.mid
            value += p.quantity * mark * p.contract.multiplier
            by_ticker.setdefault(p.contract.ticker, []).append(p)
        margin = sum((margin_requirement([(p.contract, p.quantity) for p in group], premium_basis(group), self.quotes).requirement
                      for group in by_ticker.values()), Decimal(0))
        for holding in books.shares:
            price = self.share_prices(holding.ticker) if self.share_prices is not None else None
            if price is None:
                price = holding.avg_price
                unmarked.append(f"{holding.ticker} shares")
            value += holding.quantity * Decimal(price)
        nlv = cash + value
        return BrokerAccount(
            account_id=self.account_id, cash=cash, net_liquidation=nlv, positions_value=value, margin_used=margin,
            free_margin=nlv - margin, realized_pnl=books.realized_pnl, realized_pnl_today=books.realized_pnl_since,
            as_of=now, unmarked=tuple(unmarked))

    async def settle_expiries(self, now: datetime, underlying_price: Callable[[str], Decimal]) -> list[dict[str, Any]]:
        """Take every option expired at `now` off the books (`brokers.expiry` rules), in one
        transaction: cash-settled index options pay their intrinsic value in cash, in-the-money
        equity options become shares at the strike, the rest expire worthless.
        `underlying_price(ticker)` is the settlement (closing) price. Safe to repeat: a contract
        is removed once. Returns what was done, one dict per contract."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        await self._ensure_account()
        done: list[dict[str, Any]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            for row in await self.ledger.positions_expiring(conn, latest_expired_date(now)):
                ticker = row["ticker"]
                price = Decimal(underlying_price(ticker))
                outcome, intrinsic, shares = settlement(ticker, row["option_right"], row["strike"], row["quantity"],
                                                        row["multiplier"], price)
                realized = await self.ledger.remove_at_expiry(conn, row, settlement_price=price, intrinsic=intrinsic,
                                                              outcome=outcome, share_change=shares, at=now)
                done.append({"ticker": ticker, "expiry": row["expiry"], "strike": row["strike"],
                             "right": row["option_right"], "quantity": row["quantity"], "outcome": outcome,
                             "settlement_price": price, "intrinsic": intrinsic, "shares": shares,
                             "realized_pnl": realized})
        return done

    async def share_positions(self):
        return await self.ledger.share_positions()

    # ---------------------------------------------------------------- the simulated venue
    async def process(self) -> list[Fill]:
        """One step of the venue at `clock()`: expire DAY orders past the close, then fill every
        working order whose model price is marketable (up to `max_contracts_per_fill` units).
        Returns the new fills, after delivering them to the fill callbacks."""
        await self._ensure_account()
        now = self._now()
        new_fills = []
        for listed in await self.ledger.orders_in_states(sorted(WORKING)):
            fill = await self._step_order(listed, now)
            if fill is not None:
                new_fills.append(fill)
        await self._deliver(new_fills)
        return new_fills

    async def _step_order(self, listed: asyncpg.Record, now: datetime) -> Fill | None:
        """Fill or expire one working order, as `listed` (its unlocked row) says it may. Most steps
        of a limit walk cannot fill: those are decided on the listed row, with no transaction. A
        step that may fill or expire takes the order's locks and decides on the locked row; the
        model price drawn on the listed row stands when that row is unchanged (one slippage draw
        per step, as before), and is drawn again only if the order changed in between."""
        expired = listed["good_till"] is not None and now >= listed["good_till"]
        priced = None if expired else self._marketable_price(listed)
        if not expired and priced is None:
            return None
        order_id = listed["order_id"]
        async with self.pool.acquire() as conn, conn.transaction():
            bo = await self.ledger.lock_order(conn, order_id)
            if bo is None or bo["state"] not in WORKING:
                return None  # cancelled or filled since the list was read
            if bo["good_till"] is not None and now >= bo["good_till"]:
                await self._cancel_locked(conn, bo, f"DAY order expired at the close {bo['good_till'].isoformat()}", "expired")
                return None
            if priced is None or any(bo[k] != listed[k] for k in ("limit_price", "filled_quantity", "quantity")):
                priced = self._marketable_price(bo)
                if priced is None:
                    return None
            legs, price, leg_prices = priced
            remaining = bo["quantity"] - bo["filled_quantity"]
            quantity = remaining if self.max_contracts_per_fill is None else min(remaining, self.max_contracts_per_fill)
            sequence = await self.ledger.fill_count(conn, bo["broker_order_id"]) + 1
            fill = Fill(order_id=order_id, broker_order_id=bo["broker_order_id"],
                        fill_id=f"{bo['broker_order_id']}-F{sequence:03d}", quantity=quantity, price=price,
                        leg_prices=leg_prices, at=now, commission=self.commission_for(legs, quantity))
            await self._apply_locked(conn, fill, bo)
            return fill

    def _marketable_price(self, bo) -> tuple[list[ComboLeg], Decimal, tuple[Decimal, ...]] | None:
        """(legs, model fill price, leg prices) when the order's limit is marketable against the
        quotes now; None when it is not, or some leg has no two-sided quote."""
        legs = [ComboLeg.from_any(leg) for leg in bo["legs"]]
        quotes = self._leg_quotes(bo["ticker"], legs, bo["multiplier"])
        if quotes is None:
            return None  # no two-sided market in some leg: nothing can fill this step
        price, leg_prices = model_fill_price(legs, quotes, self._slippage_fraction())
        return (legs, price, leg_prices) if is_marketable(price, bo["limit_price"]) else None

    async def record_fill(self, fill: Fill) -> bool:
        """Apply a fill report (e.g. replayed from the broker's execution feed).

        Returns False, changing nothing, when this fill id was already recorded. A fill for an
        order that is no longer working raises `OrderNotWorking`.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            bo = await self.ledger.lock_order(conn, fill.order_id)
            if bo is None:
                raise UnknownOrder(fill.order_id)
            if await self.ledger.fill_exists(conn, fill.fill_id):
                return False
            if bo["broker_order_id"] is None or bo["account_id"] != self.account_id:
                raise UnknownBrokerOrder(f"order {fill.order_id} was never placed with paper account {self.account_id}")
            if bo["state"] not in WORKING:
                raise OrderNotWorking(f"order {fill.order_id} is {bo['state']}: fill {fill.fill_id} cannot apply")
            applied = await self._apply_locked(conn, fill, bo)
        if applied:
            await self._deliver([fill])
        return applied

    async def _apply_locked(self, conn: asyncpg.Connection, fill: Fill, bo: asyncpg.Record) -> bool:
        """Record `fill` against `bo` (`BrokerLedger.lock_order`'s row, locked in `conn`)."""
        filled = await self.ledger.apply_fill(conn, fill, bo)
        if filled is None:
            return False
        target = OrderState.FILLED if filled == bo["quantity"] else OrderState.PARTIALLY_FILLED
        await self.orders.transition(fill.order_id, target, actor=self.actor, conn=conn, locked_state=bo["state"],
                                     reason=f"fill {fill.fill_id}: {fill.quantity} @ {fill.price} ({filled}/{bo['quantity']})")
        return True

    async def _deliver(self, fills: Sequence[Fill]) -> None:
        failures: list[tuple[str, BaseException]] = []
        for fill in fills:
            for callback in self._callbacks:
                try:
                    await callback(fill)
                except Exception as exc:  # one failing subscriber must not starve the others
                    log.exception("fill callback failed for %s", fill.fill_id)
                    failures.append((fill.fill_id, exc))
        if failures:
            raise FillCallbackError(failures)
