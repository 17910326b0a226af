"""The decision graph end to end on the embedded Postgres and the simulated market.

Covers: a full run; the same slot twice adds nothing; a run failing mid-way resumes from its
checkpoint and stages each order exactly once; re-executing the staging node (a crash after the
orders were written but before the checkpoint) adds nothing; two processes on one run.
"""
from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from agents.debate import DeterministicDebater
from graph.graph import build_graph
from graph.runner import RunBusy, RunFailed, RunRequest, execute_run
from service.operations import default_account
from storage.orders import OrderRepository
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
TICKERS = ["SPY", "QQQ", "IWM", "AAPL", "MSFT", "NVDA", "AMZN", "TSLA", "JPM", "XLE"]


def request(**overrides) -> RunRequest:
    values = dict(watchlist="core", tickers=TICKERS, as_of=AS_OF, seed=7, provider="simulated")
    values.update(overrides)
    return RunRequest(**values)


class CountingProvider:
    """The simulated market, counting how often the run asks it (it must ask once per run)."""

    def __init__(self, seed=7):
        self.inner = SimulatedMarket(seed=seed)
        self.name = self.inner.name
        self.calls = 0

    def snapshot(self, tickers, as_of):
        self.calls += 1
        return self.inner.snapshot(tickers, as_of)


class DebaterThatFailsOnce(DeterministicDebater):
    """An LLM endpoint that drops the first call: the run fails in the debate node."""

    def __init__(self):
        self.failed = False

    async def debate(self, *args, **kwargs):
        if not self.failed:
            self.failed = True
            raise ConnectionError("debate endpoint went away")
        return await super().debate(*args, **kwargs)


async def count(db, sql, *args) -> int:
    return await db.pool.fetchval(sql, *args)


async def test_full_run_stages_orders_and_checkpoints(db):
    provider = CountingProvider()
    outcome = await execute_run(db, request(), provider, account=default_account())
    run_id = outcome.run.run_id
    assert outcome.executed and not outcome.resumed
    assert outcome.run.status == "awaiting_approval"  # it staged orders: it waits for their decisions
    assert provider.calls == 1
    assert await count(db, "SELECT count(*) FROM signals WHERE run_id = $1", run_id) == 4 * len(TICKERS)
    assert await count(db, "SELECT count(*) FROM checkpoints WHERE thread_id = $1", run_id) > 5
    assert await count(db, "SELECT count(*) FROM market_snapshots WHERE run_id = $1", run_id) == 1
    state = outcome.state
    assert {s.source for s in state["signals"]} == {"vol_surface", "flow", "technical", "social"}
    assert len(state["verdicts"]) == len(state["candidates"])
    assert await count(db, "SELECT count(*) FROM debates WHERE run_id = $1", run_id) == len(state["verdicts"])
    assert outcome.orders, "the default market on this date should stage at least one order"
    for order in outcome.orders:
        assert order.state == "STAGED" and order.quantity >= 1
        history = await OrderRepository(db.pool).history(order.order_id)
        assert [h["to_state"] for h in history] == ["DRAFT", "STAGED"]
    # every staged order passed both gates
    approved_pre = {d.ticker for d in state["pre_trade"] if d.approved}
    approved_post = {d.ticker for d in state["post_trade"] if d.approved}
    assert {o.ticker for o in outcome.orders} <= approved_pre & approved_post
    timings = await db.pool.fetch("SELECT DISTINCT node FROM node_timings WHERE run_id = $1", run_id)
    assert {"load_context", "vol_surface", "debate", "stage_orders"} <= {r["node"] for r in timings}


async def test_running_the_same_slot_twice_adds_nothing(db):
    first = await execute_run(db, request(), CountingProvider(), account=default_account())
    provider = CountingProvider()
    second = await execute_run(db, request(), provider, account=default_account())
    assert not second.executed and second.run.run_id == first.run.run_id
    assert provider.calls == 0
    assert [o.order_id for o in second.orders] == [o.order_id for o in first.orders]
    assert await count(db, "SELECT count(*) FROM orders") == len(first.orders)
    assert await count(db, "SELECT attempts FROM runs WHERE run_id = $1", first.run.run_id) == 1


async def test_a_failed_run_resumes_from_its_checkpoint_and_stages_once(db):
    provider = CountingProvider()
    with pytest.raises(RunFailed, match="debate endpoint went away"):
        await execute_run(db, request(), provider, debater=DebaterThatFailsOnce(),
                          account=default_account())
    run_id = request().run_id
    assert await count(db, "SELECT count(*) FROM runs WHERE run_id = $1 AND status = 'failed'", run_id) == 1
    assert await count(db, "SELECT count(*) FROM orders") == 0
    signals_before = await count(db, "SELECT count(*) FROM signals WHERE run_id = $1", run_id)
    assert signals_before == 4 * len(TICKERS)  # the analysts' superstep was checkpointed

    resumed = await execute_run(db, request(), provider, account=default_account())
    assert resumed.executed and resumed.resumed and resumed.run.status == "awaiting_approval"
    assert provider.calls == 1  # the snapshot came from the recording, not a second fetch
    assert resumed.run.attempts == 2
    keys = [o.idempotency_key for o in resumed.orders]
    assert len(keys) == len(set(keys)) == await count(db, "SELECT count(*) FROM orders")

    # The same run done in one go stages exactly the same orders.
    fresh = await execute_run(db, request(seed=7, watchlist="again"), CountingProvider(), account=default_account())
    assert sorted((o.ticker, o.structure, o.quantity, o.limit_price) for o in fresh.orders) == \
        sorted((o.ticker, o.structure, o.quantity, o.limit_price) for o in resumed.orders)


async def test_re_executing_stage_orders_adds_nothing(db):
    outcome = await execute_run(db, request(), CountingProvider(), account=default_account())
    assert outcome.orders
    app = build_graph().compile(checkpointer=db.checkpointer)
    thread = {"configurable": {"thread_id": outcome.run.run_id}}
    before_stage = None
    async for snapshot in app.aget_state_history(thread):
        if snapshot.next == ("stage_orders",):
            before_stage = snapshot
            break
    assert before_stage is not None
    # Re-run staging from the checkpoint before it, as after a crash between the order insert and
    # the checkpoint write: the orders are written again, and the unique key absorbs them.
    from graph.deps import MarketCache, RunDeps
    from config.settings import DecisionConfig
    from risk.limits import load_risk_matrix

    deps = RunDeps(db=db, provider=CountingProvider(), debater=DeterministicDebater(), decision=DecisionConfig(),
                   risk_matrix=load_risk_matrix(), account=default_account(), positions=[],
                   market=MarketCache(db), clock=lambda: AS_OF)
    await app.ainvoke(None, before_stage.config, context=deps)
    assert await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)
    assert await count(db, "SELECT count(*) FROM order_state_history") == 2 * len(outcome.orders)


async def test_two_writers_on_one_run_execute_it_once(db):
    results = await asyncio.gather(
        execute_run(db, request(), CountingProvider(), account=default_account()),
        execute_run(db, request(), CountingProvider(), account=default_account()),
        return_exceptions=True,
    )
    executed = [r for r in results if not isinstance(r, BaseException) and r.executed]
    assert len(executed) == 1
    for r in results:
        assert not isinstance(r, BaseException) or isinstance(r, RunBusy)
    assert await count(db, "SELECT count(*) FROM orders") == len(executed[0].orders)


def test_run_ids_are_stable_per_slot():
    a, b = request(), request()
    assert a.run_id == b.run_id and a.slot_key == "core|2026-11-20|15:30"
    assert request(seed=8).run_id != a.run_id
    assert request(as_of=datetime(2026, 11, 20, 12, 0, tzinfo=NEW_YORK)).run_id != a.run_id
    with pytest.raises(ValueError):
        request(as_of=datetime(2026, 11, 20, 15, 30))
    with pytest.raises(ValueError):
        request(tickers=[])


class ProviderThatLosesTheDatabase(CountingProvider):
    """The database drops every connection while the first snapshot is being fetched."""

    def __init__(self, url):
        super().__init__()
        self.url = url

    def snapshot(self, tickers, as_of):
        import psycopg

        snapshot = super().snapshot(tickers, as_of)
        if self.calls == 1:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return snapshot


async def test_a_database_that_goes_away_mid_run_fails_clearly_and_loses_nothing(db):
    provider = ProviderThatLosesTheDatabase(db.url)
    with pytest.raises(RunFailed) as info:
        await execute_run(db, request(), provider, account=default_account())
    assert "connection" in str(info.value).lower() or "terminat" in str(info.value).lower()
    # The database is back: the same slot runs again, from its last good checkpoint, once.
    outcome = await execute_run(db, request(), provider, account=default_account())
    assert outcome.run.status == "awaiting_approval" and outcome.orders
    assert await count(db, "SELECT count(*) FROM market_snapshots") == 1
    assert await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)
