"""The decision graph, wired like the diagram in SPEC.md. Only wiring lives here.

load_context
  └─ per ticker, in parallel: vol_surface · flow · technical · social   (Send)
       └─ aggregate_signals → select_candidates
            └─ debate → risk_gate → strategy_selector → kelly_allocator
                 └─ post_trade_check → stage_orders
                      └─ await_approval (interrupt until every order is decided)
                           └─ execute_approved (re-check, transmit, journal) → reflect (memory)
"""
from __future__ import annotations

import functools

from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from agents.aggregate import aggregate_signals, select_candidates
from agents.allocator import kelly_allocator
from agents.approval import after_approval, await_approval
from agents.execution import execute_approved
from agents.reflect import reflect
from agents.analysts import ANALYSTS
from agents.context import load_context
from agents.debate import debate
from agents.risk_gate import post_trade_check, risk_gate
from agents.staging import stage_orders
from agents.strategy import strategy_selector
from graph.deps import RunContext, with_run_deps
from graph.state import AnalystTask, DecisionState


def fan_out_analysts(state: DecisionState) -> list[Send]:
    """One task per (ticker, analyst): 4 × N tasks that run in the same superstep."""
    return [
        Send(name, AnalystTask(run=state["run"], ticker=ticker, analyst=name,
                               data_quality=state["context"].data_quality.get(ticker, ["no data"])))
        for ticker in state["run"].tickers
        for name in ANALYSTS
    ]


def build_graph() -> StateGraph:
    # The context is configuration (`RunContext`); each node receives the live `RunDeps` built from it.
    builder = StateGraph(DecisionState, context_schema=RunContext)
    add = lambda name, node, **kw: builder.add_node(name, with_run_deps(node), **kw)  # noqa: E731
    add("load_context", load_context)
    for name, analyst in ANALYSTS.items():
        add(name, analyst, input_schema=AnalystTask)
    add("aggregate_signals", aggregate_signals)
    add("select_candidates", select_candidates)
    add("debate", debate)
    add("risk_gate", risk_gate)
    add("strategy_selector", strategy_selector)
    add("kelly_allocator", kelly_allocator)
    add("post_trade_check", post_trade_check)
    add("stage_orders", stage_orders)
    add("await_approval", await_approval)
    add("execute_approved", execute_approved)
    add("reflect", reflect)

    builder.add_edge(START, "load_context")
    builder.add_conditional_edges("load_context", fan_out_analysts, list(ANALYSTS))
    for name in ANALYSTS:  # every analyst task finishes in one superstep; aggregate runs once after
        builder.add_edge(name, "aggregate_signals")
    builder.add_edge("aggregate_signals", "select_candidates")
    builder.add_edge("select_candidates", "debate")
    builder.add_edge("debate", "risk_gate")
    builder.add_edge("risk_gate", "strategy_selector")
    builder.add_edge("strategy_selector", "kelly_allocator")
    builder.add_edge("kelly_allocator", "post_trade_check")
    builder.add_edge("post_trade_check", "stage_orders")
    builder.add_edge("stage_orders", "await_approval")
    builder.add_conditional_edges("await_approval", after_approval, ["await_approval", "execute_approved"])
    builder.add_edge("execute_approved", "reflect")
    builder.add_edge("reflect", END)
    return builder


@functools.cache
def _built() -> StateGraph:
    return build_graph()


def compiled_graph(checkpointer):
    """The decision graph compiled on `checkpointer`. The graph is built once per process: building
    inspects every node's signature and types (~11 ms), and a backtest starts and resumes run
    graphs several times a simulated day."""
    return _built().compile(checkpointer=checkpointer)
