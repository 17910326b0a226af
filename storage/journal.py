"""The trade journal (one entry per fill, with its market and portfolio context) and account
snapshots (NLV, cash, margin, Greeks, SPX beta-weighted delta, |theta|/|vega| over time).

Both are written by the executor: the graph knows the context (regime, VIX, the approver, the
rationale, Greeks before and after) that the broker does not. Journaling is idempotent per fill
id, so a fill callback delivered twice, or a reconciliation pass over `unjournaled_fills`,
journals each fill once.

Units: prices per share (combo prices signed + pay / - receive), money in Decimal dollars,
Greeks as in `brokers.portfolio`; times are timezone-aware.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from domain.orders import BrokerAccount, Fill, PortfolioGreeks
from storage.broker_ledger import fill_from_row

def _json_safe(value: Any) -> Any:
    if isinstance(value, PortfolioGreeks):
        return value.to_json()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True)
class JournalContext:
    """What the graph knew when the order was approved and filled.

    `run_id` defaults to the order's run (a different one is refused); `strategy_tag` defaults to
    the order's structure. Greeks are `PortfolioGreeks` (or a JSON-able mapping) before and after
    the fill.
    """

    approver: str | None
    rationale: str
    vix: float | None = None
    regime: str | None = None
    underlying_price: Decimal | None = None
    spx_price: Decimal | None = None
    pre_greeks: PortfolioGreeks | Mapping[str, Any] | None = None
    post_greeks: PortfolioGreeks | Mapping[str, Any] | None = None
    run_id: str | None = None
    strategy_tag: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JournalEntry:
    fill_id: str
    order_id: str
    run_id: str
    broker: str
    account_id: str
    broker_order_id: str
    ticker: str
    structure: str
    strategy_tag: str
    legs: list[dict[str, Any]]  # the order's legs, each with its "fill_price" per share
    quantity: int
    price: Decimal
    commission: Decimal
    filled_at: datetime
    vix: float | None
    regime: str | None
    underlying_price: Decimal | None
    spx_price: Decimal | None
    pre_greeks: dict[str, Any]
    post_greeks: dict[str, Any]
    approver: str | None
    rationale: str
    extra: dict[str, Any]
    recorded_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "JournalEntry":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AccountSnapshot:
    """One point of the account's history. Greeks may be NaN (see `missing` for why)."""

    account_id: str
    broker: str
    captured_at: datetime
    net_liquidation: Decimal
    cash: Decimal
    margin_used: Decimal
    delta: float
    gamma: float
    vega: float
    theta: float
    spx_beta_weighted_delta: float
    theta_vega_ratio: float | None
    vix: float | None = None
    spx_price: Decimal | None = None
    regime: str | None = None
    missing: tuple[str, ...] = ()
    # Written by the book (`brokers.book`); None in snapshots taken without it.
    realized_pnl: Decimal | None = None  # since the account opened, net of commissions
    daily_pnl: Decimal | None = None  # NLV change since the last snapshot before the daily reset
    unrealized_pnl: Decimal | None = None  # of the open positions at their marks
    shares_value: Decimal | None = None  # shares from exercises/assignments at their price

    def __post_init__(self) -> None:
        _aware("captured_at", self.captured_at)

    @classmethod
    def build(cls, account: BrokerAccount, greeks: PortfolioGreeks, *, broker: str, vix: float | None = None,
              spx_price: Decimal | None = None, regime: str | None = None,
              captured_at: datetime | None = None) -> "AccountSnapshot":
        missing = tuple(greeks.missing) + tuple(f"{label}: no mark, carried at cost" for label in account.unmarked)
        return cls(account_id=account.account_id, broker=broker, captured_at=captured_at or account.as_of,
                   net_liquidation=account.net_liquidation, cash=account.cash, margin_used=account.margin_used,
                   delta=greeks.delta, gamma=greeks.gamma, vega=greeks.vega, theta=greeks.theta,
                   spx_beta_weighted_delta=greeks.spx_beta_weighted_delta, theta_vega_ratio=greeks.theta_vega_ratio,
                   vix=vix, spx_price=spx_price, regime=regime, missing=missing)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "AccountSnapshot":
        values = {k: row[k] for k in cls.__dataclass_fields__}
        values["missing"] = tuple(values["missing"])
        return cls(**values)


class Journal:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = getattr(pool, "pool", pool)

    async def record_fill(self, fill: Fill, context: JournalContext, *, broker: str | None = None,
                          account_id: str | None = None) -> bool:
        """Journal one fill; False (nothing written) if this fill id is already journaled.

        The broker and account come from the recorded broker order when there is one; otherwise
        they must be given.
        """
        order = await self.pool.fetchrow(
            "SELECT run_id, ticker, structure, legs FROM orders WHERE order_id = $1", fill.order_id)
        if order is None:
            raise LookupError(f"fill {fill.fill_id} is for unknown order {fill.order_id}")
        run_id = context.run_id or order["run_id"]
        if run_id != order["run_id"]:
            raise ValueError(f"fill {fill.fill_id}: context run {run_id} is not the order's run {order['run_id']}")
        placed = await self.pool.fetchrow(
            "SELECT broker, account_id, legs FROM broker_orders WHERE broker_order_id = $1", fill.broker_order_id)
        broker = placed["broker"] if placed else broker
        account_id = placed["account_id"] if placed else account_id
        if broker is None or account_id is None:
            raise ValueError(f"fill {fill.fill_id}: no broker order recorded, so broker and account_id are required")
        legs = list(placed["legs"] if placed else order["legs"])
        if len(legs) != len(fill.leg_prices):
            raise ValueError(f"fill {fill.fill_id} has {len(fill.leg_prices)} leg prices for {len(legs)} legs")
        legs = [{**leg, "fill_price": str(p)} for leg, p in zip(legs, fill.leg_prices)]
        inserted = await self.pool.fetchval(
            """INSERT INTO trade_journal (fill_id, order_id, run_id, broker, account_id, broker_order_id, ticker,
                   structure, strategy_tag, legs, quantity, price, commission, filled_at, vix, regime,
                   underlying_price, spx_price, pre_greeks, post_greeks, approver, rationale, extra)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                       $21, $22, $23)
               ON CONFLICT (fill_id) DO NOTHING RETURNING id""",
            fill.fill_id, fill.order_id, run_id, broker, account_id, fill.broker_order_id, order["ticker"],
            order["structure"], context.strategy_tag or order["structure"], legs, fill.quantity, fill.price,
            fill.commission, fill.at, None if context.vix is None else float(context.vix), context.regime,
            context.underlying_price, context.spx_price, _json_safe(context.pre_greeks) or {},
            _json_safe(context.post_greeks) or {}, context.approver, context.rationale, _json_safe(dict(context.extra)))
        return inserted is not None

    async def entries(self, *, ticker: str | None = None, run_id: str | None = None, order_id: str | None = None,
                      regime: str | None = None, since: datetime | None = None, until: datetime | None = None,
                      limit: int = 100) -> list[JournalEntry]:
        """Journal entries, newest fill first, filtered by any of the arguments (`until` exclusive)."""
        _aware("since", since)
        _aware("until", until)
        rows = await self.pool.fetch(
            """SELECT * FROM trade_journal
               WHERE ($1::text IS NULL OR ticker = upper($1)) AND ($2::text IS NULL OR run_id = $2)
                 AND ($3::text IS NULL OR order_id = $3) AND ($4::text IS NULL OR regime = $4)
                 AND ($5::timestamptz IS NULL OR filled_at >= $5) AND ($6::timestamptz IS NULL OR filled_at < $6)
               ORDER BY filled_at DESC, id DESC LIMIT $7""",
            ticker, run_id, order_id, regime, since, until, limit)
        return [JournalEntry.from_row(r) for r in rows]

    async def entry_cash_flow(self, run_id: str | None, ticker: str) -> Decimal | None:
        """Dollars the run's fills in `ticker` paid (-) or received (+), commissions included;
        None when it has none."""
        return await self.pool.fetchval(
            """SELECT sum(-j.price * j.quantity * 100 - j.commission) FROM trade_journal j
               WHERE j.run_id = $1 AND j.ticker = $2""", run_id, ticker)

    async def unjournaled_fills(self, account_id: str | None = None) -> list[Fill]:
        """Recorded broker fills with no journal entry yet (e.g. a callback failed), oldest first."""
        rows = await self.pool.fetch(
            """SELECT f.* FROM broker_fills f LEFT JOIN trade_journal j USING (fill_id)
               WHERE j.fill_id IS NULL AND ($1::text IS NULL OR f.account_id = $1)
               ORDER BY f.filled_at, f.fill_id""", account_id)
        return [fill_from_row(r) for r in rows]

    async def record_snapshot(self, snapshot: AccountSnapshot) -> bool:
        """Store a snapshot; False if one already exists for this account at this instant."""
        inserted = await self.pool.fetchval(
            """INSERT INTO account_snapshots (account_id, broker, captured_at, net_liquidation, cash, margin_used,
                   delta, gamma, vega, theta, spx_beta_weighted_delta, theta_vega_ratio, vix, spx_price, regime,
                   missing, realized_pnl, daily_pnl, unrealized_pnl, shares_value)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
               ON CONFLICT (account_id, captured_at) DO NOTHING RETURNING id""",
            snapshot.account_id, snapshot.broker, snapshot.captured_at, snapshot.net_liquidation, snapshot.cash,
            snapshot.margin_used, snapshot.delta, snapshot.gamma, snapshot.vega, snapshot.theta,
            snapshot.spx_beta_weighted_delta, snapshot.theta_vega_ratio, snapshot.vix, snapshot.spx_price,
            snapshot.regime, list(snapshot.missing), snapshot.realized_pnl, snapshot.daily_pnl,
            snapshot.unrealized_pnl, snapshot.shares_value)
        return inserted is not None

    async def snapshots(self, *, account_id: str | None = None, since: datetime | None = None,
                        until: datetime | None = None, limit: int = 1000) -> list[AccountSnapshot]:
        """Snapshots oldest first (chart order) within [since, until)."""
        _aware("since", since)
        _aware("until", until)
        rows = await self.pool.fetch(
            """SELECT * FROM (
                   SELECT * FROM account_snapshots
                   WHERE ($1::text IS NULL OR account_id = $1) AND ($2::timestamptz IS NULL OR captured_at >= $2)
                     AND ($3::timestamptz IS NULL OR captured_at < $3)
                   ORDER BY captured_at DESC LIMIT $4) latest
               ORDER BY captured_at""", account_id, since, until, limit)
        return [AccountSnapshot.from_row(r) for r in rows]
