"""SQL of the strategy book (migration 0007): positions built from fills, their fills, marks, exit
orders and the account figures the risk gate reads. The logic lives in `brokers.book`.

Conventions: prices per share per unit, signed like order limits (+ paid / - received); money in
Decimal dollars; times timezone-aware. Every write takes the caller's connection so that one
booking is one transaction (row locks on the position, unique fill ids).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from storage.database import took_session_lock

# Orders in these states are a live exit: a position has at most one at a time.
LIVE_ORDER_STATES = ("DRAFT", "STAGED", "APPROVED", "SUBMITTED", "PARTIALLY_FILLED", "UNKNOWN")
CLOSING_KINDS = ("close", "settle", "expire", "shares")


# Account $1's broker fills not in the book yet (f: the fill, o: its order, bo: its broker order):
# what `unbooked_fills` books and what `read` reports, so the two can never disagree.
_UNBOOKED_FILLS = """FROM broker_fills f
                     JOIN orders o USING (order_id)
                     JOIN broker_orders bo USING (broker_order_id)
                     LEFT JOIN position_fills pf USING (fill_id)
                     WHERE pf.fill_id IS NULL AND f.account_id = $1"""

# The columns of a position's latest mark that `BookRead.latest_marks` carries.
MARK_FIELDS = ("units", "value", "underlying_price", "delta", "gamma", "vega", "theta")
# The keys of an opening proposal that `BookRead.proposals` carries: the gate's fallback Greeks and
# underlying price for a position whose latest mark lacks them (the whole proposal is large to decode).
PROPOSAL_FIELDS = ("delta", "gamma", "vega", "theta", "underlying_price")


@dataclass(frozen=True)
class BookRead:
    """The book and the account figures at one instant (`BookStore.read`)."""

    unbooked_fills: bool  # broker fills of the account not in the book yet (book them, then read again)
    positions: list[asyncpg.Record]  # open strategy positions, by opened_at, position_id
    holding_shares: list[asyncpg.Record]  # positions still holding delivered shares, by closed_at, position_id
    latest_marks: dict[str, dict[str, Any]]  # open position id -> its latest mark's MARK_FIELDS
    # An open position's opening order id -> the PROPOSAL_FIELDS its proposal has; only for a position
    # whose latest mark is missing, is for other units, or lacks a Greek or a (non-zero) underlying price.
    proposals: dict[str, dict[str, Any]]
    shares: list[asyncpg.Record]  # the broker's share holdings (ticker, quantity, avg_price), by ticker
    cash: Decimal
    realized_since_reset: Decimal  # position_fills realized at or after the reset
    realized_total: Decimal  # position_fills realized since the account opened
    last_loss_at: datetime | None  # the last close (in part or whole) at a loss
    trades_since_reset: int  # opening orders with a fill at or after the reset
    reset_net_liquidation: Decimal | None  # of the last snapshot at or before the reset (None: there is none)
    reset_unrealized_pnl: Decimal | None
    opening_cash: Decimal


class BookStore:
    def __init__(self, pool: asyncpg.Pool, account_id: str):
        self.pool = getattr(pool, "pool", pool)
        self.account_id = account_id

    async def closed_outcomes(self, as_of: datetime) -> list[dict[str, Any]]:
        """Every strategy position closed (or settled, assigned) at or before `as_of`, with the
        regime its opening order was filled in (from the journal): the Kelly journal as of a date.
        A position still holding shares its options delivered is not an outcome yet: its P&L is
        known once the shares are sold or bought back (its `closed_at` is then that fill's time)."""
        rows = await self.pool.fetch(
            """SELECT p.structure, p.closed_at, p.realized_pnl AS pnl, coalesce(p.max_loss, 0) * p.units_opened AS max_loss,
                      (SELECT j.regime FROM trade_journal j WHERE j.order_id = p.order_id
                        ORDER BY j.filled_at LIMIT 1) AS regime
               FROM strategy_positions p
               WHERE p.account_id = $1 AND p.status <> 'open' AND p.shares_open = 0 AND p.closed_at <= $2
               ORDER BY p.closed_at, p.position_id""", self.account_id, as_of)
        return [dict(r) for r in rows if r["regime"] is not None]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    @contextlib.asynccontextmanager
    async def position_locks(self, position_ids: Sequence[str]) -> AsyncIterator[None]:
        """A session advisory lock per position (across processes) while their exits are staged:
        all taken in one round trip, in key order, so two stagers never wait on each other in a
        cycle; all let go in one."""
        keys = sorted({int.from_bytes(hashlib.sha256(f"book-exit|{p}".encode()).digest()[:8], "big", signed=True)
                       for p in position_ids})
        async with self.pool.acquire() as conn:
            took_session_lock(conn)
            # A function scan yields the array in order, and each row's lock is taken as it is yielded.
            await conn.execute("SELECT pg_advisory_lock(k) FROM unnest($1::bigint[]) AS k", keys)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock(k) FROM unnest($1::bigint[]) AS k", keys)

    # ---------------------------------------------------------------- fills to book
    async def unbooked_fills(self) -> list[asyncpg.Record]:
        """Broker fills of this account not yet in the book, oldest first, with their order."""
        return await self.pool.fetch(
            f"""SELECT f.*, o.run_id, o.ticker, o.sector, o.structure, o.proposal, o.closes_position_id,
                       bo.legs AS broker_legs, bo.multiplier
                {_UNBOOKED_FILLS}
                ORDER BY f.filled_at, f.fill_id""", self.account_id)

    async def fill_booked(self, conn: asyncpg.Connection, fill_id: str) -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM position_fills WHERE fill_id = $1", fill_id))

    async def lock_position(self, conn: asyncpg.Connection, *, position_id: str | None = None,
                            order_id: str | None = None) -> asyncpg.Record | None:
        if position_id is not None:
            return await conn.fetchrow("SELECT * FROM strategy_positions WHERE position_id = $1 FOR UPDATE", position_id)
        return await conn.fetchrow("SELECT * FROM strategy_positions WHERE order_id = $1 FOR UPDATE", order_id)

    async def insert_position(self, conn: asyncpg.Connection, values: dict[str, Any]) -> bool:
        """Create a position (its first fill's numbers); False if its order already has one."""
        columns = list(values)
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        created = await conn.fetchval(
            f"INSERT INTO strategy_positions ({', '.join(columns)}) VALUES ({placeholders}) "
            "ON CONFLICT (order_id) DO NOTHING RETURNING position_id", *values.values())
        return created is not None

    async def update_position(self, conn: asyncpg.Connection, position_id: str, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(values, start=2))
        await conn.execute(f"UPDATE strategy_positions SET {sets} WHERE position_id = $1", position_id, *values.values())

    async def insert_position_fill(self, conn: asyncpg.Connection, *, fill_id: str, position_id: str,
                                   order_id: str | None, kind: str, units: int, price: Decimal, commission: Decimal,
                                   gross_pnl: Decimal, realized_pnl: Decimal, at: datetime) -> bool:
        """False (nothing written) when this fill id is already booked."""
        inserted = await conn.fetchval(
            """INSERT INTO position_fills (fill_id, position_id, order_id, kind, units, price, commission, gross_pnl,
                                           realized_pnl, at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id""",
            fill_id, position_id, order_id, kind, units, price, commission, gross_pnl, realized_pnl, at)
        return inserted is not None

    # ---------------------------------------------------------------- positions and marks
    async def positions(self, *, status: str | None = "open", position_id: str | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT * FROM strategy_positions
               WHERE account_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR position_id = $3)
               ORDER BY opened_at, position_id""", self.account_id, status, position_id)

    async def holding_shares(self) -> list[asyncpg.Record]:
        """Positions whose options expired into shares still held (exercised or assigned)."""
        return await self.pool.fetch(
            """SELECT * FROM strategy_positions WHERE account_id = $1 AND shares_open <> 0
               ORDER BY closed_at, position_id""", self.account_id)

    async def open_positions_locked(self, conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await conn.fetch(
            """SELECT * FROM strategy_positions WHERE account_id = $1 AND status = 'open'
               ORDER BY opened_at, position_id FOR UPDATE""", self.account_id)

    async def insert_marks(self, rows: Sequence[tuple]) -> None:
        """rows: (position_id, marked_at, units, mark, value, unrealized, underlying, delta, gamma, vega,
        theta, missing)."""
        await self.pool.executemany(
            """INSERT INTO position_marks (position_id, marked_at, units, mark, value, unrealized_pnl, underlying_price,
                                           delta, gamma, vega, theta, missing)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (position_id, marked_at) DO NOTHING""", rows)

    async def latest_marks(self, position_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            """SELECT DISTINCT ON (position_id) * FROM position_marks WHERE position_id = ANY($1::text[])
               ORDER BY position_id, marked_at DESC""", list(position_ids))
        return {r["position_id"]: r for r in rows}

    # ---------------------------------------------------------------- the book and the account in one read
    async def read(self, daily_reset: datetime | None) -> BookRead:
        """Everything the account and the open book are computed from (`BookRead`), in one
        statement: one round trip, one snapshot. `daily_reset` None: no reset snapshot, and
        `realized_since_reset` is all realized, `trades_since_reset` 0."""
        rows = await self.pool.fetch(
            f"""WITH figures AS (
                   SELECT EXISTS (SELECT 1 {_UNBOOKED_FILLS}) AS book_unbooked_fills,
                          (SELECT COALESCE(sum(amount), 0) FROM broker_cash_ledger WHERE account_id = $1) AS book_cash,
                          (SELECT array_agg(s ORDER BY s.ticker) FROM broker_share_positions s
                            WHERE s.account_id = $1 AND s.quantity <> 0) AS book_shares,
                          (SELECT COALESCE(sum(pf.realized_pnl), 0) FROM position_fills pf JOIN strategy_positions p USING (position_id)
                            WHERE p.account_id = $1 AND ($2::timestamptz IS NULL OR pf.at >= $2)) AS book_realized_since_reset,
                          (SELECT COALESCE(sum(pf.realized_pnl), 0) FROM position_fills pf JOIN strategy_positions p USING (position_id)
                            WHERE p.account_id = $1) AS book_realized_total,
                          (SELECT max(pf.at) FROM position_fills pf JOIN strategy_positions p USING (position_id)
                            WHERE p.account_id = $1 AND pf.kind = ANY($3::text[]) AND pf.realized_pnl < 0) AS book_last_loss_at,
                          (SELECT count(DISTINCT pf.order_id) FROM position_fills pf JOIN strategy_positions p USING (position_id)
                            WHERE p.account_id = $1 AND pf.kind = 'open' AND pf.at >= $2) AS book_trades_since_reset,
                          base.net_liquidation AS book_reset_net_liquidation, base.unrealized_pnl AS book_reset_unrealized_pnl,
                          (SELECT opening_cash FROM broker_accounts WHERE account_id = $1) AS book_opening_cash
                   FROM (SELECT 1) one
                   LEFT JOIN LATERAL (SELECT net_liquidation, unrealized_pnl FROM account_snapshots
                                      WHERE account_id = $1 AND captured_at <= $2
                                      ORDER BY captured_at DESC LIMIT 1) base ON true),
               book AS (
                   SELECT 0 AS book_part, p.* FROM strategy_positions p WHERE p.account_id = $1 AND p.status = 'open'
                   UNION ALL
                   SELECT 1 AS book_part, p.* FROM strategy_positions p WHERE p.account_id = $1 AND p.shares_open <> 0)
               SELECT f.*, b.*, m.units AS mark_units, m.value AS mark_value, m.underlying_price AS mark_underlying_price,
                      m.delta AS mark_delta, m.gamma AS mark_gamma, m.vega AS mark_vega, m.theta AS mark_theta,
                      CASE WHEN m.units IS NULL OR m.units <> b.units_open OR m.underlying_price IS NULL
                                OR m.underlying_price = 0 OR m.delta IS NULL OR m.gamma IS NULL OR m.vega IS NULL
                                OR m.theta IS NULL
                           THEN (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o.proposal) e
                                  WHERE e.key = ANY($4::text[])) END AS opening_proposal
               FROM figures f
               LEFT JOIN book b ON true
               LEFT JOIN LATERAL (SELECT * FROM position_marks pm WHERE b.book_part = 0 AND pm.position_id = b.position_id
                                  ORDER BY pm.marked_at DESC LIMIT 1) m ON true
               LEFT JOIN orders o ON b.book_part = 0 AND o.order_id = b.order_id
               ORDER BY b.book_part, CASE WHEN b.book_part = 0 THEN b.opened_at ELSE b.closed_at END, b.position_id""",
            self.account_id, daily_reset, list(CLOSING_KINDS), list(PROPOSAL_FIELDS))
        f = rows[0]
        open_rows = [r for r in rows if r["book_part"] == 0]
        return BookRead(
            unbooked_fills=f["book_unbooked_fills"], positions=open_rows,
            holding_shares=[r for r in rows if r["book_part"] == 1],
            latest_marks={r["position_id"]: {k: r["mark_" + k] for k in MARK_FIELDS}
                          for r in open_rows if r["mark_units"] is not None},
            proposals={r["order_id"]: r["opening_proposal"] for r in open_rows if r["opening_proposal"] is not None},
            shares=list(f["book_shares"] or ()), cash=f["book_cash"],
            realized_since_reset=f["book_realized_since_reset"], realized_total=f["book_realized_total"],
            last_loss_at=f["book_last_loss_at"], trades_since_reset=f["book_trades_since_reset"],
            reset_net_liquidation=f["book_reset_net_liquidation"], reset_unrealized_pnl=f["book_reset_unrealized_pnl"],
            opening_cash=f["book_opening_cash"] or Decimal(0))

    # ---------------------------------------------------------------- account figures
    async def realized_between(self, since: datetime | None, until: datetime | None = None) -> Decimal:
        return await self.pool.fetchval(
            """SELECT COALESCE(sum(pf.realized_pnl), 0) FROM position_fills pf JOIN strategy_positions p USING (position_id)
               WHERE p.account_id = $1 AND ($2::timestamptz IS NULL OR pf.at >= $2)
                 AND ($3::timestamptz IS NULL OR pf.at < $3)""", self.account_id, since, until)

    async def snapshot_at_or_before(self, at: datetime) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            """SELECT * FROM account_snapshots WHERE account_id = $1 AND captured_at <= $2
               ORDER BY captured_at DESC LIMIT 1""", self.account_id, at)

    # ---------------------------------------------------------------- exit orders
    async def exit_orders_of(self, position_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT order_id, state, exit_rule, created_at FROM orders WHERE closes_position_id = $1
               ORDER BY created_at, order_id""", position_id)

    async def link_exit(self, order_id: str, position_id: str, rule: str) -> asyncpg.Record | None:
        """Mark the order as the exit of `position_id` by `rule`; returns its row as linked (None
        when the order closes another position, or is not there)."""
        return await self.pool.fetchrow(
            """UPDATE orders SET closes_position_id = $2, exit_rule = $3
               WHERE order_id = $1 AND (closes_position_id IS NULL OR closes_position_id = $2)
               RETURNING *""",
            order_id, position_id, rule)

    # ---------------------------------------------------------------- reports
    async def realized_by_day(self, since: datetime, until: datetime, zone: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT (pf.at AT TIME ZONE $4)::date AS day, sum(pf.realized_pnl) AS realized_pnl
               FROM position_fills pf JOIN strategy_positions p USING (position_id)
               WHERE p.account_id = $1 AND pf.at >= $2 AND pf.at < $3 GROUP BY 1 ORDER BY 1""",
            self.account_id, since, until, zone)

    async def last_snapshot_by_day(self, since: datetime, until: datetime, zone: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT DISTINCT ON ((captured_at AT TIME ZONE $4)::date) (captured_at AT TIME ZONE $4)::date AS day,
                      captured_at, net_liquidation, unrealized_pnl, realized_pnl
               FROM account_snapshots WHERE account_id = $1 AND captured_at >= $2 AND captured_at < $3
               ORDER BY (captured_at AT TIME ZONE $4)::date, captured_at DESC""", self.account_id, since, until, zone)

    async def realized_by_strategy(self, since: datetime, until: datetime) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT p.structure, sum(pf.realized_pnl) AS realized_pnl, count(DISTINCT p.position_id) AS positions
               FROM position_fills pf JOIN strategy_positions p USING (position_id)
               WHERE p.account_id = $1 AND pf.at >= $2 AND pf.at < $3 GROUP BY 1 ORDER BY 1""",
            self.account_id, since, until)


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
