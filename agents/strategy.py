"""strategy_selector: a structure for each risk-approved verdict, with legs from the chain.

The structure comes from the direction, the volatility view, the regime and IV rank
(`agents.selector.choose_structure`); the legs from delta and DTE targets against the chain's
implied vols; probability of profit under the chain's fitted smile. A verdict with no fitting
structure or no liquid legs is recorded with the reason.
"""
from __future__ import annotations

from langgraph.runtime import Runtime

from agents.analysts import chain_analysis, evidence_number
from agents.selector import build_proposal, choose_structure_with_reason
from graph.deps import RunDeps
from graph.state import DecisionState
from graph.timing import timed


@timed("strategy_selector")
async def strategy_selector(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    deps, run, ctx = runtime.context, state["run"], state["context"]
    snapshot = await deps.market.snapshot(run.run_id)
    approved = {d.ticker for d in state.get("pre_trade", []) if d.approved}
    proposals, rejected = [], {}
    for verdict in state.get("verdicts", []):
        if verdict.ticker not in approved:
            continue
        choice = choose_structure_with_reason(verdict.price_view, verdict.vol_view, ctx.regime.name,
                                              evidence_number(state.get("signals", []), verdict.ticker,
                                                              "vol_surface", "iv_rank"))
        if choice.structure is None:
            rejected[verdict.ticker] = choice.reason
            continue
        data = snapshot.tickers.get(verdict.ticker)
        if data is None or data.chain is None:
            rejected[verdict.ticker] = "no option chain in the snapshot"
            continue
        analysis = await chain_analysis(deps.market, run.run_id, data)
        result = build_proposal(choice.structure, verdict.ticker, data.chain, analysis.chain_iv.vol, deps.decision,
                                rationale=f"{choice.reason}. {verdict.rationale}", surface=analysis.surface)
        if result.ok:
            proposals.append(result.proposal)
        else:
            rejected[verdict.ticker] = f"{choice.structure}: {result.reason}"
    return {"proposals": proposals, "rejected_proposals": rejected}
