"""The decision graph's state: what each node reads and writes, with reducers where nodes fan in.

Analysts run in parallel (one task per ticker and analyst), so `signals` and `node_timings`
accumulate with `operator.add`; every other key is written by exactly one node.
"""
from __future__ import annotations

import operator
from datetime import datetime
from typing import Annotated

from pydantic import Field
from typing_extensions import TypedDict  # pydantic builds schemas (Studio) only from this one on Python < 3.12

from domain.decision import (
    AccountState,
    Execution,
    MarketContext,
    AnalystName,
    Candidate,
    Frozen,
    Position,
    Regime,
    RiskDecision,
    Signal,
    SizedTrade,
    TradeProposal,
    Verdict,
)
from domain.orders import Order


class RunInfo(Frozen):
    """Who this run is: its schedule slot and the inputs that make it reproducible."""

    run_id: str
    slot_key: str
    watchlist: str
    as_of: datetime
    tickers: list[str]
    seed: int
    provider: str
    mode: str = "live"  # "sandbox" for replays and forks: nothing is staged for real


class NodeTiming(Frozen):
    node: str
    ticker: str | None
    started_at: datetime
    duration_ms: float


class DecisionState(TypedDict, total=False):
    run: RunInfo
    context: MarketContext
    signals: Annotated[list[Signal], operator.add]
    candidates: list[Candidate]
    verdicts: list[Verdict]
    pre_trade: list[RiskDecision]
    proposals: list[TradeProposal]
    rejected_proposals: dict[str, str]  # ticker -> why no structure was proposed
    sized: list[SizedTrade]
    post_trade: list[RiskDecision]
    staged: list[Order]  # the orders this run staged (sandbox runs: never stored)
    awaiting: list[str]  # staged order ids still waiting for a human decision
    executions: list[Execution]
    node_timings: Annotated[list[NodeTiming], operator.add]


class AnalystTask(TypedDict):
    """The input of one analyst task, sent per (ticker, analyst) by the fan-out."""

    run: RunInfo
    context: MarketContext
    ticker: str
    analyst: AnalystName
