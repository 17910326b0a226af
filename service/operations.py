"""What the CLI (and later the HTTP API) can do, as plain async functions returning JSON-safe data.

One place for each operation, so the command line and the service never disagree.
"""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from agents.llm_debate import make_debater
from config.settings import DecisionConfig, defaults, settings
from memory.recall import RunMemory
from memory.store import MemoryStore
from graph.runner import RunOutcome, RunRequest, execute_run
from graph.schema import AccountState
from service import notify
from storage.database import Database
from storage.decisions import DecisionRepository
from storage.executions import ExecutionRepository
from storage.llm_calls import LLMCallRepository
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
    memory = MemoryStore(db.pool)  # the embedding model loads only if something is recalled or stored
    debater = make_debater(settings(), request.config, db, memory=RunMemory(memory, as_of))
    outcome = await execute_run(db, request, provider, account=account, positions=positions, on_node=on_node,
                                debater=debater, memory=memory, **extra)
    notify.notify_run(db, outcome)
    return outcome


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


async def list_runs(db: Database, limit: int = 50, *, status: str | None = None,
                    text: str | None = None) -> list[dict[str, Any]]:
    """Recent runs, newest first; optionally only those in `status`, or whose id, watchlist or
    tickers contain `text` (case-insensitive) — among the latest 500 when filtering."""
    runs = [jsonable(asdict(r)) for r in await RunRepository(db.pool).list(500 if status or text else limit)]
    if status:
        runs = [r for r in runs if r["status"] == status]
    if text:
        needle = text.lower()
        runs = [r for r in runs if needle in " ".join([r["run_id"], r["watchlist"], *r["tickers"]]).lower()]
    return runs[:limit]


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
        "llm_usage": await LLMCallRepository(db.pool).usage_by_run(run_id),
    })


async def list_orders(db: Database, state: str | None = None, run_id: str | None = None, limit: int = 100):
    return [order_summary(o) for o in await OrderRepository(db.pool).list(run_id=run_id, state=state, limit=limit)]


def terminal_reason(state: str, history: list[dict[str, Any]]) -> str | None:
    """Why a terminal order ended where it did (stale price, risk re-check, expired, cancelled by
    the broker, rejected by the approver …): the reason recorded with its last state change."""
    from brokers.order_state import TERMINAL

    if state not in TERMINAL or not history:
        return None
    return history[-1].get("reason") or f"{state.lower()} by {history[-1].get('actor')}"


async def show_order(db: Database, order_id: str) -> dict[str, Any] | None:
    """An order with its history, why it ended (when it has), its execution and the debate
    (verdict and transcript) that led to it."""
    repo = OrderRepository(db.pool)
    order = await repo.get(order_id)
    if order is None:
        return None
    history = await repo.history(order_id)
    debate = next((d for d in await DecisionRepository(db.pool).verdicts(order.run_id) if d["ticker"] == order.ticker),
                  None)
    execution = await ExecutionRepository(db.pool).row(order_id)
    return jsonable(asdict(order) | {"history": history, "terminal_reason": terminal_reason(order.state, history),
                                     "debate": debate, "execution": execution})


async def replay(db: Database, run_id: str, on_node=None) -> dict[str, Any]:
    """Re-execute a run in a sandbox from its recordings; per node: matched and a short diff."""
    from graph.replay import replay_run

    return jsonable((await replay_run(db, run_id, on_node=on_node)).to_dict())


async def fork(db: Database, run_id: str, at_node: str, sets: list[str], *, live_llm: bool = False,
               on_node=None) -> dict[str, Any]:
    """Run a run again from before `at_node` with `--set key=value` settings, in a sandbox.

    `live_llm`: debate with the configured LLM (new calls, recorded under the fork) instead of the
    original's recorded answers — needed when the settings change what the debate is asked."""
    from agents.llm_debate import llm_configured
    from graph.replay import ReplayError, fork_run, parse_overrides

    overrides = parse_overrides(sets)
    debater = None
    if live_llm:
        if not llm_configured(settings()):
            raise ReplayError("--live-llm needs OPENAI_API_KEY or OPENAI_BASE_URL")
        debater = make_debater(settings(), defaults().decision, db)
    return jsonable((await fork_run(db, run_id, at_node, overrides, debater=debater, on_node=on_node)).to_dict())


async def steps(db: Database, run_id: str) -> list[dict[str, Any]]:
    """The run's trace from its checkpoints: step, nodes, duration, what each wrote."""
    from graph.trace import run_steps

    return [s.to_dict() for s in await run_steps(db, run_id)]


async def state_at(db: Database, run_id: str, step: int) -> dict[str, Any]:
    from graph.trace import state_at_step

    return await state_at_step(db, run_id, step)


async def show_run_record(db: Database, run_id: str):
    """The run's record, or None: whether a run exists."""
    return await RunRepository(db.pool).get(run_id)


async def journal_entries(db: Database, *, ticker: str | None = None, run_id: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    from storage.journal import Journal

    return [jsonable(asdict(e)) for e in await Journal(db.pool).entries(ticker=ticker, run_id=run_id, limit=limit)]
