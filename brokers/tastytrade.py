"""tastytrade through its SDK (`tastytrade` 13, OAuth): the `brokers.base.Broker` protocol.

- Login: an OAuth session from `TASTYTRADE_CLIENT_SECRET` + `TASTYTRADE_REFRESH_TOKEN` (environment
  only); `sandbox: true` uses tastytrade's cert environment. The secrets live only in the SDK's
  session object: nothing here logs, stores or prints them.
- An order is one multi-leg LIMIT order (equity-option legs by OCC symbol, `Buy/Sell to Open`, or
  `to Close` where the leg reduces a position held), each leg's quantity = units x ratio, price per
  unit. tastytrade signs prices the other way round (negative = debit), so our signed limit is
  negated on the way out. `external-identifier` carries our order id: after an outage, or a
  replace (which gives the order a new tastytrade id), the order is found by it.
- `what_if` is `place_order(dry_run=True)`: the buying-power effect, margin change and fees, and
  the broker's warnings, with nothing placed. `place` sends only an APPROVED order while trading is
  not halted (checked just before sending); a refusal (HTTP 4xx) moves it to REJECTED with
  tastytrade's message.
- tastytrade has no push channel for orders here, so `settle` polls the day's orders (at most once a
  `poll_seconds`): leg fills become combo `Fill`s (leg fills grouped in order), each with the fees
  tastytrade booked for that execution — commission, clearing, regulatory and index-option fees of
  the order's Trade transactions sharing the fill's group fill id (a fill waits for them up to
  `fee_wait_seconds`, then is recorded with commission 0 and a warning),
  and Live / Filled / Cancelled / Rejected map onto the state machine. A request that fails at the
  transport level moves working orders to UNKNOWN; the next successful poll reconciles them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import httpx2
from tastytrade import Account, Session
from tastytrade.order import InstrumentType, Leg, LimitOrder, OrderAction, OrderTimeInForce
from tastytrade.utils import TastytradeError

from brokers.base import BrokerError, FillCallback, OrderNotWorking
from domain.orders import (
    BrokerAccount,
    BrokerOrderStatus,
    BrokerPosition,
    ComboLeg,
    Order,
    Fill,
    OptionContract,
    WhatIfMargin,
)
from brokers.live import BrokerDisconnected, BrokerRejected, LiveOrderBook, refuse_shares, weighted
from domain.order_state import TERMINAL, OrderState
from config.connections import TastytradeConfig

log = logging.getLogger(__name__)

WORKING_STATUSES = frozenset({"Received", "Routed", "In Flight", "Live", "Contingent", "Cancel Requested",
                              "Replace Requested"})
ENDED_STATUSES = frozenset({"Cancelled", "Expired", "Removed", "Partially Removed", "Rejected"})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def occ_symbol(ticker: str, expiry: date, strike: Decimal, right: str) -> str:
    """The OCC option symbol tastytrade uses: root padded to 6, YYMMDD, C/P, strike x 1000 in 8 digits."""
    return f"{ticker.upper():<6}{expiry:%y%m%d}{right}{int(strike * 1000):08d}"


def parse_occ(symbol: str, multiplier: int = 100) -> OptionContract:
    root, rest = symbol[:6].strip(), symbol[6:].strip()
    expiry = datetime.strptime(rest[:6], "%y%m%d").date()
    return OptionContract(root, expiry, Decimal(int(rest[7:15])) / 1000, rest[6], multiplier)


def open_session(config: TastytradeConfig) -> Session:
    """An OAuth session (not yet logged in) for the configured environment."""
    if not config.has_credentials:
        raise BrokerError("tastytrade credentials missing: set " + " and ".join(config.missing_credentials()))
    session = Session(config.client_secret.get_secret_value(), config.refresh_token.get_secret_value(),
                      is_test=config.sandbox, timeout=15.0)
    if config.api_url:
        # The SDK fixes its base URL to production or cert; a proxy (or a local fake) needs this.
        session._client.base_url = config.api_url
    return session


def _problem(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def probe(config: TastytradeConfig) -> dict:
    """What `hedgegraph doctor` reports for tastytrade: login, and the account to trade."""
    session = open_session(config)
    where = "sandbox (cert)" if config.sandbox else "production"
    try:
        async with session:
            try:
                await session.refresh(force=True)
            except TastytradeError as exc:
                return {"status": "error", "detail": f"tastytrade {where} login refused: {_problem(exc)} "
                                                     "(check TASTYTRADE_CLIENT_SECRET and TASTYTRADE_REFRESH_TOKEN)"}
            accounts = await Account.get(session)
    except httpx2.TransportError as exc:
        return {"status": "error", "detail": f"cannot reach tastytrade {where} at {session._client.base_url}: "
                                             f"{_problem(exc)}"}
    numbers = [a.account_number for a in accounts]
    if config.account and config.account not in numbers:
        return {"status": "error", "detail": f"account {config.account} is not among this login's accounts "
                                             f"({', '.join(numbers) or 'none'})"}
    if not numbers:
        return {"status": "error", "detail": "this login has no open account"}
    return {"status": "ok", "detail": f"logged in to tastytrade {where}; account {config.account or numbers[0]}",
            "data": {"environment": where, "accounts": numbers}}


class TastytradeSession:
    """A logged-in session for market data alone (no account book, no orders): what
    `brokers.tastytrade_market` needs of a broker (`session`, `ensure_connected`, `_call`)."""

    def __init__(self, config: TastytradeConfig):
        self.config = config
        self.session: Session | None = None

    async def ensure_connected(self) -> None:
        if self.session is not None:
            return
        session = open_session(self.config)
        try:
            await session.refresh(force=True)
        except TastytradeError as exc:
            problem = f"tastytrade login refused: {_problem(exc)}"
        except httpx2.TransportError as exc:
            problem = f"cannot reach tastytrade at {session._client.base_url}: {_problem(exc)}"
        else:
            self.session = session
            return
        await session._client.aclose()
        raise BrokerError(problem)

    async def _call(self, make):
        try:
            return await make()
        except httpx2.TransportError as exc:
            problem = f"cannot reach tastytrade: {_problem(exc)}"
        raise BrokerDisconnected(problem)

    async def close(self) -> None:
        if self.session is not None:
            await self.session._client.aclose()
            self.session = None


class TastytradeBroker:
    """See the module docstring. `db` is a `storage.database.Database` or an asyncpg pool."""

    name = "tastytrade"

    @property
    def ledger_account_id(self) -> str:
        """The account id our ledger and book record this broker's fills under (set on connect)."""
        if self.book is None:
            raise BrokerError(f"{self.name}: not connected yet, so no account is known")
        return self.book.account_id

    def __init__(self, db, config: TastytradeConfig, *, clock: Callable[[], datetime] = utc_now,
                 poll_seconds: float = 1.0, actor: str = "broker:tastytrade", fee_wait_seconds: float = 120.0):
        self.pool = getattr(db, "pool", db)
        self.config = config
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.fee_wait_seconds = fee_wait_seconds
        self._fill_first_seen: dict[str, float] = {}
        self.actor = actor
        self.session: Session | None = None
        self.account_: Account | None = None
        self.book: LiveOrderBook | None = None
        self._callbacks: list[FillCallback] = []
        self._cancel_reasons: dict[str, str] = {}
        self._sync_lock = asyncio.Lock()
        self._connected = False

    # ---------------------------------------------------------------- connection
    async def connect(self) -> "TastytradeBroker":
        if self.session is None:
            self.session = open_session(self.config)
        try:
            await self.session.refresh(force=True)
            accounts = await Account.get(self.session)
        except TastytradeError as exc:
            raise BrokerError(f"tastytrade login refused: {_problem(exc)}") from None
        except httpx2.TransportError as exc:
            raise BrokerDisconnected(f"cannot reach tastytrade at {self.session._client.base_url}: {_problem(exc)}") from None
        chosen = [a for a in accounts if not self.config.account or a.account_number == self.config.account]
        if not chosen:
            raise BrokerError(f"account {self.config.account} is not among this login's accounts")
        if self.account_ is None:
            self.account_ = chosen[0]
            self.book = LiveOrderBook(self.pool, f"tastytrade:{self.account_.account_number}", self.name, self.actor)
            self.book.callbacks = self._callbacks
            await self.book.ensure_account(self.clock())
        self._connected = True
        await self.reconcile()
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session._client.aclose()
            self.session = None

    async def ensure_connected(self) -> None:
        if self.book is None or not self._connected:
            await self.connect()

    async def _call(self, make):
        """One SDK request; a transport failure marks the working orders UNKNOWN (once) and raises."""
        try:
            return await make()
        except httpx2.TransportError as exc:
            if self._connected and self.book is not None:
                self._connected = False
                await self.book.mark_unknown(f"connection to tastytrade lost ({_problem(exc)}): "
                                             "tastytrade's report decides on reconnect")
            raise BrokerDisconnected(f"cannot reach tastytrade: {_problem(exc)}") from None

    async def reconcile(self) -> list[str]:
        order_ids = await self.book.working_order_ids()
        if order_ids:
            orders = await self._todays_orders()
            for order_id in order_ids:
                await self._sync(order_id, orders)
        return order_ids

    # ---------------------------------------------------------------- tastytrade -> our state
    async def _todays_orders(self):
        return await self._call(lambda: self.account_.get_live_orders(self.session))

    def _ours(self, orders, order_id: str):
        return sorted((o for o in orders if o.external_identifier == order_id), key=lambda o: o.id)

    async def _sync(self, order_id: str, orders=None) -> None:
        async with self._sync_lock:
            row = await self.book.row(order_id)
            if row is None or await self.book.state(order_id) in TERMINAL:
                return
            if orders is None:
                orders = await self._todays_orders()
            ours = self._ours(orders, order_id)
            legs = [ComboLeg.from_any(leg) for leg in row["legs"]]
            for placed in ours:
                fees = await self._order_fees(placed)
                for fill in self._combo_fills(order_id, row["broker_order_id"], row["ticker"], legs, placed, fees):
                    await self.book.apply_fill(fill)
            state = await self.book.state(order_id)
            if state in TERMINAL or not ours:
                if not ours and state == OrderState.UNKNOWN:
                    log.warning("order %s: tastytrade reports no order with that identifier today; it stays UNKNOWN",
                                order_id)
                return
            current = ours[-1]
            filled = (await self.book.row(order_id))["filled_quantity"]
            status = current.status.value if hasattr(current.status, "value") else str(current.status)
            if status in ENDED_STATUSES:
                requested = self._cancel_reasons.get(order_id)
                if status == "Rejected" and filled == 0:
                    await self.book.move(order_id, OrderState.REJECTED,
                                         f"tastytrade rejected the order: {current.reject_reason or 'no reason given'}")
                elif requested is not None:
                    await self.book.move(order_id, OrderState.CANCELLED, f"cancelled: {requested}")
                else:
                    await self.book.move(order_id, OrderState.CANCELLED,
                                         f"cancelled by tastytrade ({status}); {filled} of {row['quantity']} filled")
            elif status in WORKING_STATUSES and state == OrderState.UNKNOWN:
                target = OrderState.PARTIALLY_FILLED if filled else OrderState.SUBMITTED
                await self.book.move(order_id, target, f"reconciled after reconnect: tastytrade reports {status}, "
                                                       f"{filled} of {row['quantity']} filled")

    async def _order_fees(self, placed) -> dict[str, Decimal]:
        """What one tastytrade order's executions cost, per group fill id (one combo execution's leg
        fills share it): commission + clearing + regulatory + index-option fees of its Trade
        transactions, in dollars paid. Empty while the order has no fill."""
        fills = [f for leg in placed.legs for f in (leg.fills or [])]
        if not fills:
            return {}
        first = min(f.filled_at for f in fills).date() - timedelta(days=1)  # the transaction date may lag a day
        transactions = await self._call(lambda: self.account_.get_history(self.session, type="Trade", start_date=first,
                                                                          page_offset=None))
        fees: dict[str, Decimal] = {}
        for t in transactions:
            if t.order_id != placed.id or t.ext_group_fill_id is None:
                continue
            charged = sum((x for x in (t.commission, t.clearing_fees, t.regulatory_fees,
                                       t.proprietary_index_option_fees) if x is not None), Decimal(0))
            fees[t.ext_group_fill_id] = fees.get(t.ext_group_fill_id, Decimal(0)) - charged  # debits are negative
        return fees

    def _commission(self, lead, fees: dict[str, Decimal]) -> Decimal | None:
        """The fees of the combo execution `lead` belongs to; None while they may still be booked."""
        group = lead.ext_group_fill_id
        if group is not None and group in fees:
            return fees[group]
        seen = self._fill_first_seen.setdefault(lead.fill_id, time.monotonic())
        if time.monotonic() - seen < self.fee_wait_seconds:
            return None
        log.warning("tastytrade booked no fees for fill %s within %gs: recorded with commission 0",
                    lead.fill_id, self.fee_wait_seconds)
        return Decimal(0)

    def _combo_fills(self, order_id: str, broker_order_id: str, ticker: str, legs: list[ComboLeg], placed,
                     fees: dict[str, Decimal]) -> list[Fill]:
        """Combo fills of one tastytrade order: each fill of the first leg, with the same number of
        units taken from every other leg's fills in order (deterministic on every poll), and the
        fees tastytrade booked for that execution. A fill whose fees are not booked yet waits (with
        the fills after it) up to `fee_wait_seconds`, then is recorded with commission 0 and a warning."""
        by_symbol = {leg.symbol: leg for leg in placed.legs}
        queues, first = [], []
        for i, leg in enumerate(legs):
            placed_leg = by_symbol.get(occ_symbol(ticker, leg.expiry, leg.strike, leg.right))
            fills = sorted(placed_leg.fills or [], key=lambda f: (f.filled_at, f.fill_id)) if placed_leg else []
            if i == 0:
                first = fills
            else:
                queues.append([[Decimal(f.quantity), Decimal(f.fill_price)] for f in fills])
        out = []
        for lead in first:
            units = int(Decimal(lead.quantity) / legs[0].ratio)
            prices, complete = [Decimal(lead.fill_price)], True
            for leg, queue in zip(legs[1:], queues):
                need, parts = Decimal(units * leg.ratio), []
                while need > 0 and queue:
                    take = min(need, queue[0][0])
                    parts.append((take, queue[0][1]))
                    queue[0][0] -= take
                    need -= take
                    if queue[0][0] == 0:
                        queue.pop(0)
                if need > 0:
                    complete = False
                    break
                prices.append(weighted(parts).quantize(Decimal("0.000001")))
            if not complete or units < 1:
                break
            commission = self._commission(lead, fees)
            if commission is None:
                break
            price = sum((leg.sign * leg.ratio * p for leg, p in zip(legs, prices)), Decimal(0))
            at = lead.filled_at if lead.filled_at.tzinfo else lead.filled_at.replace(tzinfo=timezone.utc)
            out.append(Fill(order_id=order_id, broker_order_id=broker_order_id, fill_id=f"tt-{placed.id}-{lead.fill_id}",
                            quantity=units, price=price, leg_prices=tuple(prices), at=at, commission=commission))
        return out

    # ---------------------------------------------------------------- orders
    async def _actions(self, order: Order) -> list[OrderAction]:
        held = {(p.contract.expiry, p.contract.strike, p.contract.right): p.quantity
                for p in await self.positions() if p.contract.ticker == order.ticker}
        actions = []
        for leg in order.legs:
            position = held.get((leg.expiry, leg.strike, leg.right), 0)
            closing = position * leg.sign < 0  # buying back a short, or selling a long
            if leg.side == "buy":
                actions.append(OrderAction.BUY_TO_CLOSE if closing else OrderAction.BUY_TO_OPEN)
            else:
                actions.append(OrderAction.SELL_TO_CLOSE if closing else OrderAction.SELL_TO_OPEN)
        return actions

    async def _tasty_order(self, order: Order, limit: Decimal | None = None) -> LimitOrder:
        actions = await self._actions(order)
        legs = [Leg(instrument_type=InstrumentType.EQUITY_OPTION, action=action,
                    symbol=occ_symbol(order.ticker, leg.expiry, leg.strike, leg.right),
                    quantity=order.quantity * leg.ratio) for leg, action in zip(order.legs, actions)]
        return LimitOrder(time_in_force=OrderTimeInForce.DAY if order.time_in_force == "DAY" else OrderTimeInForce.GTC,
                          legs=legs, price=-(order.limit_price if limit is None else limit),
                          external_identifier=order.order_id)

    def subscribe_fills(self, callback: FillCallback) -> None:
        self._callbacks.append(callback)

    async def what_if(self, order: Order) -> WhatIfMargin:
        """`place_order(dry_run=True)`: tastytrade's buying-power effect and fees; nothing is placed."""
        refuse_shares(order, self.name)
        await self.ensure_connected()
        tasty = await self._tasty_order(order)
        try:
            response = await self._call(lambda: self.account_.place_order(self.session, tasty, dry_run=True))
            balances = await self._call(lambda: self.account_.get_balances(self.session))
        except TastytradeError as exc:
            raise BrokerError(f"tastytrade dry run refused order {order.order_id}: {_problem(exc)}") from None
        effect = response.buying_power_effect
        change = -effect.change_in_margin_requirement  # a requirement that grows is a debit (negative) here
        commission = abs(response.fee_calculation.total_fees) if response.fee_calculation else Decimal(0)
        before = balances.maintenance_requirement
        return WhatIfMargin(
            initial_margin_change=change, maintenance_margin_change=change, commission=commission,
            cash_change=-order.limit_price * order.quantity * order.multiplier - commission,
            margin_before=before, margin_after=before + change, method="tastytrade_dry_run",
            buying_power_change=effect.change_in_buying_power,
            warnings=tuple(f"{w.code}: {w.message}" for w in response.warnings or ()))

    async def place(self, order: Order) -> str:
        await self.ensure_connected()
        existing = await self.book.broker_order_id(order.order_id)
        if existing:
            return existing
        await self.book.approved_record(order)  # not APPROVED, halted or altered: raises, nothing sent
        ours = self._ours(await self._todays_orders(), order.order_id)  # sent before a crash: adopt it
        if ours:
            placed = ours[0]
        else:
            tasty = await self._tasty_order(order)
            try:
                placed = (await self._call(lambda: self.account_.place_order(self.session, tasty, dry_run=False))).order
            except TastytradeError as exc:
                reason = f"tastytrade rejected the order: {_problem(exc)}"
                await self.book.record_rejected_before_placing(order.order_id, reason)
                raise BrokerRejected(f"order {order.order_id}: {reason}") from None
        broker_order_id = f"TT-{placed.id}"
        await self.book.record_placed(order, broker_order_id, self.clock(),
                                      f"placed with tastytrade as order {placed.id}: {len(order.legs)} legs, "
                                      f"{order.quantity} units LMT {order.limit_price} {order.time_in_force}")
        await self._sync(order.order_id)
        return broker_order_id

    async def _current(self, order_id: str):
        await self.ensure_connected()
        orders = await self._todays_orders()
        await self._sync(order_id, orders)
        state = await self.book.state(order_id)
        if state not in (OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED):
            raise OrderNotWorking(f"order {order_id} is {state}: it is no longer working")
        ours = self._ours(orders, order_id)
        if not ours:
            raise OrderNotWorking(f"order {order_id}: tastytrade holds no working order for it")
        return ours[-1]

    async def replace_limit(self, order_id: str, limit_price: Decimal) -> BrokerOrderStatus:
        limit = Decimal(limit_price)
        if not limit.is_finite() or limit != limit.quantize(Decimal("0.01")):
            raise ValueError(f"limit_price must be a finite price on a cent tick, got {limit_price}")
        current = await self._current(order_id)
        row = await self.book.row(order_id)
        combo = Order(order_id=order_id, ticker=row["ticker"], legs=tuple(row["legs"]), quantity=row["quantity"],
                      limit_price=limit, time_in_force=row["time_in_force"], multiplier=row["multiplier"])
        tasty = await self._tasty_order(combo)
        try:
            await self._call(lambda: self.account_.replace_order(self.session, current.id, tasty))
        except TastytradeError as exc:
            await self._sync(order_id)
            if await self.book.state(order_id) in TERMINAL:
                raise OrderNotWorking(f"order {order_id} ended before its limit could change") from None
            raise BrokerError(f"tastytrade refused the new limit {limit} for {order_id}: {_problem(exc)}") from None
        await self.book.set_limit(order_id, limit, self.clock())
        await self._sync(order_id)
        return await self.book.status(order_id)

    async def cancel(self, order_id: str, *, reason: str | None = None) -> BrokerOrderStatus:
        current = await self._current(order_id)
        self._cancel_reasons[order_id] = reason or "cancelled"
        try:
            await self._call(lambda: self.account_.delete_order(self.session, current.id))
        except TastytradeError as exc:
            log.warning("tastytrade refused to cancel %s: %s", order_id, _problem(exc))
        await self.settle(order_id, max(2 * self.poll_seconds, 1.0))
        return await self.book.status(order_id)

    async def status(self, order_id: str) -> BrokerOrderStatus:
        try:
            await self.ensure_connected()
            await self._sync(order_id)
        except BrokerDisconnected as exc:
            log.warning("status of %s from the mirror only: %s", order_id, exc)
        return await self.book.status(order_id)

    async def settle(self, order_id: str, timeout: float) -> None:
        """Poll tastytrade (every `poll_seconds`) for up to `timeout` seconds or until the order is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            try:
                await self.ensure_connected()
                await self._sync(order_id)
            except BrokerDisconnected as exc:
                log.warning("order %s: %s", order_id, exc)
            if await self.book.state(order_id) in TERMINAL:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(self.poll_seconds, remaining))

    async def fills(self, order_id: str) -> list[Fill]:
        await self.ensure_connected()
        return await self.book.fills(order_id)

    async def positions(self) -> list[BrokerPosition]:
        """The account's equity-option positions as tastytrade reports them."""
        await self.ensure_connected()
        held = await self._call(lambda: self.account_.get_positions(self.session))
        out = []
        for p in held:
            if p.instrument_type != InstrumentType.EQUITY_OPTION or not p.quantity:
                continue
            contract = parse_occ(p.symbol, int(p.multiplier))
            sign = -1 if p.quantity_direction == "Short" else 1
            out.append(BrokerPosition(contract=contract, quantity=sign * int(abs(p.quantity)),
                                      avg_price=abs(Decimal(p.average_open_price)), realized_pnl=Decimal(p.realized_today)))
        return sorted(out, key=lambda p: (p.contract.ticker, p.contract.expiry, p.contract.strike, p.contract.right))

    async def account(self) -> BrokerAccount:
        await self.ensure_connected()
        b = await self._call(lambda: self.account_.get_balances(self.session))
        held = await self._call(lambda: self.account_.get_positions(self.session))
        realized = sum((Decimal(p.realized_today) for p in held), Decimal(0))
        positions_value = b.long_derivative_value - b.short_derivative_value + b.long_equity_value - b.short_equity_value
        return BrokerAccount(
            account_id=self.account_.account_number, cash=b.cash_balance, net_liquidation=b.net_liquidating_value,
            positions_value=positions_value, margin_used=b.maintenance_requirement,
            free_margin=b.net_liquidating_value - b.maintenance_requirement, realized_pnl=realized,
            realized_pnl_today=realized, as_of=self.clock())
