"""load_context: the account, the book and the market regime as of the run's time.

The market snapshot is fetched from the provider once and recorded; a resumed run (or a replay)
uses the recording, never a fresh fetch, because a provider asked later answers with a later market.
"""
from __future__ import annotations

import asyncio

from langgraph.runtime import Runtime

from agents.social_feed import with_social_sources
from graph.deps import RunDeps
from domain.decision import ClosedOutcome
from graph.state import DecisionState, MarketContext
from graph.timing import timed
from risk.regime import regime_of
from storage.controls import RiskControls
from storage.book import BookStore
from storage.runs import RunRepository


@timed("load_context")
async def load_context(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run = runtime.context, state["run"]
    runs = RunRepository(deps.db.pool)
    recorded = await runs.load_snapshot(run.run_id)
    if recorded is not None:
        snapshot, digest = recorded
    else:
        snapshot = await asyncio.to_thread(deps.provider.snapshot, run.tickers, run.as_of)
        snapshot = await with_social_sources(snapshot, deps.db, provider=deps.provider)  # no-op unless configured
        digest = await runs.record_snapshot(run.run_id, snapshot)
    deps.market.remember(run.run_id, snapshot)

    regime = regime_of(snapshot, deps.risk_matrix)
    halt = await RiskControls(deps.db.pool).state()
    account = deps.account.model_copy(update={"halted": halt.halted, "halt_reason": halt.reason})
    quality = {t: list(d.data_quality) for t, d in snapshot.tickers.items() if d.data_quality}
    for ticker in run.tickers:
        if ticker not in snapshot.tickers:
            quality[ticker] = [f"provider {snapshot.provider} has no data for {ticker}"]
    return {
        "context": MarketContext(
            regime=regime, account=account, positions=deps.positions,
            sectors={t: d.sector for t, d in snapshot.tickers.items()},
            snapshot_sha256=digest, data_quality=quality,
            closed_outcomes=[ClosedOutcome(**row) for row in await BookStore(deps.db.pool, getattr(deps.broker, "account_id", "paper")).closed_outcomes(run.as_of)],
        )
    }
