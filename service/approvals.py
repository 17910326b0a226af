"""Approvals: an approver sees everything needed to decide, decides once, and only then does
anything reach a broker. The CLI and the HTTP API both go through these functions.

A decision is recorded first, in one transaction that locks the order row: the order must still
be STAGED (else `DecisionConflict`, HTTP 409), and the `approvals` table admits one decision per
order. Only then is the run's graph resumed, which re-checks and transmits. If the process dies
between the two, `recover_pending` resumes the run later; the broker's idempotency per order id
means the order is sent once either way.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Literal

from agents.execution import order_manager
from agents.staging import idempotency_key, order_id_for
from brokers.flatten import flatten_orders
from domain.order_state import OrderState
from brokers.base import BrokerError
from brokers.factory import close_broker, make_broker
from brokers.portfolio import holdings_after, portfolio_greeks
from brokers.quote_source import ProviderQuotes
from config.clock import wall_clock
from config.connections import load_connections
from config.settings import Settings, defaults
from graph.runner import RunBusy, RunFailed, make_deps, resume_run
from domain.decision import AccountState
from tools.chain import NEW_YORK
from service import notify
from service.markets import source_of
from service.operations import default_account, jsonable, order_summary, terminal_reason
from storage import schedule_slots
from storage.approvals import ApprovalEntry, ApprovalRepository
from storage.controls import RiskControls
from storage.database import Database, connect, resolve_url
from storage.decisions import DecisionRepository
from storage.executions import ExecutionRepository
from storage.llm_calls import LLMCallRepository
from storage.journal import Journal
from memory.store import MemoryStore
from storage.orders import OrderRepository
from storage.runs import RunRepository
from tools.market_hours import add_market_minutes
from tools.providers.base import MarketDataProvider


log = logging.getLogger(__name__)


class ApprovalError(Exception):
    status_code = 400


class OrderNotFound(ApprovalError):
    status_code = 404


class DecisionConflict(ApprovalError):
    status_code = 409


class InvalidDecision(ApprovalError):
    status_code = 422


class AcknowledgementRequired(InvalidDecision):
    pass


class TradingHalted(ApprovalError):
    status_code = 409


@dataclass(frozen=True)
class Decision:
    action: Literal["approve", "reject", "resize"]
    approver: str
    quantity: int | None = None
    reason: str | None = None
    acknowledge: bool = False


def _utc_now() -> datetime:
    return wall_clock()


def provider_for(name: str, seed: int, source: dict | None = None) -> MarketDataProvider:
    """The market a run was made with, to quote it afresh: rebuilt from the run's recorded market
    source (simulated with its chain files, a files directory, a broker's market data); a run
    without one was made on the simulated market."""
    from service.markets import MarketSourceError, build_market

    if source is None:
        if name != "simulated":
            raise ApprovalError(f"runs on provider {name!r} recorded no market source: they cannot be re-quoted")
        source = {"market": "simulated"}
    try:
        return build_market(source, seed)
    except MarketSourceError as exc:
        raise ApprovalError(f"the market of provider {name!r} cannot be rebuilt to re-quote: {exc}") from None


def configured_market_source() -> dict | None:
    """The configured market (`market:` in config/connections.yaml) as a market source; None when the
    configuration cannot say (`hedgegraph doctor` says why), and the simulated market stands in."""
    from config.connections import ConfigurationError
    from service.markets import MarketSourceError, market_source

    try:
        connections = load_connections()
        return market_source(connections.market, connections=connections)
    except (ConfigurationError, MarketSourceError):
        return None


@dataclass
class ServiceContext:
    db: Database
    clock: Callable[[], datetime] = _utc_now
    account: AccountState = field(default_factory=default_account)
    # Overrides `provider_for` (a backtest quotes only its own historical market).
    provider_factory: Callable[[str, int], MarketDataProvider] | None = None
    memory: Any = None  # memory.store.MemoryStore where runs reflect (None: one on this database)
    # The paper account this context trades and the market its positions are quoted on (a backtest
    # uses its own account on its historical market; the service the user's "paper" on "simulated").
    account_id: str = "paper"
    market: str = "simulated"
    # How to build that market (service.markets): the configured one unless given.
    market_source: dict | None = field(default_factory=configured_market_source)
    _server: Any = None
    _live_broker: Any = None

    @classmethod
    async def open(cls, settings: Settings | None = None, **kwargs) -> "ServiceContext":
        url, server = resolve_url(settings or Settings())
        return cls(db=await connect(url, server), _server=server, **kwargs)

    async def close(self) -> None:
        if self._live_broker is not None:
            await close_broker(self._live_broker)
        await self.db.close()

    def market_for(self, name: str, seed: int, source: dict | None = None) -> MarketDataProvider:
        """The market named `name` (as recorded by a run, with its market source) on this context."""
        if self.provider_factory is not None:
            return self.provider_factory(name, seed)
        return provider_for(name, seed, source)

    def book_market(self, seed: int) -> MarketDataProvider:
        """The market this context's positions are quoted on (marks, settlement, flatten, P&L)."""
        return self.market_for(self.market, seed, self.market_source)

    def broker_for(self, provider: MarketDataProvider):
        """The configured broker (`broker:` in config/connections.yaml; paper by default). A real
        broker is one connection for the whole context, closed with it."""
        connections = load_connections()
        if connections.broker != "paper" and self._live_broker is not None:
            return self._live_broker
        broker = make_broker(self.db, ProviderQuotes(provider, self.clock), self.clock,
                             opening_cash=Decimal(str(self.account.cash)), connections=connections,
                             account_id=self.account_id)
        if connections.broker != "paper":
            self._live_broker = broker
        return broker


async def _deps_for_run(ctx: ServiceContext, run_id: str):
    record = await RunRepository(ctx.db.pool).get(run_id)
    provider = ctx.market_for(record.provider, record.seed, record.market_source)
    return make_deps(ctx.db, record, provider, account=ctx.account,
                     positions=await OrderRepository(ctx.db.pool).open_exposures(),
                     broker=ctx.broker_for(provider), now=ctx.clock, memory=ctx.memory or MemoryStore(ctx.db.pool))


async def order_review(ctx: ServiceContext, order_id: str) -> dict[str, Any]:
    """Everything an approver needs: legs and prices, Greeks impact, margin, Kelly reasoning,
    risk-gate results, the debate transcript, the approval deadline and the history so far, and
    what the broker says the order would do (`broker_preview`)."""
    facts, order, record = await _order_facts(ctx, order_id)
    preview = await broker_preview(ctx, order, record) if order.state in (OrderState.STAGED, OrderState.APPROVED) else None
    return facts | {"broker_preview": jsonable(preview)}


async def order_facts(ctx: ServiceContext, order_id: str) -> dict[str, Any]:
    """The review without the broker's preview (which asks the broker and re-values the book):
    what a decision records as seen, and what an approval policy decides on."""
    return (await _order_facts(ctx, order_id))[0]


async def _order_facts(ctx: ServiceContext, order_id: str):
    repo = OrderRepository(ctx.db.pool)
    order = await repo.get(order_id)
    if order is None:
        raise OrderNotFound(f"no order {order_id}")
    decisions = DecisionRepository(ctx.db.pool)
    risk = [d for d in await decisions.risk_decisions(order.run_id) if d["ticker"] == order.ticker]
    debate = next((d for d in await decisions.verdicts(order.run_id) if d["ticker"] == order.ticker), None)
    p, m = order.proposal, order.proposal["multiplier"] * order.quantity
    record = await RunRepository(ctx.db.pool).get(order.run_id)
    ttl = record.config.get("approval_ttl_market_minutes", 30)
    approval = await ApprovalRepository(ctx.db.pool).get(order_id)
    execution = await ExecutionRepository(ctx.db.pool).row(order_id)
    facts = jsonable(order_summary(order) | {
        "rationale": p.get("rationale"),
        "natural_price": p.get("natural_debit"),
        "underlying_price": p.get("underlying_price"),
        "greeks_impact": {k: float(p[k]) * m for k in ("delta", "gamma", "vega", "theta")},
        "margin_what_if": {"initial_margin_change": str(Decimal(p["max_loss"]) * order.quantity),
                           "basis": "defined-risk structure: margin is its maximum loss"},
        "risk": risk,
        "debate": debate,
        "expires_at": add_market_minutes(order.created_at, ttl).isoformat(),
        "decision": approval,
        "execution": execution,
        "history": (history := await repo.history(order_id)),
        "terminal_reason": terminal_reason(order.state, history),
        "closes_position_id": p.get("closes_position_id"),  # set on exits: the position they close
    })
    return facts, order, record


async def broker_preview(ctx: ServiceContext, order, record) -> dict[str, Any]:
    """What the configured broker says this order would do — its margin change, buying-power
    effect and commission (`what_if`: IBKR's whatIfOrder, tastytrade's dry run, the paper broker's
    own rules) — and the book's Greeks before and after it. Nothing is placed. When the broker
    cannot answer, the approver is told why instead."""
    try:
        provider = ctx.market_for(record.provider, record.seed, record.market_source)
    except ApprovalError as exc:
        return {"available": False, "reason": str(exc)}
    broker = ctx.broker_for(provider)
    try:
        preview = await broker.what_if(order)
        quotes = ProviderQuotes(provider, ctx.clock)
        spy = quotes.ticker_data("SPY")
        data = quotes.ticker_data(order.ticker)
        betas = {order.ticker: data.beta} if data is not None else {}
        positions = await broker.positions()
        spx = spy.spot * 10.0  # SPX taken as 10 x SPY, as the order manager's journal does
        before = portfolio_greeks(positions, quotes, spx_price=spx, betas=betas)
        after = portfolio_greeks(holdings_after(positions, order), quotes, spx_price=spx, betas=betas)
    except (BrokerError, OSError, ValueError) as exc:
        return {"available": False, "broker": broker.name, "reason": f"{type(exc).__name__}: {exc}"}
    return {"available": True, "broker": broker.name, "method": preview.method,
            "initial_margin_change": preview.initial_margin_change,
            "maintenance_margin_change": preview.maintenance_margin_change,
            "margin_before": preview.margin_before, "margin_after": preview.margin_after,
            "buying_power_change": preview.buying_power_change, "commission": preview.commission,
            "cash_change": preview.cash_change, "warnings": list(preview.warnings),
            "book_greeks_before": before.to_json(), "book_greeks_after": after.to_json()}


async def decide(ctx: ServiceContext, order_id: str, decision: Decision, *, resume: bool = True) -> dict[str, Any]:
    """Record one decision on a staged order, then continue its run (re-check and transmit).
    Returns the order's review after it, and announces the decision (`notify.notify_decision`).

    `resume=False` records only (the run continues on the next `recover_pending`)."""
    _check(decision)
    review = await order_facts(ctx, order_id)  # 404 for unknown orders; and what the approver saw
    note = await _record_and_continue(ctx, order_id, decision, review, resume)
    review = await order_review(ctx, order_id)
    notify.notify_decision(ctx.db, review)
    return review | ({"note": note} if note else {})


async def decide_by_policy(ctx: ServiceContext, order_id: str,
                           policy: Callable[[dict[str, Any]], Decision]) -> Decision | None:
    """An approval policy standing in for the human (a backtest): `policy(facts)` decides on the
    facts a human is shown (`order_facts`, read once), and the decision is recorded and the order
    re-checked and transmitted exactly as `decide` does. Finishing the run once its last order is
    decided (its graph's execution report and reflection) is left to the caller (`finish_run`),
    who may do other work meanwhile. The review is not rebuilt afterwards and nothing is
    announced: nobody waits on a policy's decision. None when the order is no longer STAGED."""
    review = await order_facts(ctx, order_id)
    if review["state"] != OrderState.STAGED:
        return None
    decision = policy(review)
    _check(decision)
    await _record_and_continue(ctx, order_id, decision, review, True, finish=False)
    return decision


async def finish_run(ctx: ServiceContext, run_id: str) -> str | None:
    """Let a run whose orders are all decided finish (its graph reports the executions and
    reflects; a graph-less run is marked completed); nothing while an order is undecided. Returns
    a note when that is left for later (`recover_pending` finishes it)."""
    return await _finish_if_decided(ctx, run_id)


def _check(decision: Decision) -> None:
    if decision.action not in ("approve", "reject", "resize"):
        raise InvalidDecision(f"unknown action {decision.action!r}")
    if not decision.approver:
        raise InvalidDecision("a decision needs an approver")
    if decision.action == "reject" and not (decision.reason or "").strip():
        raise InvalidDecision("a rejection needs a reason")


async def _record_and_continue(ctx: ServiceContext, order_id: str, decision: Decision, review: dict[str, Any],
                               resume: bool, *, finish: bool = True) -> str | None:
    """Record `decision` on the order `review` describes (see the module docstring), then, with
    `resume`, re-check and transmit it and (with `finish`) let its run finish once every order is
    decided. Returns a note when that is left for later."""
    if decision.action != "reject" and (await RiskControls(ctx.db.pool).state()).halted:
        raise TradingHalted("trading is halted: nothing can be approved until it is resumed")

    def judge(row) -> ApprovalEntry:  # under the order's row lock
        if row["state"] != OrderState.STAGED:
            raise DecisionConflict(f"order {order_id} is {row['state']}, not STAGED: it was already decided")
        if datetime.fromisoformat(review["expires_at"]) <= ctx.clock():
            raise DecisionConflict(f"order {order_id} expired at {review['expires_at']}")
        quantity = row["quantity"]
        if decision.action == "resize":
            if decision.quantity is None or not 1 <= decision.quantity < quantity:
                raise InvalidDecision(f"resize needs a quantity from 1 to {quantity - 1}, got {decision.quantity}")
            quantity = decision.quantity
        needs_ack = quantity > 10
        if decision.action != "reject" and needs_ack and not decision.acknowledge:
            raise AcknowledgementRequired(f"{quantity} contracts: more than 10 needs acknowledge=true")
        return ApprovalEntry(
            action=decision.action, approver=decision.approver, original_quantity=row["quantity"],
            quantity=quantity if decision.action != "reject" else None, reason=decision.reason,
            acknowledged=decision.acknowledge, requires_acknowledgement=needs_ack,
            seen={"limit_price": review["limit_price"], "quantity": row["quantity"], "legs": review["legs"],
                  "risk": review["risk"], "expires_at": review["expires_at"]},
            to_state=OrderState.REJECTED if decision.action == "reject" else OrderState.APPROVED,
            transition_reason=decision.reason or (
                f"resized {row['quantity']} -> {quantity}" if decision.action == "resize" else None))

    row, _ = await ApprovalRepository(ctx.db.pool).decide(order_id, judge)
    return await _transmit_and_continue(ctx, row["run_id"], order_id, finish=finish) if resume else None


async def _transmit_and_continue(ctx: ServiceContext, run_id: str, order_id: str, *, finish: bool = True) -> str | None:
    """Send a just-approved order now (the order manager re-checks it, or holds it while the market
    is closed or trading is halted), then, once no order of its run is left undecided, let the run
    finish: its graph reports the executions and reflects; a graph-less run is marked completed.
    The decision stands whatever happens here; `recover_pending` continues anything left."""
    deps = await _deps_for_run(ctx, run_id)
    try:
        await (await order_manager(deps)).transmit(order_id)
    except Exception as exc:  # the decision is recorded; recovery owns the order from here
        log.warning("order %s approved; transmission will be retried: %s", order_id, exc)
        return f"decision recorded; transmission will be retried: {type(exc).__name__}: {exc}"
    return await _finish_if_decided(ctx, run_id, deps) if finish else None


async def _finish_if_decided(ctx: ServiceContext, run_id: str, deps=None) -> str | None:
    if await ExecutionRepository(ctx.db.pool).has_undecided(run_id):
        return None  # the run keeps waiting for its other orders
    if not await RunRepository(ctx.db.pool).has_graph(run_id):
        await RunRepository(ctx.db.pool).mark_finished(run_id, "completed")
        return None
    try:
        await resume_run(ctx.db, run_id, deps or await _deps_for_run(ctx, run_id), {"decided": True})
    except (RunBusy, RunFailed) as exc:
        log.warning("run %s: every order decided, but the run could not finish now: %s", run_id, exc)
        return f"decision recorded; the run finishes later: {exc}"
    return None


async def stage_flatten(ctx: ServiceContext, actor: str, *, with_protection: bool = False) -> list[dict[str, Any]]:
    """Buy-to-close orders for every short option in the paper account, staged for approval like
    any other order (a graph-less run named flatten-<time> holds them)."""
    seed = defaults().seed
    provider = ctx.book_market(seed)
    broker = ctx.broker_for(provider)
    closing = flatten_orders(await broker.positions(), ProviderQuotes(provider, ctx.clock),
                             with_protection=with_protection)
    if not closing:
        return []
    now = ctx.clock()
    run_id = f"flatten-{now.astimezone(NEW_YORK):%Y%m%d-%H%M%S}"
    runs = RunRepository(ctx.db.pool)
    await runs.create_if_absent(run_id=run_id, slot_key=f"flatten|{now.isoformat()}", watchlist="flatten", as_of=now,
                                tickers=sorted({c.ticker for c in closing}), seed=seed, provider=provider.name,
                                config=defaults().decision.model_dump(mode="json"), market_source=source_of(provider))
    await runs.set_status(run_id, "awaiting_approval")
    repo, staged = OrderRepository(ctx.db.pool), []
    for close in closing:
        trade = close.to_sized_trade(now)
        key = idempotency_key(run_id, trade.proposal)
        record, _ = await repo.stage(order_id=order_id_for(key), idempotency_key=key, run_id=run_id, trade=trade,
                                     sector="unknown", limit_price=close.limit_price,
                                     requires_acknowledgement=close.quantity > 10, actor=actor, created_at=now)
        staged.append(order_summary(record))
    return staged


async def expire_due(ctx: ServiceContext) -> list[str]:
    """Resume every run with staged orders: the graph expires the overdue ones and moves on."""
    run_ids = await RunRepository(ctx.db.pool).ids_with_status("awaiting_approval")
    for run_id in run_ids:
        await resume_run(ctx.db, run_id, await _deps_for_run(ctx, run_id), {"tick": ctx.clock().isoformat()})
    return run_ids


async def recover_pending(ctx: ServiceContext) -> list[str]:
    """Everything a crash, a halt or a closed market left in flight goes on now, through the order
    manager: APPROVED orders are re-checked and sent (once: the broker is idempotent per order id),
    SUBMITTED / PARTIALLY_FILLED ones are polled and walked or cancelled, unjournaled fills are
    journaled; then every run whose orders are all decided is finished. Returns the runs touched."""
    in_flight = await ExecutionRepository(ctx.db.pool).in_flight()
    unjournaled = await Journal(ctx.db.pool).unjournaled_fills()
    order_runs = {f.order_id: (await OrderRepository(ctx.db.pool).get(f.order_id)).run_id for f in unjournaled}
    touched = sorted({r["run_id"] for r in in_flight} | set(order_runs.values()))
    for run_id in touched:
        # Each run's orders through a manager on that run's market (its quotes re-check them).
        await (await order_manager(await _deps_for_run(ctx, run_id))).recover(run_id)
    # Runs left awaiting approval although nothing is undecided (or whose graph already ended).
    for run_id in await RunRepository(ctx.db.pool).ids_with_status("awaiting_approval"):
        if not await ExecutionRepository(ctx.db.pool).has_undecided(run_id):
            await _finish_if_decided(ctx, run_id)
            if run_id not in touched:
                touched.append(run_id)
    return touched


async def halt(ctx: ServiceContext, actor: str, reason: str) -> dict[str, Any]:
    if not (reason or "").strip():
        raise InvalidDecision("halting needs a reason")
    state = jsonable(asdict(await RiskControls(ctx.db.pool).set_halted(True, actor=actor, reason=reason)))
    notify.notify_halt(ctx.db, state)
    return state


async def resume_trading(ctx: ServiceContext, actor: str) -> dict[str, Any]:
    return jsonable(asdict(await RiskControls(ctx.db.pool).set_halted(False, actor=actor, reason=None)))


async def risk_status(ctx: ServiceContext) -> dict[str, Any]:
    state = jsonable(asdict(await RiskControls(ctx.db.pool).state()))
    counts = await OrderRepository(ctx.db.pool).count_by_state()
    return state | {"orders_by_state": counts}


async def health(ctx: ServiceContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        await ctx.db.ping()
        out["database"] = {"ok": True}
    except Exception as exc:  # a health check reports, it does not raise
        out["database"] = {"ok": False, "error": type(exc).__name__}
    with contextlib.suppress(Exception):
        last = await schedule_slots.claims(ctx.db.pool)
        at = last["last_claimed_at"]
        out["scheduler"] = {"ok": True, "last_slot_claimed_at": at.isoformat() if at else None, "slots": last["slots"]}
    out.setdefault("scheduler", {"ok": False})
    out["broker"] = {"ok": out["database"]["ok"], "name": "paper"}  # the paper broker lives in the database
    out["ok"] = out["database"]["ok"]
    return out


async def metrics_text(ctx: ServiceContext) -> str:
    """Prometheus text exposition of runs, orders, LLM usage and the kill switch."""
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{v}"' for k, v in labels.items())
            lines.append(f"{name}{{{label}}} {value}" if label else f"{name} {value}")

    pool = ctx.db.pool
    runs = RunRepository(pool)
    metric("hedgegraph_runs", "gauge", "Runs by status.",
           [({"status": status}, n) for status, n in (await runs.count_by_status()).items()])
    metric("hedgegraph_orders", "gauge", "Orders by state.",
           [({"state": state}, n) for state, n in (await OrderRepository(pool).count_by_state()).items()])
    halted = (await RiskControls(pool).state()).halted
    metric("hedgegraph_trading_halted", "gauge", "1 while the kill switch is on.", [({}, 1 if halted else 0)])
    metric("hedgegraph_node_seconds_total", "counter", "Wall time spent in each graph node.",
           [({"node": node}, seconds) for node, seconds in (await runs.node_seconds()).items()])
    with contextlib.suppress(Exception):  # the LLM table exists once its migration ran
        llm = await LLMCallRepository(pool).totals()
        metric("hedgegraph_llm_calls_total", "counter", "LLM calls made.", [({}, llm["calls"])])
        metric("hedgegraph_llm_tokens_total", "counter", "LLM tokens.",
               [({"direction": "in"}, llm["tokens_in"]), ({"direction": "out"}, llm["tokens_out"])])
    return "\n".join(lines) + "\n"
