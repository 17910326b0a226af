"""Wall time per node and in total for one decision run of 10 and of 50 tickers.

Runs on a throwaway embedded Postgres (or DATABASE_URL) with the simulated market, so it measures
the whole path a scheduled run takes: snapshot, recording, analysts, debate, risk, strategy,
Kelly, staging and every checkpoint write. Ends with one line per size:
`tickers=50 total_s=4.20 ...`.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from config.settings import Settings, defaults  # noqa: E402
from graph.runner import RunRequest, execute_run  # noqa: E402
from service.operations import default_account  # noqa: E402
from storage.database import open_database  # noqa: E402
from tools.chain import NEW_YORK  # noqa: E402
from tools.providers.simulated import SimulatedMarket  # noqa: E402

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
console = Console()


def tickers_for(n: int) -> list[str]:
    base = list(defaults().watchlist)
    return base[:n] if n <= len(base) else base + [f"T{i:03d}" for i in range(1, n - len(base) + 1)]


async def measure(db, n: int, seed: int) -> tuple[float, dict[str, tuple[float, float, int]]]:
    request = RunRequest(watchlist=f"bench{n}", tickers=tickers_for(n), as_of=AS_OF, seed=seed, provider="simulated")
    provider = SimulatedMarket(seed=seed)
    t0 = time.perf_counter()
    outcome = await execute_run(db, request, provider, account=default_account())
    total = time.perf_counter() - t0
    per_node: dict[str, list[float]] = defaultdict(list)
    for t in outcome.state.get("node_timings", []):
        per_node[t.node].append(t.duration_ms / 1000.0)
    summary = {node: (max(v), sum(v), len(v)) for node, v in per_node.items()}
    return total, summary, len(outcome.orders)


def snapshot_seconds(n: int) -> tuple[float, float]:
    """A cold then a warm simulated snapshot of `n` tickers (target: cold < 2 s, warm < 1 s for 50)."""
    market = SimulatedMarket(seed=7)
    names = [f"P{i:03d}" for i in range(n)]
    start = time.perf_counter()
    market.snapshot(names, AS_OF)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    market.snapshot(names, AS_OF)
    return cold, time.perf_counter() - start


async def main() -> None:
    cold, warm = snapshot_seconds(50)
    home = Path(tempfile.mkdtemp(prefix="hedgegraph-bench-"))
    settings = Settings(home=home) if not os.environ.get("DATABASE_URL") else Settings()
    results = []
    async with open_database(settings) as db:
        await measure(db, 2, seed=1)  # warm-up: imports, calendars, TA-Lib, first connections
        for n in (10, 50):
            total, summary, orders = await measure(db, n, seed=7 + n)
            table = Table(title=f"{n} tickers: {total:.2f} s total, {orders} orders staged")
            for col in ("node", "tasks", "longest task s", "sum of tasks s"):
                table.add_column(col)
            for node, (longest, summed, count) in sorted(summary.items(), key=lambda kv: -kv[1][1]):
                table.add_row(node, str(count), f"{longest:.3f}", f"{summed:.3f}")
            console.print(table)
            results.append((n, total, summary, orders))
    for n, total, summary, orders in results:
        analysts = sum(summary.get(k, (0, 0, 0))[1] for k in ("vol_surface", "flow", "technical", "social"))
        print(f"tickers={n} total_s={total:.2f} analyst_task_s={analysts:.2f} orders={orders}")
    print(f"snapshot50_cold_s={cold:.2f} snapshot50_warm_s={warm:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
