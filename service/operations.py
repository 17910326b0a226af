"""What the CLI (and later the HTTP API) can do, as plain async functions returning JSON-safe data.

One place for each operation, so the command line and the service never disagree.
"""
from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from config.settings import DecisionConfig, defaults, settings

if TYPE_CHECKING:  # the decision stack is imported by the operations that run it, not by listing ones
    from graph.runner import RunOutcome
    from domain.decision import AccountState
    from storage.database import Database
    from domain.orders import Order
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
    from domain.decision import AccountState

    a = defaults().account
    return AccountState(net_liquidation=a["net_liquidation"], cash=a["cash"], margin_used=a["margin_used"])


async def book_account(db: Database, provider: MarketDataProvider, at: datetime,
                       account_id: str = "paper") -> tuple[AccountState, list]:
    """The paper account as the risk gate must see it at `at`: NLV, cash, margin, daily P&L, last
    loss and trades today from the book (positions marked at `at`), plus the open positions and
    the orders still pending, whose max loss is reserved as margin until they resolve."""
    from brokers.book import Book, last_daily_reset
    from brokers.paper import PaperBroker
    from brokers.quote_source import ProviderQuotes
    from risk.limits import load_risk_matrix
    from storage.orders import OrderRepository

    quotes = ProviderQuotes(provider, lambda: at)
    await PaperBroker(db, quotes, clock=lambda: at, opening_cash=default_account().cash,
                      account_id=account_id).ensure_connected()
    book = Book(db, account_id=account_id, config=defaults().book)
    matrix = load_risk_matrix()
    account, positions = await book.account_and_positions(
        at, last_daily_reset(at, matrix.daily_reset.at, matrix.daily_reset.timezone), quotes=quotes)
    pending = await OrderRepository(db.pool).open_exposures()
    reserved = sum((p.max_loss for p in pending), Decimal("0"))
    account = account.model_copy(update={"margin_used": account.margin_used + reserved})
    return account, positions + pending


async def run_decision(
    db: Database, provider: MarketDataProvider, *, watchlist: str, tickers: list[str], as_of: datetime,
    seed: int, config: DecisionConfig | None = None, on_node=None, now=None, broker=None,
) -> RunOutcome:
    """One decision run. `broker`: the paper broker of the account the run trades (default: the
    user's "paper" account); the account the gate sees and the Kelly journal are that account's."""
    from agents.llm_debate import make_debater
    from graph.runner import RunRequest, execute_run
    from memory.recall import RunMemory
    from memory.store import MemoryStore
    from service import notify
    from service.markets import source_of

    memory = MemoryStore(db.pool)  # the embedding model loads only if something is recalled or stored
    config = config or defaults().decision
    debater = make_debater(settings(), config, db, memory=RunMemory(memory, as_of))
    request = RunRequest(watchlist=watchlist, tickers=tickers, as_of=as_of, seed=seed, provider=provider.name,
                         config=config, debater=debater.name, market_source=source_of(provider))
    account, positions = await book_account(db, provider, as_of, getattr(broker, "ledger_account_id", "paper"))
    extra = ({"now": now} if now is not None else {}) | ({"broker": broker} if broker is not None else {})
    outcome = await execute_run(db, request, provider, account=account, positions=positions, on_node=on_node,
                                debater=debater, memory=memory, **extra)
    notify.notify_run(db, outcome)
    return outcome


def order_json(order: Order) -> dict[str, Any]:
    """An order as the CLI and the API show it: its fields, with the priced legs the approver saw
    (the proposal's) as its legs."""
    return asdict(order) | {"legs": order.proposal["legs"]}


def order_summary(order: Order) -> dict[str, Any]:
    return jsonable({k: v for k, v in order_json(order).items() if k not in ("proposal", "sizing")} | {
        "max_loss_per_unit": order.proposal.get("max_loss"),
        "max_profit_per_unit": order.proposal.get("max_profit"),
        "breakevens": order.proposal.get("breakevens"),
        "probability_of_profit": order.proposal.get("probability_of_profit"),
        "pop_model": order.proposal.get("pop_model"),  # "svi_density" (skew-aware) or "lognormal_atm"
        "probability_of_profit_lognormal": order.proposal.get("probability_of_profit_lognormal"),
        "expected_pnl_per_unit": order.proposal.get("expected_pnl"),
        "kelly": {k: order.sizing.get(k) for k in ("kelly_fraction", "applied_fraction", "win_rate", "inputs",
                                                   "payoff_ratio", "capital_at_risk", "caps_applied")},
    })


async def list_runs(db: Database, limit: int = 50, *, text: str | None = None, **filters) -> list[dict[str, Any]]:
    """Newest first; `filters` as `RunRepository.list` (ticker, status, since, until, debater, mode);
    `text` keeps runs whose id, watchlist or tickers contain it (case-insensitive), among the latest 500."""
    from storage.runs import RunRepository

    runs = [jsonable(asdict(r)) for r in await RunRepository(db.pool).list(500 if text else limit, **filters)]
    if text:
        needle = text.lower()
        runs = [r for r in runs if needle in r["run_id"].lower() or needle in r["watchlist"].lower()
                or any(needle in t.lower() for t in r["tickers"])][:limit]
    return runs


async def diff_runs(db: Database, a: str, b: str) -> dict[str, Any]:
    """Two runs compared: inputs, settings, and node by node every difference in full."""
    from graph.diff import diff_runs as diff

    return jsonable((await diff(db, a, b)).to_dict())


async def show_run(db: Database, run_id: str) -> dict[str, Any] | None:
    from storage.decisions import DecisionRepository
    from storage.llm_calls import LLMCallRepository
    from storage.orders import OrderRepository
    from storage.runs import RunRepository

    run = await RunRepository(db.pool).get(run_id)
    if run is None:
        return None
    decisions = DecisionRepository(db.pool)
    return jsonable({
        "run": asdict(run),
        "signals": await decisions.signals(run_id),
        "debates": await decisions.verdicts(run_id),
        "risk_decisions": await decisions.risk_decisions(run_id),
        "orders": [order_summary(o) for o in await OrderRepository(db.pool).list(run_id=run_id)],
        "node_timings": await RunRepository(db.pool).timings(run_id),
        "llm_usage": await LLMCallRepository(db.pool).usage_by_run(run_id),
        "llm_cost": price_usage(await LLMCallRepository(db.pool).usage_by_model(run_id)),
    })


def price_usage(by_model: dict[str, dict[str, int]], prices=None) -> dict[str, Any]:
    """A run's LLM usage by model with its cost in dollars from the price table; a model without a
    price makes the total unknown (None) rather than silently low."""
    from config.settings import llm_prices

    prices = llm_prices() if prices is None else prices
    models, total = {}, Decimal("0")
    for model, usage in by_model.items():
        price = prices.get(model)
        cost = None if price is None else price.cost(usage["tokens_in"], usage["tokens_out"])
        models[model] = {**usage, "cost_usd": cost}
        total = None if cost is None or total is None else total + cost
    keys = ("calls", "requests", "retries", "failed", "tokens_in", "tokens_out")
    return jsonable({**{k: sum(u[k] for u in by_model.values()) for k in keys}, "cost_usd": total,
                     "priced_models": sorted(m for m in by_model if m in prices), "by_model": models})


async def llm_calls(db: Database, run_id: str) -> dict[str, Any] | None:
    """Every LLM call of a run with its prompt and response, and what the run's calls cost."""
    from dataclasses import asdict as as_dict

    from storage.decisions import DecisionRepository
    from storage.llm_calls import LLMCallRepository
    from storage.runs import RunRepository

    if await RunRepository(db.pool).get(run_id) is None:
        return None
    repo = LLMCallRepository(db.pool)
    return jsonable({
        "run_id": run_id,
        "usage": price_usage(await repo.usage_by_model(run_id)),
        "fallbacks": await DecisionRepository(db.pool).fallback_debates(run_id),
        "calls": [as_dict(c) for c in await repo.for_run(run_id)],
    })


async def list_orders(db: Database, state: str | None = None, run_id: str | None = None, limit: int = 100):
    from storage.orders import OrderRepository

    return [order_summary(o) for o in await OrderRepository(db.pool).list(run_id=run_id, state=state, limit=limit)]


def terminal_reason(state: str, history: list[dict[str, Any]]) -> str | None:
    """Why a terminal order ended where it did (stale price, risk re-check, expired, cancelled by
    the broker, rejected by the approver …): the reason recorded with its last state change."""
    from domain.order_state import TERMINAL

    if state not in TERMINAL or not history:
        return None
    return history[-1].get("reason") or f"{state.lower()} by {history[-1].get('actor')}"


async def show_order(db: Database, order_id: str) -> dict[str, Any] | None:
    """An order with its history, why it ended (when it has), its execution and the debate
    (verdict and transcript) that led to it."""
    from storage.decisions import DecisionRepository
    from storage.executions import ExecutionRepository
    from storage.orders import OrderRepository

    repo = OrderRepository(db.pool)
    order = await repo.get(order_id)
    if order is None:
        return None
    history = await repo.history(order_id)
    debate = next((d for d in await DecisionRepository(db.pool).verdicts(order.run_id) if d["ticker"] == order.ticker),
                  None)
    execution = await ExecutionRepository(db.pool).row(order_id)
    return jsonable(order_json(order) | {"history": history, "terminal_reason": terminal_reason(order.state, history),
                                     "debate": debate, "execution": execution})


async def replay(db: Database, run_id: str, on_node=None) -> dict[str, Any]:
    """Re-execute a run in a sandbox from its recordings; per node: matched and a short diff."""
    from graph.replay import replay_run

    return jsonable((await replay_run(db, run_id, on_node=on_node)).to_dict())


async def export_run(db: Database, run_id: str, path) -> dict[str, Any]:
    """Write a run's trace (run row, snapshot, LLM calls, checkpoints, every step's state) as one zip."""
    from graph.run_export import export_run as export

    return asdict(await export(db, run_id, path))


async def replay_from_file(db: Database, path, on_node=None) -> dict[str, Any]:
    """Import a trace file written by `export_run` into this database and replay it node by node."""
    from graph.run_export import replay_from_file as replay_file

    report, added = await replay_file(db, path, on_node=on_node)
    return jsonable({**report.to_dict(), "imported": added})


async def open_in_studio(db: Database, run_id: str, url: str) -> dict[str, Any]:
    """Show a recorded run in LangGraph Studio: its checkpoints copied under a Studio thread id
    (a UUID named by the run id) and that thread registered with the server at `url`."""
    import httpx

    from graph.studio import studio_thread

    thread_id, checkpoints = await studio_thread(db, run_id)
    base = url.rstrip("/")
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            reply = await client.post("/threads", json={
                "thread_id": thread_id, "if_exists": "do_nothing",
                "metadata": {"graph_id": "hedgegraph"}})
    except httpx.HTTPError as exc:
        raise LookupError(f"no LangGraph server at {base} ({type(exc).__name__}); start it with `langgraph dev`") from None
    if reply.status_code >= 400:
        raise LookupError(f"the LangGraph server at {base} refused the thread: HTTP {reply.status_code} {reply.text[:200]}")
    return {"run_id": run_id, "thread_id": thread_id, "checkpoints": checkpoints, "server": base,
            "studio_url": f"https://smith.langchain.com/studio/thread/{thread_id}?baseUrl={base}"}


async def fork(db: Database, run_id: str, at_node: str, sets: list[str], *, live_llm: bool = False,
               on_node=None) -> dict[str, Any]:
    """Run a run again from before `at_node` with `--set key=value` settings, in a sandbox.

    `live_llm`: debate with the configured LLM (new calls, recorded under the fork) instead of the
    original's recorded answers — needed when the settings change what the debate is asked."""
    from agents.llm_debate import llm_configured, make_debater
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


# ---------------------------------------------------------------------------------- the book
async def _book_and_quotes(ctx):
    """The paper account's book, its broker opened, and quotes on the context's clock."""
    from brokers.book import Book
    from brokers.quote_source import ProviderQuotes

    provider = ctx.book_market(defaults().seed)
    broker = ctx.broker_for(provider)
    await broker.ensure_connected()
    return Book(ctx.db, account_id=broker.ledger_account_id, broker=broker.name, config=defaults().book), \
        ProviderQuotes(provider, ctx.clock)


async def positions(ctx) -> dict[str, Any]:
    """Open strategy positions with their latest marks, Greeks and exit orders."""
    book, _ = await _book_and_quotes(ctx)
    return jsonable({"as_of": ctx.clock(), "positions": await book.positions_report()})


async def pnl(ctx, start, end) -> dict[str, Any]:
    """Daily P&L (realized, unrealized and its change) and P&L by strategy between two New York days."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    book, _ = await _book_and_quotes(ctx)
    days = await book.pnl_by_day(start, end)
    return jsonable({"from": start.isoformat(), "to": end.isoformat(), "days": days,
                     "by_strategy": await book.pnl_by_strategy(start, end),
                     "realized_pnl": sum((d["realized_pnl"] for d in days), Decimal("0")),
                     "unrealized_pnl": next((d["unrealized_pnl"] for d in reversed(days)
                                             if d["unrealized_pnl"] is not None), None)})


async def account(ctx) -> dict[str, Any]:
    """The account as the risk gate sees it now (positions marked at the current quotes)."""
    from brokers.book import last_daily_reset
    from risk.limits import load_risk_matrix

    book, quotes = await _book_and_quotes(ctx)
    now = ctx.clock()
    matrix = load_risk_matrix()
    reset = last_daily_reset(now, matrix.daily_reset.at, matrix.daily_reset.timezone)
    return jsonable(await book.account_now(now, reset, quotes=quotes) | {"daily_reset": reset})


async def show_run_record(db: Database, run_id: str):
    """The run's record, or None: whether a run exists."""
    from storage.runs import RunRepository

    return await RunRepository(db.pool).get(run_id)


async def journal_entries(db: Database, *, ticker: str | None = None, run_id: str | None = None,
                          limit: int = 100) -> list[dict[str, Any]]:
    from storage.journal import Journal

    return [jsonable(asdict(e)) for e in await Journal(db.pool).entries(ticker=ticker, run_id=run_id, limit=limit)]


# ---------------------------------------------------------------------------------- backtests
async def list_backtests(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Backtests from the main database's index, newest first (parameters, status, summary)."""
    from storage.backtests import BacktestRepository

    return [jsonable(asdict(r)) for r in await BacktestRepository(db.pool).list(limit)]


def read_backtest_report(results_dir: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The backtest's report.json (written by `service.backtest_report.write_report`), or None and
    why it cannot be read."""
    import json
    from pathlib import Path

    if not results_dir:
        return None, "this backtest has no results folder (it is still running, or it failed)"
    path = Path(results_dir) / "report.json"
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"the report file {path} is missing"
    except (OSError, ValueError) as exc:
        return None, f"the report file {path} cannot be read: {exc}"


async def show_backtest(db: Database, backtest_id: str) -> dict[str, Any] | None:
    """One backtest: its index record, its days, the database its runs live in, and its report."""
    from storage.backtests import BacktestRepository, database_url
    from storage.embedded import redact

    repo = BacktestRepository(db.pool)
    record = await repo.get(backtest_id)
    if record is None:
        return None
    report, problem = read_backtest_report(record.results_dir)
    return jsonable(asdict(record) | {"database_url": redact(database_url(db.url, record.database)),
                                      "days": [d | {"session": d["session"].isoformat()}
                                               for d in await repo.days(backtest_id)],
                                      "report": report,
                                      "report_error": problem})
