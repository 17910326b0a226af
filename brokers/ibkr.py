"""Interactive Brokers through ib_async (TWS or IB Gateway): the `brokers.base.Broker` protocol.

- An order is one BAG combo (SMART-routed legs, qualified to conIds) that BUYS `quantity` units at a
  signed LMT price (negative = credit), the same convention as ours, so the limit goes over as is.
  `orderRef` carries our order id: after a reconnect or a crash the order and its executions are
  found by it, and `place` adopts an order IB already holds instead of sending it twice.
- `place` transmits only an APPROVED order while trading is not halted (checked against the
  database just before sending) and records it SUBMITTED; `what_if` asks IB's `whatIfOrder` for
  the initial/maintenance margin change and commission without placing anything.
- IB pushes `openOrder` / `orderStatus` / `execDetails` / `commissionReport`; each push wakes a
  sync of that order: executions become `Fill`s (one per BAG execution, leg prices from the legs'
  executions, commission from their commission reports — a fill is recorded once every report
  has arrived), and the order moves SUBMITTED -> PARTIALLY_FILLED -> FILLED, or CANCELLED /
  REJECTED with IB's own message (e.g. error 201 "Order rejected - reason: ...").
- A lost connection moves every working order to UNKNOWN. The next use reconnects; the startup
  sync fetches open orders, completed orders and executions, and every UNKNOWN order is
  reconciled from IB's report (working again, filled, cancelled); one IB has never heard of
  stays UNKNOWN and says so.
- Pacing: ib_async queues requests beyond 45 a second; contract qualifications are cached.

Positions and account values are read from IB (`reqPositions`, `reqAccountSummary`); the local
mirror (`brokers.live.LiveOrderBook`) keeps only our orders and their executions.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import date, datetime, timezone
from decimal import Decimal

from ib_async import IB, Contract, LimitOrder, Option, Stock
from ib_async import ComboLeg as IbComboLeg
from ib_async.ib import StartupFetch
from ib_async.wrapper import RequestError

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
from brokers.live import BrokerDisconnected, LiveOrderBook, refuse_shares, to_decimal, weighted
from domain.order_state import TERMINAL, OrderState
from config.connections import IbkrConfig

log = logging.getLogger(__name__)

STARTUP_FETCH = StartupFetch.POSITIONS | StartupFetch.ORDERS_OPEN | StartupFetch.ORDERS_COMPLETE | \
    StartupFetch.EXECUTIONS
DONE = frozenset({"Cancelled", "ApiCancelled", "Inactive"})
CANCELLED_BY_REQUEST = 202  # IB's "Order Canceled" message code: not a rejection
WARNING_CODES = frozenset({105, 110, 165, 321, 329, 399, 404, 434, 492, 10167})
UNSET = 1.7976931348623157e308
MARKET_DATA_TYPES = {1: "live", 2: "frozen", 3: "delayed", 4: "delayed-frozen"}


def is_warning(code: int) -> bool:
    """IB's informational and validation-warning codes (the order stays live), as ib_async treats them."""
    return code in WARNING_CODES or 2100 <= code < 2200


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def ib_expiry(expiry: date) -> str:
    return expiry.strftime("%Y%m%d")


def parse_expiry(text: str) -> date:
    return datetime.strptime(text[:8], "%Y%m%d").date()


def option_contract_of(contract: Contract) -> OptionContract | None:
    """Our `OptionContract` for an IB OPT contract (None for anything else)."""
    if contract.secType != "OPT":
        return None
    return OptionContract(contract.symbol, parse_expiry(contract.lastTradeDateOrContractMonth),
                          to_decimal(contract.strike, Decimal("0.0001")), contract.right[:1],
                          int(float(contract.multiplier or 100)))


def _money(text: str | float) -> Decimal | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    if value == UNSET or value != value:
        return None
    return to_decimal(value, Decimal("0.0001"))


async def connect_tws(ib: IB, cfg: IbkrConfig, client_id: int, **kwargs) -> None:
    """`ib.connectAsync` to the configured TWS / IB Gateway, each way it can fail as one clear
    `BrokerDisconnected` line (the order connection and the market-data one share it)."""
    try:
        await ib.connectAsync(cfg.host, cfg.port, clientId=client_id, timeout=cfg.timeout_s, account=cfg.account,
                              **kwargs)
    except ConnectionRefusedError:
        raise BrokerDisconnected(f"nothing listens on {cfg.address} (connection refused): start TWS or IB Gateway "
                                 f"and enable API socket clients on port {cfg.port}") from None
    except (TimeoutError, asyncio.TimeoutError):
        raise BrokerDisconnected(f"TWS/IB Gateway at {cfg.address} did not complete the API handshake within "
                                 f"{cfg.timeout_s:g}s (is client id {client_id} already in use?)") from None
    except OSError as exc:
        raise BrokerDisconnected(f"cannot reach TWS/IB Gateway at {cfg.address}: {exc.strerror or exc}") from None


class IbkrBroker:
    """See the module docstring. `db` is a `storage.database.Database` or an asyncpg pool."""

    name = "ibkr"

    @property
    def ledger_account_id(self) -> str:
        """The account id our ledger and book record this broker's fills under (set on connect)."""
        if self.book is None:
            raise BrokerError(f"{self.name}: not connected yet, so no account is known")
        return self.book.account_id

    def __init__(self, db, config: IbkrConfig, *, clock: Callable[[], datetime] = utc_now, ib: IB | None = None,
                 actor: str = "broker:ibkr"):
        self.pool = getattr(db, "pool", db)
        self.config = config
        self.clock = clock
        self.ib = ib or IB()
        self.ib.RaiseRequestErrors = True
        self.actor = actor
        self.account_id: str | None = None
        self.book: LiveOrderBook | None = None
        self._callbacks: list[FillCallback] = []
        self._conids: dict[OptionContract, int] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._wired = False

    # ---------------------------------------------------------------- connection
    async def connect(self) -> "IbkrBroker":
        """Connect (or reconnect), pick the account, and reconcile every order we left working."""
        cfg = self.config
        self._closing = False
        await connect_tws(self.ib, cfg, cfg.client_id, fetchFields=STARTUP_FETCH)
        accounts = self.ib.managedAccounts()
        if cfg.account and cfg.account not in accounts:
            self.ib.disconnect()
            raise BrokerError(f"account {cfg.account} is not managed by this login (managed: {', '.join(accounts)})")
        if not cfg.account and len(accounts) != 1:
            self.ib.disconnect()
            raise BrokerError(f"this login manages {len(accounts)} accounts ({', '.join(accounts)}): "
                              "set HEDGEGRAPH_IBKR_ACCOUNT to the one to trade")
        account = cfg.account or accounts[0]
        if self.account_id not in (None, account):
            raise BrokerError(f"reconnected to account {account}, not {self.account_id}")
        self.account_id = account
        if self.book is None:
            self.book = LiveOrderBook(self.pool, f"ibkr:{account}", self.name, self.actor)
            self.book.callbacks = self._callbacks
        await self.book.ensure_account(self.clock())
        self.ib.reqMarketDataType(1 if cfg.market_data == "live" else 3)
        # A lost connection's UNKNOWN marking must land before IB's report reconciles the orders.
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if not self._wired:
            self.ib.disconnectedEvent += self._on_disconnected
            self.ib.orderStatusEvent += self._on_trade
            self.ib.execDetailsEvent += self._on_fill
            self.ib.commissionReportEvent += self._on_commission
            self._wired = True
        await self.reconcile()
        return self

    async def close(self) -> None:
        self._closing = True
        if self.ib.isConnected():
            self.ib.disconnect()
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)

    async def ensure_connected(self) -> None:
        if not self.ib.isConnected():
            await self.connect()

    async def reconcile(self) -> list[str]:
        """Bring every order we hold as working (or UNKNOWN) in line with IB's report."""
        order_ids = await self.book.working_order_ids()
        for order_id in order_ids:
            await self._sync(order_id)
        return order_ids

    # ---------------------------------------------------------------- pushed events
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake(self, trade) -> None:
        self._changed.set()
        order_id = getattr(trade.order, "orderRef", "") if trade is not None else ""
        if order_id and self.book is not None:
            self._spawn(self._sync_logged(order_id))

    def _on_trade(self, trade) -> None:
        self._wake(trade)

    def _on_fill(self, trade, fill) -> None:
        self._wake(trade)

    def _on_commission(self, trade, fill, report) -> None:
        self._wake(trade)

    def _on_disconnected(self) -> None:
        self._changed.set()
        if self._closing or self.book is None:
            return
        reason = f"connection to TWS/IB Gateway at {self.config.address} lost: IB's report decides on reconnect"
        self._spawn(self.book.mark_unknown(reason))

    async def _sync_logged(self, order_id: str) -> None:
        try:
            await self._sync(order_id)
        except Exception:
            log.exception("syncing order %s with IBKR failed", order_id)

    # ---------------------------------------------------------------- IB -> our state
    def _trade_for(self, order_id: str):
        trades = [t for t in self.ib.trades() if t.order.orderRef == order_id and not t.order.whatIf]
        return max(trades, key=lambda t: t.order.orderId) if trades else None

    async def _sync(self, order_id: str) -> None:
        async with self._sync_lock:
            row = await self.book.row(order_id)
            if row is None or await self.book.state(order_id) in TERMINAL:
                return
            legs = [ComboLeg.from_any(leg) for leg in row["legs"]]
            for fill in self._combo_fills(order_id, row["broker_order_id"], row["ticker"], legs):
                await self.book.apply_fill(fill)
            state = await self.book.state(order_id)
            if state in TERMINAL:
                return
            filled = (await self.book.row(order_id))["filled_quantity"]
            trade = self._trade_for(order_id)
            if trade is None:
                if state == OrderState.UNKNOWN and self.ib.isConnected():
                    log.warning("order %s: IBKR reports no open or completed order with orderRef %s; it stays UNKNOWN",
                                order_id, order_id)
                return
            status = trade.orderStatus.status
            errors = [e for e in trade.log if e.errorCode and e.errorCode != CANCELLED_BY_REQUEST
                      and not is_warning(e.errorCode)]
            if status in DONE or (errors and not trade.isActive()):
                if trade.orderStatus.filled > filled:
                    return  # executions are still on their way: they decide first
                requested = self._cancel_reasons.get(order_id)
                if errors and filled == 0 and status != "ApiCancelled":
                    await self.book.move(order_id, OrderState.REJECTED,
                                         f"IBKR rejected the order: error {errors[-1].errorCode}: {errors[-1].message}")
                elif requested is not None:
                    await self.book.move(order_id, OrderState.CANCELLED, f"cancelled: {requested}")
                else:
                    why = f"error {errors[-1].errorCode}: {errors[-1].message}" if errors else status
                    await self.book.move(order_id, OrderState.CANCELLED, f"cancelled by IBKR ({why}); "
                                                                         f"{filled} of {row['quantity']} filled")
            elif state == OrderState.UNKNOWN and self.ib.isConnected() and status != "Filled":
                target = OrderState.PARTIALLY_FILLED if filled else OrderState.SUBMITTED
                await self.book.move(order_id, target, f"reconciled after reconnect: IBKR reports {status}, "
                                                       f"{filled} of {row['quantity']} filled")

    def _combo_fills(self, order_id: str, broker_order_id: str, ticker: str, legs: list[ComboLeg]) -> list[Fill]:
        """One `Fill` per BAG execution, in execution order, once its legs' executions and every
        commission report are in. Leg executions are matched to legs by contract and consumed in
        order, so the n-th combo fill always gets the same leg prices however often this runs."""
        executions = [f for f in self.ib.fills() if f.execution.orderRef == order_id]
        order_key = lambda f: (f.execution.time, f.execution.execId)  # noqa: E731
        combos = sorted((f for f in executions if f.contract.secType == "BAG"), key=order_key)
        queues: list[list[list]] = [[] for _ in legs]
        index = {(leg.expiry, leg.strike, leg.right): i for i, leg in enumerate(legs)}
        for f in sorted((f for f in executions if f.contract.secType == "OPT"), key=order_key):
            contract = option_contract_of(f.contract)
            i = index.get((contract.expiry, contract.strike, contract.right)) if contract else None
            if i is not None:
                queues[i].append([Decimal(str(f.execution.shares)), to_decimal(f.execution.price), f])
        charged: set[str] = set()
        fills: list[Fill] = []
        for combo in combos:
            units = int(combo.execution.shares)
            leg_prices, parts_used, complete = [], [combo], True
            for leg, queue in zip(legs, queues):
                need, parts = Decimal(units * leg.ratio), []
                while need > 0 and queue:
                    take = min(need, queue[0][0])
                    parts.append((take, queue[0][1]))
                    parts_used.append(queue[0][2])
                    queue[0][0] -= take
                    need -= take
                    if queue[0][0] == 0:
                        queue.pop(0)
                if need > 0:
                    complete = False
                    break
                leg_prices.append(weighted(parts).quantize(Decimal("0.000001")))
            if not complete or any(not p.commissionReport.execId for p in parts_used):
                break  # later executions wait for this one: fills are recorded in order
            commission = Decimal(0)
            for part in parts_used:
                if part.execution.execId not in charged:
                    charged.add(part.execution.execId)
                    commission += to_decimal(part.commissionReport.commission, Decimal("0.0001"))
            price = sum((leg.sign * leg.ratio * p for leg, p in zip(legs, leg_prices)), Decimal(0))
            at = combo.execution.time if combo.execution.time.tzinfo else combo.execution.time.replace(tzinfo=timezone.utc)
            fills.append(Fill(order_id=order_id, broker_order_id=broker_order_id, fill_id=combo.execution.execId,
                              quantity=units, price=price, leg_prices=tuple(leg_prices), at=at,
                              commission=max(commission, Decimal(0))))
        return fills

    # ---------------------------------------------------------------- contracts
    async def _qualify(self, contracts: list[OptionContract]) -> list[int]:
        missing = [c for c in contracts if c not in self._conids]
        if missing:
            options = [Option(c.ticker, ib_expiry(c.expiry), float(c.strike), c.right, "SMART",
                              multiplier=str(c.multiplier), currency="USD") for c in missing]
            qualified = await asyncio.wait_for(self.ib.qualifyContractsAsync(*options), self.config.timeout_s * 2)
            for contract, result in zip(missing, qualified):
                if result is None or not getattr(result, "conId", 0):
                    raise BrokerError(f"IBKR does not know the option {contract.label()}")
                self._conids[contract] = result.conId
        return [self._conids[c] for c in contracts]

    async def _bag(self, order: Order) -> Contract:
        conids = await self._qualify(order.contracts())
        legs = [IbComboLeg(conId=conid, ratio=leg.ratio, action=leg.side.upper(), exchange="SMART")
                for conid, leg in zip(conids, order.legs)]
        return Contract(symbol=order.ticker, secType="BAG", currency="USD", exchange="SMART", comboLegs=legs)

    def _ib_order(self, order: Order) -> LimitOrder:
        return LimitOrder("BUY", order.quantity, float(order.limit_price), orderRef=order.order_id,
                          tif=order.time_in_force, account=self.account_id or "")

    # ---------------------------------------------------------------- Broker protocol
    def subscribe_fills(self, callback: FillCallback) -> None:
        self._callbacks.append(callback)

    async def what_if(self, order: Order) -> WhatIfMargin:
        """IB's own margin and commission for this order (`whatIfOrder`): nothing is placed."""
        refuse_shares(order, self.name)
        await self.ensure_connected()
        state = await asyncio.wait_for(self.ib.whatIfOrderAsync(await self._bag(order), self._ib_order(order)),
                                       self.config.timeout_s * 2)
        if not state or _money(state.initMarginChange) is None:
            raise BrokerError(f"IBKR returned no what-if margin for order {order.order_id}")
        commission = _money(state.commission) or Decimal(0)
        return WhatIfMargin(
            initial_margin_change=_money(state.initMarginChange), maintenance_margin_change=_money(state.maintMarginChange),
            commission=commission, cash_change=-order.limit_price * order.quantity * order.multiplier - commission,
            margin_before=_money(state.initMarginBefore) or Decimal(0), margin_after=_money(state.initMarginAfter) or Decimal(0),
            method="ibkr_what_if", warnings=(state.warningText,) if state.warningText else ())

    async def place(self, order: Order) -> str:
        """Transmit an APPROVED order as a BAG combo; idempotent by our order id."""
        await self.ensure_connected()
        existing = await self.book.broker_order_id(order.order_id)
        if existing:
            return existing
        await self.book.approved_record(order)  # not APPROVED, halted or altered: raises, nothing sent
        trade = self._trade_for(order.order_id)  # sent before a crash, never recorded: adopt it
        if trade is None:
            trade = self.ib.placeOrder(await self._bag(order), self._ib_order(order))
        broker_order_id = f"IBKR-{self.config.client_id}-{trade.order.orderId}"
        await self.book.record_placed(order, broker_order_id, self.clock(),
                                      f"placed with IBKR as order {trade.order.orderId}: BAG of {len(order.legs)} legs, "
                                      f"BUY {order.quantity} LMT {order.limit_price} {order.time_in_force}")
        await self.settle(order.order_id, self.config.timeout_s, until_acknowledged=True)
        return broker_order_id

    async def _working_trade(self, order_id: str):
        await self.ensure_connected()
        await self._sync(order_id)
        state = await self.book.state(order_id)
        if state not in (OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED):
            raise OrderNotWorking(f"order {order_id} is {state}: it is no longer working")
        trade = self._trade_for(order_id)
        if trade is None:
            raise OrderNotWorking(f"order {order_id}: IBKR holds no working order for it")
        return trade

    async def replace_limit(self, order_id: str, limit_price: Decimal) -> BrokerOrderStatus:
        limit = Decimal(limit_price)
        if not limit.is_finite() or limit != limit.quantize(Decimal("0.01")):
            raise ValueError(f"limit_price must be a finite price on a cent tick, got {limit_price}")
        trade = await self._working_trade(order_id)
        trade.order.lmtPrice = float(limit)
        self.ib.placeOrder(trade.contract, trade.order)
        await self.book.set_limit(order_id, limit, self.clock())
        await self.settle(order_id, min(1.0, self.config.timeout_s), until_acknowledged=True)
        return await self.book.status(order_id)

    async def cancel(self, order_id: str, *, reason: str | None = None) -> BrokerOrderStatus:
        trade = await self._working_trade(order_id)
        self._cancel_reasons[order_id] = reason or "cancelled"
        self.ib.cancelOrder(trade.order)
        await self.settle(order_id, self.config.timeout_s)
        return await self.book.status(order_id)

    async def status(self, order_id: str) -> BrokerOrderStatus:
        if self.book is None:
            await self.ensure_connected()
        if self.ib.isConnected():
            await self._sync(order_id)
        else:
            try:
                await self.connect()  # reconnecting reconciles this order too
            except BrokerError as exc:
                log.warning("status of %s from the mirror only: %s", order_id, exc)
        return await self.book.status(order_id)

    async def settle(self, order_id: str, timeout: float, *, until_acknowledged: bool = False) -> None:
        """Wait up to `timeout` seconds for IB to finish the order (or, with `until_acknowledged`,
        to acknowledge it), taking in everything it pushes meanwhile. The order manager calls
        this between the limit walk's levels: a live venue moves on its own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            self._changed.clear()
            if self.ib.isConnected():
                await self._sync(order_id)
            if await self.book.state(order_id) in TERMINAL:
                return
            trade = self._trade_for(order_id)
            if until_acknowledged and trade is not None and trade.orderStatus.status not in ("PendingSubmit", "ApiPending", ""):
                return
            remaining = deadline - loop.time()
            if remaining <= 0 or not self.ib.isConnected():
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    async def fills(self, order_id: str) -> list[Fill]:
        if self.book is None:
            await self.ensure_connected()
        return await self.book.fills(order_id)

    async def positions(self) -> list[BrokerPosition]:
        """The account's option positions as IB reports them (stock and other kinds are not option
        legs and are left out)."""
        await self.ensure_connected()
        held = await asyncio.wait_for(self.ib.reqPositionsAsync(), self.config.timeout_s * 2)
        out = []
        for p in held:
            if p.account != self.account_id or not p.position:
                continue
            contract = option_contract_of(p.contract)
            if contract is None:
                continue
            out.append(BrokerPosition(contract=contract, quantity=int(p.position),
                                      avg_price=to_decimal(p.avgCost / contract.multiplier)))
        return sorted(out, key=lambda p: (p.contract.ticker, p.contract.expiry, p.contract.strike, p.contract.right))

    async def account(self) -> BrokerAccount:
        """Account values from IB's account summary (USD / BASE)."""
        await self.ensure_connected()
        values = await asyncio.wait_for(self.ib.accountSummaryAsync(self.account_id), self.config.timeout_s * 2)
        by_tag = {v.tag: v.value for v in values if v.currency in ("USD", "BASE", "")}

        def tag(name: str) -> Decimal:
            value = _money(by_tag.get(name, ""))
            return Decimal(0) if value is None else value

        nlv, margin = tag("NetLiquidation"), tag("InitMarginReq")
        return BrokerAccount(
            account_id=self.account_id, cash=tag("TotalCashValue"), net_liquidation=nlv,
            positions_value=tag("GrossPositionValue"), margin_used=margin, free_margin=nlv - margin,
            realized_pnl=tag("RealizedPnL"), realized_pnl_today=tag("RealizedPnL"), as_of=self.clock())


async def probe(config: IbkrConfig, *, market_data: bool = False) -> dict:
    """What `hedgegraph doctor` reports for IBKR: is the port open, does the API handshake complete,
    is the account managed by this login. Read-only: nothing is requested but the handshake's own
    startup data."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(config.host, config.port), config.timeout_s)
        writer.close()
    except ConnectionRefusedError:
        return {"status": "error", "detail": f"port {config.port} on {config.host} is closed (connection refused): "
                                             "start TWS or IB Gateway and enable API socket clients on that port"}
    except (TimeoutError, asyncio.TimeoutError):
        return {"status": "error", "detail": f"no answer from {config.address} within {config.timeout_s:g}s "
                                             "(a firewall, or the wrong host)"}
    except OSError as exc:
        return {"status": "error", "detail": f"cannot reach {config.address}: {exc.strerror or exc}"}
    ib = IB()
    try:
        await ib.connectAsync(config.host, config.port, clientId=config.client_id, timeout=config.timeout_s,
                              readonly=True, fetchFields=StartupFetch(0))
    except (TimeoutError, asyncio.TimeoutError):
        ib.disconnect()
        return {"status": "error", "detail": f"{config.address} accepted the connection but the API handshake did not "
                                             f"complete within {config.timeout_s:g}s (API disabled, a trusted-IP "
                                             f"prompt waiting in TWS, or client id {config.client_id} in use)"}
    except Exception as exc:
        ib.disconnect()
        return {"status": "error", "detail": f"API handshake with {config.address} failed: {exc}"}
    try:
        accounts = ib.managedAccounts()
        version = ib.client.serverVersion()
        if config.account and config.account not in accounts:
            return {"status": "error", "detail": f"account {config.account} is not managed by this login "
                                                 f"(managed: {', '.join(accounts)})"}
        if not config.account and len(accounts) != 1:
            return {"status": "error", "detail": f"this login manages {len(accounts)} accounts: set "
                                                 "HEDGEGRAPH_IBKR_ACCOUNT to the one to trade"}
        data = {"address": config.address, "client_id": config.client_id, "server_version": version,
                "accounts": accounts, "market_data_requested": config.market_data}
        detail = (f"connected to {config.address} (API server version {version}), account "
                  f"{config.account or accounts[0]}")
        status = "ok"
        if market_data:  # the market is IBKR's: can this login see prices, live or delayed?
            ib.RaiseRequestErrors = True
            ib.reqMarketDataType(1 if config.market_data == "live" else 3)
            try:
                [stock] = await asyncio.wait_for(ib.qualifyContractsAsync(Stock("SPY", "SMART", "USD")), config.timeout_s)
                [ticker] = await asyncio.wait_for(ib.reqTickersAsync(stock), config.timeout_s * 2)
            except RequestError as exc:
                return {"status": "error", "detail": f"{detail}; market data for SPY refused: IBKR error {exc.code}: "
                                                     f"{exc.message} (market-data permission missing?)", "data": data}
            except (TimeoutError, asyncio.TimeoutError):
                return {"status": "error", "detail": f"{detail}; no market data for SPY within "
                                                     f"{config.timeout_s * 2:g}s", "data": data}
            kind = MARKET_DATA_TYPES.get(ticker.marketDataType, f"type {ticker.marketDataType}")
            data["market_data"] = kind
            detail += f"; SPY market data: {kind}"
            if config.market_data == "live" and kind != "live":
                status, detail = "warning", detail + " although live was requested (no live subscription?)"
        return {"status": status, "detail": detail, "data": data}
    finally:
        ib.disconnect()
