"""The order manager: the one owner of an order from APPROVED to its terminal state.

Whoever approved an order — the graph, the CLI, the API, or a recovery pass — hands it here, and
it takes one path:

  APPROVED ──(halted)──────────────▶ held, stays APPROVED (sent once trading resumes)
           ──(market closed)───────▶ held, stays APPROVED (re-checked and sent at the next open)
           ──(stale / risk / quote)▶ REJECTED, with the reasons
           ──(re-check passes)─────▶ place → walk the limit → fills journaled → position booked

`recover()` resumes whatever a crash left in flight: APPROVED orders are transmitted (the broker
is idempotent per order id, so one that was already placed is not placed again), SUBMITTED and
PARTIALLY_FILLED orders are polled and their walk finished or cancelled, fills that reached the
broker but not the journal are journaled, and nothing is left working without an owner.

Everything here is keyed by our order id and idempotent: running any step twice adds nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from brokers.base import BrokerError, OrderNotWorking, UnknownBrokerOrder
from domain.orders import Fill, Order, PortfolioGreeks
from brokers.book import last_daily_reset
from brokers.limit_walk import LimitWalker
from domain.order_state import TERMINAL, OrderState
from brokers.portfolio import portfolio_greeks
from brokers.quote_source import ProviderQuotes
from domain.decision import Execution, MarketContext, SizedTrade, TradeProposal
from risk.gate import post_trade
from risk.regime import regime_of
from storage.controls import RiskControls
from storage.executions import ExecutionRepository
from storage.journal import AccountSnapshot, Journal, JournalContext
from storage.orders import OrderRepository
from tools.market_hours import is_open, next_open

log = logging.getLogger(__name__)

# The limit walk: this many steps from the approved limit toward the natural price.
WALK_STEPS = 4
WALK_MINUTES = 5
# Closing orders (flatten, exit rules) relieve risk: the limits they relieve never block them.
FLATTEN = "flatten_close"


def fresh_combo_prices(order: Order, quotes) -> tuple[Decimal | None, Decimal | None, list[str]]:
    """The combo's (mid, natural) now, signed like the limit (+ pay, − receive), or Nones with
    the legs that have no quote. Natural: pay the ask on legs we buy, take the bid on legs we sell."""
    mid, natural, missing = Decimal("0"), Decimal("0"), []
    for leg, contract in zip(order.legs, order.contracts()):
        quote = quotes(contract)
        if quote is None:
            missing.append(contract.label())
            continue
        mid += leg.sign * leg.ratio * quote.mid
        natural += leg.sign * leg.ratio * (quote.ask if leg.sign > 0 else quote.bid)
    return (None, None, missing) if missing else (mid, natural, [])


def allowed_difference(limit: Decimal, tolerance: float, floor: float) -> Decimal:
    return max(Decimal(str(floor)), abs(limit) * Decimal(str(tolerance)))


def stale_reason(limit: Decimal, fresh_mid: Decimal, tolerance: float, floor: float) -> str | None:
    allowed = allowed_difference(limit, tolerance, floor)
    if abs(fresh_mid - limit) > allowed:
        return (f"limit {limit:+.2f} is stale: the combo's mid is now {fresh_mid:+.2f} "
                f"(allowed difference {allowed:.2f})")
    return None


def sized_from_order(order: Order) -> SizedTrade:
    proposal = TradeProposal.model_validate(order.proposal)
    return SizedTrade.model_validate({**order.sizing, "proposal": proposal, "contracts": order.quantity,
                                      "capital_at_risk": proposal.max_loss * order.quantity})


def is_closing(order: Order) -> bool:
    return order.structure == FLATTEN or order.closes_position_id is not None


@dataclass
class OrderManager:
    """See the module docstring. `on_filled(order, fills)` runs after an order's fills are
    journaled (the book and memory hook in there)."""

    pool: Any
    broker: Any  # brokers.base.Broker (the paper broker also has `process()`: one venue step)
    quotes: ProviderQuotes
    clock: Callable[[], datetime]
    tolerance: float
    tolerance_floor: float
    risk_matrix: Any
    book: Any  # brokers.book.Book of the broker's account: positions, marks, the account the gate reads
    on_filled: Callable[[Order, list[Fill]], Awaitable[None]] | None = None
    walk_minutes: float = WALK_MINUTES  # how long a live order is walked before the rest is cancelled

    async def context(self, tickers: list[str]) -> MarketContext:
        """The account, the book and the regime now (not at the run's as-of): what a re-check and a
        journal entry must judge by. The account is the broker's, never a fixed stand-in."""
        snapshot = self.quotes.snapshot(tickers[0])
        balances = await self.broker.account()  # the venue's own cash, NLV and margin
        halt = await RiskControls(self.pool).state()
        now = self.clock()
        reset = last_daily_reset(now, self.risk_matrix.daily_reset.at, self.risk_matrix.daily_reset.timezone)
        # The book supplies what only a record of fills knows (P&L since the reset, the last loss,
        # trades today); balances come from the broker (the paper broker's equal the book's).
        account, positions = await self.book.account_and_positions(now, reset, quotes=self.quotes, halted=halt.halted,
                                                                   halt_reason=halt.reason)
        account = account.model_copy(update={
            "net_liquidation": balances.net_liquidation, "cash": balances.cash, "margin_used": balances.margin_used})
        return MarketContext(regime=regime_of(snapshot, self.risk_matrix), account=account, positions=positions,
                             sectors={t: d.sector for t, d in snapshot.tickers.items()}, snapshot_sha256="")

    @property
    def orders(self) -> OrderRepository:
        return OrderRepository(self.pool)

    @property
    def executions(self) -> ExecutionRepository:
        return ExecutionRepository(self.pool)

    # ------------------------------------------------------------------ transmission
    async def transmit(self, order_id: str) -> Execution | None:
        """Re-check and send one APPROVED order now, or hold it (halted, market closed). None when
        the order is not APPROVED (already sent, refused or never approved): nothing to do."""
        order = await self.orders.get(order_id)
        if order is None or order.state != OrderState.APPROVED:
            return None
        now = self.clock()
        halt = await RiskControls(self.pool).state()
        if halt.halted:
            e = Execution(order_id=order_id, outcome="held", reasons=[f"trading halted: {halt.reason}"])
        elif not is_open(now):
            opens = next_open(now)
            e = Execution(order_id=order_id, outcome="held", reasons=[
                f"market closed at {now.isoformat()}: the order waits, APPROVED, and is re-checked and sent "
                f"at the next open ({opens.isoformat()})"])
        else:
            e = await self._recheck_and_send(order)
        await self.executions.record(order.run_id, e)
        return e

    async def _recheck_and_send(self, order: Order) -> Execution:
        reasons, fresh_mid = await self.recheck(order)
        if reasons:
            await self.orders.transition(order.order_id, OrderState.REJECTED, actor="recheck", reason="; ".join(reasons))
            return Execution(order_id=order.order_id, outcome="refused", reasons=reasons,
                             fresh_mid=None if fresh_mid is None else float(fresh_mid))
        pre = await self._greeks(order)
        seen = await self._fill_ids(order.order_id)  # a live venue may fill while `place` waits for its ack
        try:
            broker_order_id = await self.broker.place(order)
        except BrokerError:
            if (await self.orders.get(order.order_id)).state != OrderState.REJECTED:
                raise  # nothing was decided (e.g. the broker is unreachable): recovery retries it
            broker_order_id = None
        placed = await self.orders.get(order.order_id)
        if placed.state == OrderState.REJECTED:  # the broker's answer to the order itself
            history = await self.orders.history(order.order_id)
            return Execution(order_id=order.order_id, outcome="refused", broker_order_id=broker_order_id,
                             reasons=[history[-1].get("reason") or "rejected by the broker"],
                             fresh_mid=float(fresh_mid))
        fills = await self.walk(order, start_limit=order.limit_price, seen=seen)
        await self._after_fills(order, fills, pre)
        return Execution(order_id=order.order_id, outcome="transmitted", fresh_mid=float(fresh_mid),
                         broker_order_id=broker_order_id, filled_quantity=sum(f.quantity for f in fills))

    async def recheck(self, order: Order) -> tuple[list[str], Decimal | None]:
        """Why `order` must not be sent now (empty: it may be), and the fresh combo mid."""
        fresh_mid, _, missing = fresh_combo_prices(order, self.quotes)
        if missing:
            return [f"no fresh quote for {', '.join(missing)}"], None
        reasons = []
        stale = stale_reason(order.limit_price, fresh_mid, self.tolerance, self.tolerance_floor)
        if stale:
            reasons.append(stale)
        if not is_closing(order):
            context = await self.context([order.ticker])
            positions = await self.orders.open_exposures(exclude=order.order_id)
            reserved = sum((p.max_loss for p in positions), Decimal("0"))
            account = context.account.model_copy(update={"margin_used": context.account.margin_used + reserved})
            [decision] = post_trade([sized_from_order(order)], account, list(context.positions) + positions,
                                    context.regime, self.risk_matrix, context.sectors)
            reasons.extend(f"risk: {v.message}" for v in decision.vetoes)
        return reasons, fresh_mid

    async def _fill_ids(self, order_id: str) -> set[str]:
        if getattr(self.broker, "process", None) is not None:
            return set()  # the paper venue reports new fills from `process()` itself
        try:
            return {f.fill_id for f in await self.broker.fills(order_id)}
        except UnknownBrokerOrder:
            return set()

    async def walk(self, order: Order, start_limit: Decimal, seen: set[str] | None = None) -> list[Fill]:
        """Work the order from `start_limit` toward the natural price, never past the approved limit
        plus the re-check tolerance (the approver did not approve any price), then cancel what is
        unfilled. The paper venue fills against the quote in force, so its walk is stepped at once,
        level by level; a live broker (one without `process()`) moves on its own, so each level is
        held for its share of the walk while the broker takes in what the venue pushes
        (`settle(order_id, seconds)`), and the walk ends as soon as the order is done."""
        _, natural, _ = fresh_combo_prices(order, self.quotes)
        worst = order.limit_price + allowed_difference(order.limit_price, self.tolerance, self.tolerance_floor)
        target = min(natural, worst) if natural is not None else start_limit
        start = self.clock()
        deadline = start + timedelta(minutes=self.walk_minutes)
        walker = LimitWalker.from_quotes(self.broker, order.order_id, mid=start_limit, natural=target,
                                         steps=WALK_STEPS, start=start, deadline=deadline)
        live = getattr(self.broker, "process", None) is None
        seen = await self._fill_ids(order.order_id) if seen is None else seen
        level_seconds = self.walk_minutes * 60 / (WALK_STEPS + 1)
        fills: list[Fill] = []
        known = None  # the paper order's status as last seen, when nothing can have filled it since
        for at, _ in walker.schedule:
            step = await walker.step(at, known)
            new = await self._venue_step(order.order_id, level_seconds if step.outcome == "working" else 0.0)
            fills += new
            if step.outcome != "working":
                break
            # On the paper venue only a fill completes the order, so its status is read after one
            # (else the next level's step reads it, or moves the limit, which re-checks it under the
            # order's lock); a live venue's fills arrive on their own, so its status is read each level.
            status = await self.broker.status(order.order_id) if new or live else step.status
            if status.state == OrderState.FILLED:
                break
            known = None if live else status
        else:
            await walker.step(deadline)  # unfilled at the end of the walk: cancel the rest
        if live:  # everything the live venue reported during the walk, the cancel included
            fills = [f for f in await self.broker.fills(order.order_id) if f.fill_id not in seen]
        return fills

    async def _venue_step(self, order_id: str, seconds: float = 0.0) -> list[Fill]:
        """The paper venue's `process()` step (its new fills), or a live broker's `settle` for up to
        `seconds` (its fills are read from the broker afterwards)."""
        process = getattr(self.broker, "process", None)
        if process is None:
            settle = getattr(self.broker, "settle", None)
            if settle is not None:
                await settle(order_id, seconds)
            return []
        new = await process()
        return [f for f in new if f.order_id == order_id]

    # ------------------------------------------------------------------ recovery
    async def recover(self, run_id: str | None = None) -> list[Execution]:
        """Resume everything in flight (of one run, or all; see the module docstring), then journal
        every unjournaled fill. Returns what was done."""
        done: list[Execution] = []
        for row in await self.executions.in_flight(run_id):
            order_id, state = row["order_id"], OrderState(row["state"])
            if state == OrderState.APPROVED:
                e = await self.transmit(order_id)
            else:
                e = await self.resume_working(order_id)
            if e is not None:
                done.append(e)
        await self.journal_unjournaled()
        return done

    async def resume_working(self, order_id: str) -> Execution | None:
        """Poll a SUBMITTED / PARTIALLY_FILLED / UNKNOWN order at the broker: fills that happened
        while nobody watched are taken in, the walk continues from the working limit, and what is
        still unfilled at its end is cancelled — no order is left working without an owner."""
        order = await self.orders.get(order_id)
        if order is None or order.state in TERMINAL or order.state == OrderState.APPROVED:
            return None
        try:
            status = await self.broker.status(order_id)
        except UnknownBrokerOrder:
            return None
        fills = await self._venue_step(order_id)
        order = await self.orders.get(order_id)
        if order.state not in TERMINAL:
            try:
                fills += await self.walk(order, start_limit=status.limit_price)
            except OrderNotWorking:
                pass  # filled or expired between the poll and the walk
        await self._after_fills(order, fills, None)
        e = Execution(order_id=order_id, outcome="transmitted", broker_order_id=status.broker_order_id,
                      reasons=["resumed after an interruption"], filled_quantity=sum(f.quantity for f in fills))
        await self.executions.record(order.run_id, e)
        return e

    async def journal_unjournaled(self) -> int:
        """Journal every broker fill that has no journal entry (a crash between fill and journal).
        The context is today's, and the entry says it was journaled late."""
        journal = Journal(self.pool)
        late = await journal.unjournaled_fills()
        by_order: dict[str, list[Fill]] = {}
        for fill in late:
            by_order.setdefault(fill.order_id, []).append(fill)
        for order_id, fills in by_order.items():
            order = await self.orders.get(order_id)
            await self._journal(order, fills, None, late=True)
            await self.book.ingest_fills()
            if self.on_filled is not None:
                await self.on_filled(order, fills)
        return len(late)

    # ------------------------------------------------------------------ journal and book
    async def _after_fills(self, order: Order, fills: list[Fill], pre: PortfolioGreeks | None) -> None:
        if not fills:
            return
        await self._journal(order, fills, pre)
        await self.book.ingest_fills()
        if self.on_filled is not None:
            await self.on_filled(order, fills)

    def _spx_price(self) -> float:
        # The simulated and files markets carry SPY, not the index; SPX is taken as 10 × SPY (what SPY
        # tracks, within its dividend drift) — close enough to beta-weight a book's delta.
        return self.quotes.ticker_data("SPY").spot * 10.0

    def _betas(self, order: Order) -> dict[str, float]:
        data = self.quotes.ticker_data(order.ticker)
        return {order.ticker: data.beta} if data is not None else {}

    async def _greeks(self, order: Order) -> PortfolioGreeks:
        return portfolio_greeks(await self.broker.positions(), self.quotes, spx_price=self._spx_price(),
                                betas=self._betas(order))

    async def _journal(self, order: Order, fills: list[Fill], pre: PortfolioGreeks | None, *,
                       late: bool = False) -> None:
        """Journal each fill with the market context and the book's Greeks before and after, then
        snapshot the account. Idempotent per fill id."""
        regime = regime_of(self.quotes.snapshot(order.ticker), self.risk_matrix)  # the market's, now
        data = self.quotes.ticker_data(order.ticker)
        spx = self._spx_price()
        post = await self._greeks(order)
        journal = Journal(self.pool)
        approver = await self.executions.approver(order.order_id)
        for fill in fills:
            await journal.record_fill(fill, JournalContext(
                approver=approver, rationale=order.proposal.get("rationale", ""), vix=regime.vix,
                regime=regime.name,
                underlying_price=Decimal(str(round(data.spot, 4))) if data is not None else None,
                spx_price=Decimal(str(round(spx, 2))), pre_greeks=pre or {}, post_greeks=post,
                run_id=order.run_id, extra={"journaled_late": True} if late else {},
            ), broker=self.broker.name)
        account = await self.broker.account()
        await journal.record_snapshot(AccountSnapshot.build(
            account, post, broker=self.broker.name, vix=regime.vix, spx_price=Decimal(str(round(spx, 2))),
            regime=regime.name))
