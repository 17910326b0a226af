"""Backtests and their days (migration 0014), and the per-backtest database they run in."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

_DATABASE = re.compile(r"^hedgegraph_bt_[a-z0-9_]{1,40}$")


@dataclass(frozen=True)
class BacktestRecord:
    backtest_id: str
    created_at: datetime
    finished_at: datetime | None
    status: str
    params: dict[str, Any]
    database: str
    account_id: str
    results_dir: str | None
    summary: dict[str, Any] | None
    error: str | None


def database_url(base_url: str, database: str) -> str:
    """`base_url` (any database on the server) pointed at `database` on the same server."""
    if not _DATABASE.match(database):
        raise ValueError(f"invalid backtest database name {database!r}")
    return urlunsplit(urlsplit(base_url)._replace(path=f"/{database}"))


async def database_exists(pool: asyncpg.Pool, database: str) -> bool:
    return bool(await getattr(pool, "pool", pool).fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database))


async def recreate_database(pool: asyncpg.Pool, database: str) -> None:
    """Drop (with whatever a failed attempt left) and create a backtest's own database."""
    if not _DATABASE.match(database):  # an identifier cannot be a bind parameter: checked instead
        raise ValueError(f"invalid backtest database name {database!r}")
    async with pool.acquire() as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {database}")


class BacktestRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = getattr(pool, "pool", pool)

    async def start(self, backtest_id: str, params: dict[str, Any], database: str, account_id: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM backtests WHERE backtest_id = $1", backtest_id)
            await conn.execute(
                "INSERT INTO backtests (backtest_id, params, database, account_id) VALUES ($1, $2, $3, $4)",
                backtest_id, params, database, account_id)

    async def resume(self, backtest_id: str) -> None:
        """An unfinished backtest (its process died or a day failed) runs on from its last recorded day."""
        await self.pool.execute(
            "UPDATE backtests SET status = 'running', finished_at = NULL, error = NULL WHERE backtest_id = $1",
            backtest_id)

    async def record_day(self, backtest_id: str, session: date, run_ids: list[str], staged: int, filled: int,
                         net_liquidation: Decimal | None, *, exits_staged: int = 0, settled: int = 0,
                         modelled_chains: bool = False) -> None:
        await self.pool.execute(
            """INSERT INTO backtest_days (backtest_id, session, run_ids, orders_staged, orders_filled, net_liquidation,
                                          exits_staged, settled, modelled_chains)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (backtest_id, session) DO UPDATE SET run_ids = EXCLUDED.run_ids,
                 orders_staged = EXCLUDED.orders_staged, orders_filled = EXCLUDED.orders_filled,
                 net_liquidation = EXCLUDED.net_liquidation, exits_staged = EXCLUDED.exits_staged,
                 settled = EXCLUDED.settled, modelled_chains = EXCLUDED.modelled_chains""",
            backtest_id, session, run_ids, staged, filled, net_liquidation, exits_staged, settled, modelled_chains)

    async def finish(self, backtest_id: str, status: str, *, summary: dict[str, Any] | None = None,
                     results_dir: str | None = None, error: str | None = None) -> None:
        await self.pool.execute(
            """UPDATE backtests SET status = $2, finished_at = now(), summary = $3, results_dir = $4, error = $5
               WHERE backtest_id = $1""", backtest_id, status, summary, results_dir, error)

    async def get(self, backtest_id: str) -> BacktestRecord | None:
        row = await self.pool.fetchrow("SELECT * FROM backtests WHERE backtest_id = $1", backtest_id)
        return BacktestRecord(**dict(row)) if row else None

    async def list(self, limit: int = 50) -> list[BacktestRecord]:
        rows = await self.pool.fetch("SELECT * FROM backtests ORDER BY created_at DESC LIMIT $1", limit)
        return [BacktestRecord(**dict(r)) for r in rows]

    async def days(self, backtest_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM backtest_days WHERE backtest_id = $1 ORDER BY session",
                                     backtest_id)
        return [dict(r) for r in rows]


async def filled_orders(pool: asyncpg.Pool, run_ids: list[str]) -> int:
    """Orders of these runs that filled (fully or in part)."""
    return await getattr(pool, "pool", pool).fetchval(
        "SELECT count(*) FROM orders WHERE run_id = ANY($1::text[]) AND state IN ('FILLED', 'PARTIALLY_FILLED')",
        run_ids)


async def run_order_count(pool: asyncpg.Pool, run_id: str) -> int:
    """Orders a run staged, whatever became of them since (counted the same when a day is run again)."""
    return await getattr(pool, "pool", pool).fetchval("SELECT count(*) FROM orders WHERE run_id = $1", run_id)


async def staged_order_ids(pool: asyncpg.Pool, run_id: str) -> list[str]:
    rows = await getattr(pool, "pool", pool).fetch(
        "SELECT order_id FROM orders WHERE run_id = $1 AND state = 'STAGED' ORDER BY order_id", run_id)
    return [r["order_id"] for r in rows]


async def closed_positions(pool: asyncpg.Pool, account_id: str) -> list[dict[str, Any]]:
    """Every closed position with its predicted probability of profit, realized P&L, the regime its
    opening fill was journaled in, and the verdict and analysts' signals of the run that opened it
    (for trade statistics, calibration, P&L by regime and by analyst agreement)."""
    rows = await getattr(pool, "pool", pool).fetch(
        """SELECT p.position_id, p.ticker, p.structure, p.opened_at, p.closed_at, p.status, p.realized_pnl,
                  p.probability_of_profit, p.max_loss, p.units_opened, p.multiplier,
                  (SELECT j.regime FROM trade_journal j WHERE j.order_id = p.order_id
                    ORDER BY j.filled_at LIMIT 1) AS regime,
                  d.price_view, d.vol_view,
                  (SELECT coalesce(jsonb_agg(jsonb_build_object('source', s.source, 'direction', s.direction,
                                                                'conviction', s.conviction) ORDER BY s.source), '[]')
                     FROM signals s WHERE s.run_id = p.run_id AND s.ticker = p.ticker) AS signals
           FROM strategy_positions p LEFT JOIN debates d ON d.run_id = p.run_id AND d.ticker = p.ticker
           WHERE p.account_id = $1 AND p.status <> 'open'
           ORDER BY p.closed_at, p.position_id""", account_id)
    return [dict(r) for r in rows]


async def book_history(pool: asyncpg.Pool, account_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                      list[dict[str, Any]]]:
    """(positions, fills, marks) of every position the account ever held, oldest first: what the
    Greeks P&L attribution walks through."""
    pool = getattr(pool, "pool", pool)
    positions = await pool.fetch(
        """SELECT position_id, ticker, structure, legs, multiplier, units_opened, entry_price, opened_at, closed_at,
                  status, realized_pnl FROM strategy_positions WHERE account_id = $1 ORDER BY opened_at, position_id""",
        account_id)
    fills = await pool.fetch(
        """SELECT f.position_id, f.kind, f.units, f.price, f.commission, f.gross_pnl, f.at FROM position_fills f
           JOIN strategy_positions p USING (position_id) WHERE p.account_id = $1 ORDER BY f.at, f.fill_id""",
        account_id)
    marks = await pool.fetch(
        """SELECT m.position_id, m.marked_at, m.units, m.unrealized_pnl, m.underlying_price, m.delta, m.gamma,
                  m.vega, m.theta FROM position_marks m JOIN strategy_positions p USING (position_id)
           WHERE p.account_id = $1 ORDER BY m.marked_at, m.position_id""", account_id)
    return [dict(r) for r in positions], [dict(r) for r in fills], [dict(r) for r in marks]


async def traded_premium(pool: asyncpg.Pool, account_id: str) -> Decimal:
    """Dollar premium of every opening and closing fill (|price| x units x multiplier): turnover's numerator."""
    return await getattr(pool, "pool", pool).fetchval(
        """SELECT coalesce(sum(abs(pf.price) * pf.units * p.multiplier), 0) FROM position_fills pf
           JOIN strategy_positions p USING (position_id)
           WHERE p.account_id = $1 AND pf.kind IN ('open', 'close')""", account_id)
