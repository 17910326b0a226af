"""Housekeeping between and after the scheduled slots: everything the book needs to stay true.

Run by `hedgegraph schedule` after each tick (and once by `schedule --once`):
1. undecided orders past their approval window expire;
2. the order manager resumes whatever is in flight (approved orders waiting for the open or for
   trading to resume, working orders a crash left behind, unjournaled fills);
3. expired options settle: index options into cash, equity/ETF options exercised or assigned into
   shares; the positions they close reflect into memory with their realized P&L;
4. at a slot (or once after the close) every position is marked and the account snapshotted, the
   exit rules are checked and any triggered exit is staged for approval, short strikes pinned
   near the money are flagged the session before expiry, and the broker's positions are
   reconciled with the book;
5. memories whose horizon has passed get their outcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from brokers.book import Book, last_daily_reset
from brokers.quote_source import ProviderQuotes
from config.settings import defaults
from memory.outcomes import attach_due_outcomes, remember_closed_position
from memory.store import MemoryStore
from risk.limits import load_risk_matrix
from risk.regime import regime_of
from service import approvals, notify
from service.approvals import ServiceContext
from service.markets import source_of
from storage.journal import Journal
from tools.chain import NEW_YORK

MARKET_CLOSE = time(16, 0)


@dataclass
class HousekeepingReport:
    expired_runs: list[str] = field(default_factory=list)
    recovered_runs: list[str] = field(default_factory=list)
    settled: list[dict[str, Any]] = field(default_factory=list)
    marked: int | None = None  # positions marked (None: not a marking time)
    net_liquidation: str | None = None
    exits_staged: list[dict[str, Any]] = field(default_factory=list)
    pin_risk: list[str] = field(default_factory=list)
    reconciliation: list[str] = field(default_factory=list)
    outcomes_attached: int = 0


async def marked_since_close(ctx: ServiceContext, now: datetime) -> bool:
    """Whether the book has been snapshotted since today's close (once after the close is enough)."""
    local = now.astimezone(NEW_YORK)
    close = datetime.combine(local.date(), MARKET_CLOSE, tzinfo=NEW_YORK)
    if local < close:
        return True  # before the close there is no after-close mark to take
    return bool(await Journal(ctx.db.pool).snapshots(since=close, limit=1))


async def housekeeping(ctx: ServiceContext, *, mark: bool) -> HousekeepingReport:
    """One pass (see the module docstring). `mark`: this is a slot (or the after-close) pass."""
    report = HousekeepingReport()
    report.expired_runs = await approvals.expire_due(ctx)
    report.recovered_runs = await approvals.recover_pending(ctx)

    now = ctx.clock()
    seed = defaults().seed
    provider = ctx.book_market(seed)
    quotes = ProviderQuotes(provider, ctx.clock)
    broker = ctx.broker_for(provider)
    await broker.ensure_connected()
    book = Book(ctx.db, account_id=broker.ledger_account_id, broker=broker.name, config=defaults().book)
    memory = ctx.memory or MemoryStore(ctx.db.pool)

    def underlying_price(ticker: str) -> Decimal:
        data = quotes.ticker_data(ticker)
        if data is None:
            raise LookupError(f"no price for {ticker} to settle its expired options")
        return Decimal(str(round(data.spot, 4)))

    for settled in await book.settle_expired(now, underlying_price, broker=broker):
        report.settled.append(approvals.jsonable(settled.__dict__))
        position = await book.position(settled.position_id)
        if position is not None and position.shares_open == 0:  # else known once its shares are flattened
            await remember_closed_position(memory, position, now)

    if mark or not await marked_since_close(ctx, now):
        matrix = load_risk_matrix()
        regime = regime_of(quotes.snapshot("SPY"), matrix)
        marks = await book.mark(now, quotes, daily_reset=last_daily_reset(now, matrix.daily_reset.at,
                                                                          matrix.daily_reset.timezone),
                                vix=regime.vix, regime=regime.name)
        report.marked = len(marks.marks)
        report.net_liquidation = str(marks.snapshot.net_liquidation)
        staged = await book.stage_exits(now, await book.exit_orders(now, quotes), provider=provider.name, seed=seed,
                                        config=defaults().decision.model_dump(mode="json"),
                                        market_source=source_of(provider))
        report.exits_staged = [{"position_id": s.position_id, "rule": s.rule, "created": s.created,
                                "order_id": s.order.order_id if s.order else None, "note": s.note} for s in staged]
        report.pin_risk = [approvals.jsonable(p.__dict__) for p in await book.pin_risk(now, quotes)]
        # The paper broker keeps the shares exercises and assignments delivered; the live adapters
        # report option positions only.
        shares = await broker.share_positions() if hasattr(broker, "share_positions") else None
        report.reconciliation = [d.label for d in await book.reconcile(await broker.positions(), shares)]
    report.outcomes_attached = len(await attach_due_outcomes(memory, provider, now))
    notify.notify_book(ctx.db, report)
    return report
