"""strategy_selector: a structure for each risk-approved verdict, with legs from the chain.

The structure comes from the direction, the volatility view, the regime, IV rank and an expected
pin (max pain while dealers are long gamma; `agents.selector.choose_structure`); the legs from
delta and DTE targets against the chain's fitted smile, priced at fitted values clipped to the
quotes, with probability of profit under the smile's law. A verdict with no fitting structure or
no liquid legs is recorded with the reason.
"""
from __future__ import annotations

from langgraph.runtime import Runtime

from agents.analysts import chain_analysis, evidence_number
from agents.selector import build_proposal, choose_structure_with_reason, expected_pin, term_inverted
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
        data = snapshot.tickers.get(verdict.ticker)
        analysis = None if data is None else await chain_analysis(deps.market, run.run_id, data)
        pin = None if analysis is None else expected_pin(analysis.flow, data.chain.spot, run.as_of,
                                                         deps.decision.target_dte)
        signals = state.get("signals", [])
        choice = choose_structure_with_reason(
            verdict.price_view, verdict.vol_view, ctx.regime.name,
            evidence_number(signals, verdict.ticker, "vol_surface", "iv_rank"), pin,
            evidence_number(signals, verdict.ticker, "vol_surface", "rr25_30d"),
            allow_jade_lizard=deps.decision.jade_lizard_short_put == "cash_secured",
            term_inverted=term_inverted(evidence_number(signals, verdict.ticker, "vol_surface", "atm_iv_30d"),
                                        evidence_number(signals, verdict.ticker, "vol_surface", "atm_iv_90d")))
        if choice.structure is None:
            rejected[verdict.ticker] = choice.reason
            continue
        if data is None or data.chain is None:
            rejected[verdict.ticker] = "no option chain in the snapshot"
            continue
        result = build_proposal(choice.structure, verdict.ticker, data.chain, analysis.chain_iv.vol, deps.decision,
                                rationale=f"{choice.reason}. {verdict.rationale}", surface=analysis.surface,
                                target=None if pin is None else data.chain.spot * (1.0 + pin))
        if result.ok:
            proposals.append(result.proposal)
        else:
            rejected[verdict.ticker] = f"{choice.structure}: {result.reason}"
    return {"proposals": proposals, "rejected_proposals": rejected}
