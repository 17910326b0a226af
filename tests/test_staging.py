"""Staging is idempotent, and orders move only through the state machine (real Postgres)."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.staging import idempotency_key, opening_limit_price, order_id_for
from domain.order_state import IllegalTransition, OrderState
from domain.decision import OptionLeg, SizedTrade, TradeProposal
from storage.orders import OrderRepository, UnknownOrder
from storage.runs import RunRepository


def leg(strike: str, right: str, side: str, expiry=date(2026, 12, 18)) -> OptionLeg:
    return OptionLeg(expiry=expiry, strike=Decimal(strike), right=right, side=side,
                     bid=Decimal("1.00"), ask=Decimal("1.10"), mid=Decimal("1.05"))


def proposal(legs=None, net_debit="-0.857", ticker="SPY") -> TradeProposal:
    return TradeProposal(
        ticker=ticker, structure="bull_put_spread",
        legs=legs or [leg("580", "P", "sell"), leg("575", "P", "buy")],
        underlying_price=600.0, net_debit=Decimal(net_debit), natural_debit=Decimal("-0.70"),
        max_profit=Decimal("85.70"), max_loss=Decimal("414.30"), breakevens=[579.14],
        probability_of_profit=0.8, delta=0.1, gamma=-0.001, vega=-0.05, theta=0.02, dte=28,
    )


def sized(p: TradeProposal, contracts: int = 3) -> SizedTrade:
    return SizedTrade(proposal=p, contracts=contracts, kelly_fraction=0.1, applied_fraction=0.01,
                      win_rate=0.8, payoff_ratio=0.2, capital_at_risk=p.max_loss * contracts)


def test_key_ignores_leg_order_and_depends_on_what_is_traded():
    a = proposal()
    b = proposal(legs=list(reversed(a.legs)))
    assert idempotency_key("run-1", a) == idempotency_key("run-1", b)
    assert idempotency_key("run-1", a) != idempotency_key("run-2", a)
    assert idempotency_key("run-1", a) != idempotency_key("run-1", proposal(legs=[leg("580", "P", "sell"), leg("570", "P", "buy")]))
    assert idempotency_key("run-1", a) != idempotency_key("run-1", proposal(ticker="QQQ"))
    # The price is not part of what is traded: a re-run with a moved quote is the same order.
    assert idempotency_key("run-1", a) == idempotency_key("run-1", proposal(net_debit="-0.90"))
    # 580 and 580.00 are the same strike.
    assert idempotency_key("run-1", proposal(legs=[leg("580.00", "P", "sell"), leg("575", "P", "buy")])) == idempotency_key("run-1", a)


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=Decimal("-50"), max_value=Decimal("50"), places=4, allow_nan=False))
def test_opening_limit_is_the_mid_rounded_in_our_favour(mid):
    p = proposal(net_debit=str(mid))
    limit = opening_limit_price(p)
    assert limit == limit.quantize(Decimal("0.01"))
    assert limit <= mid and mid - limit < Decimal("0.01")  # never pay more, never ask for less


async def _run_row(db, run_id="run-1"):
    await RunRepository(db.pool).create_if_absent(
        run_id=run_id, slot_key="core|2026-11-20|15:30", watchlist="core",
        as_of=datetime(2026, 11, 20, 20, 30, tzinfo=timezone.utc), tickers=["SPY"], seed=7,
        provider="simulated", config={})


async def _stage(repo, p, run_id="run-1"):
    key = idempotency_key(run_id, p)
    return await repo.stage(order_id=order_id_for(key), idempotency_key=key, run_id=run_id, trade=sized(p),
                            limit_price=opening_limit_price(p), requires_acknowledgement=False, sector="index")


async def test_staging_the_same_trade_twice_leaves_one_order(db):
    await _run_row(db)
    repo = OrderRepository(db.pool)
    first, created = await _stage(repo, proposal())
    again, created_again = await _stage(repo, proposal(legs=list(reversed(proposal().legs))))
    assert created and not created_again and again.order_id == first.order_id
    assert first == again == await repo.get(first.order_id)  # the order as stored, created or found
    # concurrently, too
    results = await asyncio.gather(*(_stage(repo, proposal(ticker="QQQ")) for _ in range(5)))
    assert sum(created for _, created in results) == 1
    assert await db.pool.fetchval("SELECT count(*) FROM orders") == 2
    assert first.limit_price == Decimal("-0.86") and first.state == "STAGED"


async def test_orders_move_only_through_the_state_machine(db):
    await _run_row(db)
    repo = OrderRepository(db.pool)
    order, _ = await _stage(repo, proposal())
    with pytest.raises(IllegalTransition):
        await repo.transition(order.order_id, OrderState.SUBMITTED, actor="test")  # not approved
    with pytest.raises(IllegalTransition):
        await repo.transition(order.order_id, OrderState.FILLED, actor="test")
    assert (await repo.get(order.order_id)).state == "STAGED"  # a refused move changes nothing
    await repo.transition(order.order_id, OrderState.REJECTED, actor="approver@example", reason="too wide")
    with pytest.raises(IllegalTransition):
        await repo.transition(order.order_id, OrderState.APPROVED, actor="approver@example")
    history = [(h["from_state"], h["to_state"]) for h in await repo.history(order.order_id)]
    assert history == [(None, "DRAFT"), ("DRAFT", "STAGED"), ("STAGED", "REJECTED")]
    with pytest.raises(UnknownOrder):
        await repo.transition("ord_missing", OrderState.APPROVED, actor="test")


async def test_concurrent_decisions_on_one_order_one_wins(db):
    await _run_row(db)
    repo = OrderRepository(db.pool)
    order, _ = await _stage(repo, proposal())
    results = await asyncio.gather(
        repo.transition(order.order_id, OrderState.APPROVED, actor="a"),
        repo.transition(order.order_id, OrderState.APPROVED, actor="b"),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, IllegalTransition) for r in results) == 1


def test_a_checkpoint_from_before_the_one_order_type_restores_its_staged_orders_as_orders():
    from pydantic import BaseModel

    from domain.orders import Order
    from storage.serde import checkpoint_serializer

    class StagedOrder(BaseModel):  # the graph state's order type before `domain.orders.Order`
        order_id: str
        idempotency_key: str
        run_id: str
        ticker: str
        structure: str
        legs: list[OptionLeg]
        quantity: int
        limit_price: Decimal
        state: str
        requires_acknowledgement: bool = False
        created_at: datetime

    StagedOrder.__module__ = "domain.decision"
    p = proposal()
    old = StagedOrder(order_id="ord_old", idempotency_key="k", run_id="run-1", ticker=p.ticker, structure=p.structure,
                      legs=p.legs, quantity=2, limit_price=opening_limit_price(p), state="STAGED",
                      created_at=datetime(2026, 11, 20, 20, 30, tzinfo=timezone.utc))
    serde = checkpoint_serializer()
    [order] = serde.loads_typed(serde.dumps_typed([old]))
    assert isinstance(order, Order) and order.order_id == "ord_old" and order.quantity == 2
    assert order.legs_key() == sorted((l.expiry, l.strike, l.right, l.side, l.ratio) for l in p.legs)
    assert order.proposal["legs"] == [l.model_dump(mode="json") for l in p.legs]
    assert serde.loads_typed(serde.dumps_typed([order])) == [order]  # today's orders round-trip as they are
