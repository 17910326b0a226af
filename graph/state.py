"""The decision graph's state: what each node reads and writes, with reducers where nodes fan in.

Analysts run in parallel (one task per ticker and analyst), so `signals` and `node_timings`
accumulate with `operator.add`; every other key is written by exactly one node.
"""
from __future__ import annotations

import operator
from typing import Annotated

from typing_extensions import TypedDict  # pydantic builds schemas (Studio) only from this one on Python < 3.12

from domain.decision import (
    AccountState,
    Execution,
    MarketContext,
    NodeTiming,
    AnalystName,
    Candidate,
    Position,
    Regime,
    RiskDecision,
    RunInfo,
    Signal,
    SizedTrade,
    TradeProposal,
    Verdict,
)
from domain.orders import Order


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
    """The input of one analyst task, sent per (ticker, analyst) by the fan-out. Only what an
    analyst reads: every task is stored with the run's checkpoints (4 x N per run), so the whole
    MarketContext (account, book, Kelly journal) in each made them grow with the book's history."""

    run: RunInfo
    ticker: str
    analyst: AnalystName
    data_quality: list[str]  # what load_context said of this ticker's data (["no data"]: nothing)
