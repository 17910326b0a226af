"""execute_approved: re-check each approved order against a fresh quote and the current book,
then transmit it, record its fills in the journal, and snapshot the account.

Nothing reaches the broker unless the order is APPROVED in Postgres (the broker checks again),
trading is not halted, the fresh mid is within tolerance of the approved limit, and the risk gate
still passes it with everything else now open. A refused order moves to REJECTED with the reasons,
which the approver sees in the response to their decision. Transmission is idempotent per order
id, so a resumed or repeated execution never sends an order twice.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from langgraph.runtime import Runtime

from brokers.base import ComboOrder
from brokers.limit_walk import LimitWalker
from brokers.order_state import OrderState
from brokers.portfolio import portfolio_greeks
from brokers.quote_source import ProviderQuotes
from graph.deps import RunDeps
from graph.schema import SizedTrade, TradeProposal
from graph.state import DecisionState, Execution, MarketContext
from graph.timing import timed
from risk.gate import post_trade
from storage.controls import RiskControls
from storage.journal import AccountSnapshot, Journal, JournalContext
from storage.orders import OrderRecord, OrderRepository


def fresh_combo_prices(order: OrderRecord, quotes) -> tuple[Decimal | None, Decimal | None, list[str]]:
    """The combo's (mid, natural) now, signed like the limit (+ pay, − receive), or Nones with
    the legs that have no quote. Natural: pay the ask on legs we buy, take the bid on legs we sell."""
    combo = ComboOrder.from_record(order)
    mid, natural, missing = Decimal("0"), Decimal("0"), []
    for leg, contract in zip(combo.legs, combo.contracts()):
        quote = quotes(contract)
        if quote is None:
            missing.append(contract.label)
            continue
        mid += leg.sign * leg.ratio * quote.mid
        natural += leg.sign * leg.ratio * (quote.ask if leg.sign > 0 else quote.bid)
    return (None, None, missing) if missing else (mid, natural, [])


def allowed_difference(limit: Decimal, tolerance: float, floor: float) -> Decimal:
    return max(Decimal(str(floor)), abs(limit) * Decimal(str(tolerance)))


def stale_reason(limit: Decimal, fresh_mid: Decimal, tolerance: float, floor: float) -> str | None:
    allowed = allowed_difference(limit, tolerance, floor)
    if abs(fresh_mid - limit) > allowed:
        return (f"limit {limit:+.2f} is stale: the combo's mid is now {fresh_mid:+.2f} "
                f"(allowed difference {allowed:.2f})")
    return None


FLATTEN = "flatten_close"  # brokers.flatten's closing orders


def sized_from_order(order: OrderRecord) -> SizedTrade:
    proposal = TradeProposal.model_validate(order.proposal)
    return SizedTrade.model_validate({**order.sizing, "proposal": proposal, "contracts": order.quantity,
                                      "capital_at_risk": proposal.max_loss * order.quantity})


async def _approver(db, order_id: str) -> str | None:
    return await db.pool.fetchval("SELECT approver FROM approvals WHERE order_id = $1", order_id)


async def _record(db, run_id: str, e: Execution) -> None:
    await db.pool.execute(
        """INSERT INTO executions (order_id, run_id, outcome, reasons, fresh_mid, broker_order_id)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (order_id) DO UPDATE SET outcome = EXCLUDED.outcome, reasons = EXCLUDED.reasons,
               fresh_mid = EXCLUDED.fresh_mid, broker_order_id = EXCLUDED.broker_order_id, at = now()""",
        e.order_id, run_id, e.outcome, e.reasons,
        None if e.fresh_mid is None else Decimal(str(e.fresh_mid)), e.broker_order_id,
    )


async def recheck(deps: RunDeps, context: MarketContext, order: OrderRecord, quotes) -> tuple[list[str], Decimal | None]:
    """Why `order` must not be sent now (empty: it may be), and the fresh combo mid."""
    fresh_mid, _, missing = fresh_combo_prices(order, quotes)
    if missing:
        return [f"no fresh quote for {', '.join(missing)}"], None
    reasons = []
    stale = stale_reason(order.limit_price, fresh_mid, deps.decision.stale_price_tolerance, deps.decision.stale_price_floor)
    if stale:
        reasons.append(stale)
    if order.structure != FLATTEN:  # closing risk is never blocked by the limits it relieves
        positions = await OrderRepository(deps.db.pool).open_exposures(exclude=order.order_id)
        reserved = sum((p.max_loss for p in positions), Decimal("0"))
        account = context.account.model_copy(update={"margin_used": context.account.margin_used + reserved})
        [decision] = post_trade([sized_from_order(order)], account, positions, context.regime, deps.risk_matrix,
                                context.sectors)
        reasons.extend(f"risk: {v.message}" for v in decision.vetoes)
    return reasons, fresh_mid


async def execute_order(deps: RunDeps, context: MarketContext, order_id: str, quotes: ProviderQuotes) -> Execution | None:
    """Re-check and transmit one order if it is APPROVED (None: nothing to do). Idempotent."""
    repo = OrderRepository(deps.db.pool)
    order = await repo.get(order_id)
    if order is None or order.state != OrderState.APPROVED:
        return None  # rejected, expired, or already transmitted by an earlier attempt
    halt = await RiskControls(deps.db.pool).state()
    if halt.halted:
        e = Execution(order_id=order.order_id, outcome="held", reasons=[f"trading halted: {halt.reason}"])
    else:
        reasons, fresh_mid = await recheck(deps, context, order, quotes)
        if reasons:
            await repo.transition(order.order_id, OrderState.REJECTED, actor="recheck", reason="; ".join(reasons))
            e = Execution(order_id=order.order_id, outcome="refused", reasons=reasons,
                          fresh_mid=None if fresh_mid is None else float(fresh_mid))
        else:
            spx = _spx_price(quotes)
            pre = portfolio_greeks(await deps.broker.positions(), quotes, spx_price=spx, betas=_betas(quotes, order))
            broker_order_id = await deps.broker.place(ComboOrder.from_record(order))
            fills = await walk_limit(deps, order, quotes)
            await _journal(deps, context, order, fills, quotes, pre, spx)
            e = Execution(order_id=order.order_id, outcome="transmitted", fresh_mid=float(fresh_mid),
                          broker_order_id=broker_order_id, filled_quantity=sum(f.quantity for f in fills))
    await _record(deps.db, order.run_id, e)
    return e


@timed("execute_approved")
async def execute_approved(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run = runtime.context, state["run"]
    if run.mode != "live" or deps.broker is None:
        return {"executions": []}
    quotes = ProviderQuotes(deps.provider, deps.now)
    executions = []
    for staged in state.get("staged", []):
        e = await execute_order(deps, state["context"], staged.order_id, quotes)
        if e is not None:
            executions.append(e)
    return {"executions": executions}


# The limit walk: this many steps from the approved limit toward the natural price.
WALK_STEPS = 4
WALK_MINUTES = 5


async def walk_limit(deps: RunDeps, order: OrderRecord, quotes) -> list:
    """Work the order from its limit toward the natural price, never past the approved limit plus
    the re-check tolerance (the approver did not approve any price), then cancel what is unfilled.

    The paper broker fills against the quote in force, so its walk is stepped at once, level by
    level; a live broker would step the same schedule on the clock.
    """
    _, natural, _ = fresh_combo_prices(order, quotes)
    worst = order.limit_price + allowed_difference(order.limit_price, deps.decision.stale_price_tolerance,
                                                   deps.decision.stale_price_floor)
    target = min(natural, worst) if natural is not None else order.limit_price
    start = deps.now()
    deadline = start + timedelta(minutes=WALK_MINUTES)
    walker = LimitWalker.from_quotes(deps.broker, order.order_id, mid=order.limit_price, natural=target,
                                     steps=WALK_STEPS, start=start, deadline=deadline)
    fills = []
    for at, _ in walker.schedule:
        step = await walker.step(at)
        fills += [f for f in await deps.broker.process() if f.order_id == order.order_id]
        if step.outcome != "working" or (await deps.broker.status(order.order_id)).state == OrderState.FILLED:
            break
    else:
        await walker.step(deadline)  # unfilled at the end of the walk: cancel the rest
    return fills


def _spx_price(quotes: ProviderQuotes) -> float:
    # The providers carry SPY, not the index: SPX is taken as 10 × SPY, which is what SPY tracks
    # (within its dividend drift, well under 1%) — close enough to beta-weight a book's delta.
    # Read through the quote source, so every order of one execution shares one SPY fetch.
    return quotes.ticker_data("SPY").spot * 10.0


def _betas(quotes: ProviderQuotes, order: OrderRecord) -> dict[str, float]:
    data = quotes.ticker_data(order.ticker)
    return {order.ticker: data.beta} if data is not None else {}


async def _journal(deps: RunDeps, ctx: MarketContext, order: OrderRecord, fills, quotes, pre, spx: float) -> None:
    """Journal each fill with the market context and the book's Greeks before and after."""
    if not fills:
        return
    data = quotes.ticker_data(order.ticker)
    post = portfolio_greeks(await deps.broker.positions(), quotes, spx_price=spx, betas=_betas(quotes, order))
    journal = Journal(deps.db.pool)
    approver = await _approver(deps.db, order.order_id)
    proposal = order.proposal
    for fill in fills:
        await journal.record_fill(fill, JournalContext(
            approver=approver, rationale=proposal.get("rationale", ""), vix=ctx.regime.vix, regime=ctx.regime.name,
            underlying_price=Decimal(str(round(data.spot, 4))) if data is not None else None,
            spx_price=Decimal(str(round(spx, 2))), pre_greeks=pre, post_greeks=post, run_id=order.run_id,
        ), broker=deps.broker.name)
    account = await deps.broker.account()
    await journal.record_snapshot(AccountSnapshot.build(
        account, post, broker=deps.broker.name, vix=ctx.regime.vix, spx_price=Decimal(str(round(spx, 2))),
        regime=ctx.regime.name))
