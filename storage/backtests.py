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

    async def record_day(self, backtest_id: str, session: date, run_ids: list[str], staged: int, filled: int,
                         net_liquidation: Decimal | None) -> None:
        await self.pool.execute(
            """INSERT INTO backtest_days (backtest_id, session, run_ids, orders_staged, orders_filled, net_liquidation)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (backtest_id, session) DO UPDATE SET run_ids = EXCLUDED.run_ids,
                 orders_staged = EXCLUDED.orders_staged, orders_filled = EXCLUDED.orders_filled,
                 net_liquidation = EXCLUDED.net_liquidation""",
            backtest_id, session, run_ids, staged, filled, net_liquidation)

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


async def staged_order_ids(pool: asyncpg.Pool, run_id: str) -> list[str]:
    rows = await getattr(pool, "pool", pool).fetch(
        "SELECT order_id FROM orders WHERE run_id = $1 AND state = 'STAGED' ORDER BY order_id", run_id)
    return [r["order_id"] for r in rows]


async def closed_positions(pool: asyncpg.Pool, account_id: str) -> list[dict[str, Any]]:
    """Every closed position with its predicted probability of profit, realized P&L and the regime
    its opening fill was journaled in (for trade statistics, calibration and P&L by regime)."""
    rows = await getattr(pool, "pool", pool).fetch(
        """SELECT p.position_id, p.ticker, p.structure, p.opened_at, p.closed_at, p.status, p.realized_pnl,
                  p.probability_of_profit, p.max_loss, p.units_opened, p.multiplier,
                  (SELECT j.regime FROM trade_journal j WHERE j.order_id = p.order_id
                    ORDER BY j.filled_at LIMIT 1) AS regime
           FROM strategy_positions p WHERE p.account_id = $1 AND p.status <> 'open'
           ORDER BY p.closed_at, p.position_id""", account_id)
    return [dict(r) for r in rows]


async def traded_premium(pool: asyncpg.Pool, account_id: str) -> Decimal:
    """Dollar premium of every opening and closing fill (|price| x units x multiplier): turnover's numerator."""
    return await getattr(pool, "pool", pool).fetchval(
        """SELECT coalesce(sum(abs(pf.price) * pf.units * p.multiplier), 0) FROM position_fills pf
           JOIN strategy_positions p USING (position_id)
           WHERE p.account_id = $1 AND pf.kind IN ('open', 'close')""", account_id)
