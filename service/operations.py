"""What the CLI (and later the HTTP API) can do, as plain async functions returning JSON-safe data.

One place for each operation, so the command line and the service never disagree.
"""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from config.settings import DecisionConfig, defaults
from graph.runner import RunOutcome, RunRequest, execute_run
from graph.schema import AccountState
from storage.database import Database
from storage.decisions import DecisionRepository
from storage.orders import OrderRecord, OrderRepository
from storage.runs import RunRepository
from tools.providers.base import MarketDataProvider


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    return value


def default_account() -> AccountState:
    a = defaults().account
    return AccountState(net_liquidation=a["net_liquidation"], cash=a["cash"], margin_used=a["margin_used"])


async def run_decision(
    db: Database, provider: MarketDataProvider, *, watchlist: str, tickers: list[str], as_of: datetime,
    seed: int, config: DecisionConfig | None = None, on_node=None, now=None,
) -> RunOutcome:
    request = RunRequest(watchlist=watchlist, tickers=tickers, as_of=as_of, seed=seed, provider=provider.name,
                         config=config or defaults().decision)
    positions = await OrderRepository(db.pool).open_exposures()
    account = default_account()
    # Orders awaiting approval or a fill reserve their max loss as margin until they resolve.
    reserved = sum((p.max_loss for p in positions), Decimal("0"))
    account = account.model_copy(update={"margin_used": account.margin_used + reserved})
    extra = {"now": now} if now is not None else {}
    return await execute_run(db, request, provider, account=account, positions=positions, on_node=on_node, **extra)


def order_summary(order: OrderRecord) -> dict[str, Any]:
    return jsonable({k: v for k, v in asdict(order).items() if k not in ("proposal", "sizing", "legs")} | {
        "legs": order.legs,
        "max_loss_per_unit": order.proposal.get("max_loss"),
        "max_profit_per_unit": order.proposal.get("max_profit"),
        "breakevens": order.proposal.get("breakevens"),
        "probability_of_profit": order.proposal.get("probability_of_profit"),
        "kelly": {k: order.sizing.get(k) for k in ("kelly_fraction", "applied_fraction", "win_rate",
                                                   "payoff_ratio", "capital_at_risk", "caps_applied")},
    })


async def list_runs(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    return [jsonable(asdict(r)) for r in await RunRepository(db.pool).list(limit)]


async def show_run(db: Database, run_id: str) -> dict[str, Any] | None:
    run = await RunRepository(db.pool).get(run_id)
    if run is None:
        return None
    decisions = DecisionRepository(db.pool)
    timings = await db.pool.fetch(
        "SELECT node, ticker, duration_ms FROM node_timings WHERE run_id = $1 ORDER BY started_at", run_id)
    return jsonable({
        "run": asdict(run),
        "signals": await decisions.signals(run_id),
        "debates": await decisions.verdicts(run_id),
        "risk_decisions": await decisions.risk_decisions(run_id),
        "orders": [order_summary(o) for o in await OrderRepository(db.pool).list(run_id=run_id)],
        "node_timings": [dict(t) for t in timings],
    })


async def list_orders(db: Database, state: str | None = None, run_id: str | None = None, limit: int = 100):
    return [order_summary(o) for o in await OrderRepository(db.pool).list(run_id=run_id, state=state, limit=limit)]


async def show_order(db: Database, order_id: str) -> dict[str, Any] | None:
    repo = OrderRepository(db.pool)
    order = await repo.get(order_id)
    if order is None:
        return None
    return jsonable(asdict(order) | {"history": await repo.history(order_id)})
