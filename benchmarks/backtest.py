"""Backtest benchmark: the whole graph day by day (decision run, approvals, housekeeping at the
close) on the simulated market with 20 tickers and on the real history with SPY, one slot a day.

Run: .venv/bin/python benchmarks/backtest.py [--sim-days N] [--history-days N]  (0 skips a source)
Ends with lines
    days=N tickers=20 source=simulated total_s=... per_day_s=... year_estimate_s=...
    days=N tickers=1 source=history total_s=... per_day_s=... year_estimate_s=...
`total_s` is the driver's wall time for N sessions from 2022-01-03 (the report and baselines are
not included); `year_estimate_s` = per_day_s x 252. The target is one year x 20 tickers < 300 s.
Uses the embedded Postgres under $HEDGEGRAPH_HOME (or DATABASE_URL); each run makes and drops
its own backtest database.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TICKERS_20 = ("SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "JPM", "XLE",
              "GOOGL", "META", "XLF", "XLK", "DIA", "AMD", "NFLX", "BAC", "KO", "DIS")


async def measure(market, tickers, days: int) -> float:
    from config.settings import Settings
    from service.backtest import BacktestSpec, run_backtest
    from tools.market_hours import sessions_between
    from storage.database import open_database

    sessions = sessions_between(date(2022, 1, 3), date(2023, 12, 31))[:days]
    spec = BacktestSpec(sessions[0][0], sessions[-1][0], tuple(tickers), str(getattr(market, "data_dir", "")),
                        overrides={"min_agreeing_sources": 1})
    async with open_database(Settings()) as db:
        start = time.perf_counter()
        result = await run_backtest(db, spec, market=market, reuse=False)
        total = time.perf_counter() - start
        await db.pool.execute(f"DROP DATABASE IF EXISTS {result.database} WITH (FORCE)")
        await db.pool.execute("DELETE FROM backtests WHERE backtest_id = $1", result.backtest_id)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim-days", type=int, default=252)
    parser.add_argument("--history-days", type=int, default=252)
    args = parser.parse_args()
    from tools.providers.history import HistoricalMarket
    from tools.providers.simulated import SimulatedMarket

    lines = []
    for source, market, tickers, days in (("simulated", SimulatedMarket(seed=7), TICKERS_20, args.sim_days),
                                          ("history", HistoricalMarket(), ("SPY",), args.history_days)):
        if days <= 0:
            continue
        total = asyncio.run(measure(market, tickers, days))
        lines.append(f"days={days} tickers={len(tickers)} source={source} total_s={total:.1f} "
                     f"per_day_s={total / days:.2f} year_estimate_s={total / days * 252:.0f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
