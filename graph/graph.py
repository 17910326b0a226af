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

from collections import OrderedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
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


# The graph compiled per checkpointer (the last few; each entry holds its checkpointer, so the
# identity check below can never match a reused id). Compiling inspects every node's closure and
# signature (~12 ms); a backtest starts and resumes run graphs several times a simulated day.
_COMPILED: OrderedDict[int, tuple[object, CompiledStateGraph]] = OrderedDict()
_COMPILED_KEPT = 4


def compiled_graph(checkpointer) -> CompiledStateGraph:
    """The decision graph compiled on `checkpointer`, compiled once per checkpointer (the graph is
    stateless: one compiled graph serves every run and thread)."""
    hit = _COMPILED.get(id(checkpointer))
    if hit is not None and hit[0] is checkpointer:
        _COMPILED.move_to_end(id(checkpointer))
        return hit[1]
    app = build_graph().compile(checkpointer=checkpointer)
    _COMPILED[id(checkpointer)] = (checkpointer, app)
    while len(_COMPILED) > _COMPILED_KEPT:
        _COMPILED.popitem(last=False)
    return app
