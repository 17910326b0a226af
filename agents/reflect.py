"""reflect: remember every debated situation (ticker, regime, signals, thesis, chosen trade).

One memory per (run, ticker), so a re-executed node adds nothing. Outcomes are attached later,
when each situation's horizon has passed (`memory.outcomes.attach_due_outcomes`).
"""
from __future__ import annotations

from langgraph.runtime import Runtime

from graph.deps import RunDeps
from graph.state import DecisionState
from graph.timing import timed
from memory.store import situation_text
from storage.memories import MemoryRepository


@timed("reflect")
async def reflect(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run = runtime.context, state["run"]
    if run.mode != "live" or deps.memory is None:
        return {}
    transmitted = {e.order_id for e in state.get("executions", []) if e.outcome == "transmitted"}
    trades = {o.ticker: o for o in state.get("staged", []) if o.order_id in transmitted}
    proposals = {p.ticker: p for p in state.get("proposals", [])}
    memories = MemoryRepository(deps.db.pool)
    situations, texts = [], []
    for verdict in state.get("verdicts", []):
        if await memories.remembers(run.run_id, verdict.ticker):
            continue
        signals = [s for s in state.get("signals", []) if s.ticker == verdict.ticker]
        proposal = proposals.get(verdict.ticker) if verdict.ticker in trades else None
        horizon = proposal.dte if proposal else max((s.horizon_days for s in signals), default=5)
        situation = dict(ticker=verdict.ticker, regime=state["context"].regime, signals=signals,
                         thesis=verdict.rationale, trade=proposal)
        situations.append({**situation, "horizon_days": horizon})
        texts.append(situation_text(**situation))
    # All of the run's situations in one embedder call (one forward pass per embedder batch, not
    # one per ticker), then stored in verdict order as before, so ids follow the verdicts.
    vectors = await deps.memory.embed(texts)
    for situation, vector in zip(situations, vectors, strict=True):
        await deps.memory.add(**situation, as_of=run.as_of, run_id=run.run_id, embedding=vector)
    return {}
