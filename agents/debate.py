"""The bull/bear debate and its judge.

`Debater` is the interface; `DeterministicDebater` argues from the evidence alone, with no LLM,
and says so in its verdict (`debater="deterministic"`). An LLM debater implements the same
interface and falls back to this one when its output cannot be used.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from langgraph.runtime import Runtime

from graph.deps import RunDeps
from domain.decision import Candidate, DebateTurn, Regime, Signal, Verdict
from graph.state import DecisionState
from graph.timing import timed
from storage.decisions import DecisionRepository

# The judge calls a side the winner only when its evidence outweighs the other's by this much.
DECISIVE_MARGIN = 0.15


class Debater(Protocol):
    name: str

    async def debate(
        self, candidate: Candidate, signals: list[Signal], regime: Regime, rounds: int, run_id: str
    ) -> Verdict: ...


def _points(signals: list[Signal], side: str) -> list[tuple[float, str]]:
    """The evidence for one side as (weight, sentence), strongest first."""
    wanted = {"bull": ("bullish",), "bear": ("bearish",)}[side]
    points = []
    for s in signals:
        if s.direction in wanted and s.conviction > 0:
            numbers = ", ".join(f"{k}={_fmt(v)}" for k, v in list(s.evidence.items())[:4])
            points.append((s.conviction, f"{s.source} sees {s.direction} {s.edge_type} "
                                         f"(conviction {s.conviction:.2f}; {numbers})"))
    return sorted(points, reverse=True)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class DeterministicDebater:
    """Weighs the evidence each side can cite; no randomness, no model.

    With a memory (`MemoryRecall`), the judge also reads the outcomes of similar past situations
    known at the run's date; they are listed in the transcript and in `memories_used`, and do not
    move the verdict: past outcomes are context for the approver, not evidence about today.
    """

    name = "deterministic"

    def __init__(self, memory=None):
        self.memory = memory

    async def debate(
        self, candidate: Candidate, signals: list[Signal], regime: Regime, rounds: int, run_id: str
    ) -> Verdict:
        verdict = deterministic_verdict(candidate, signals, regime, rounds)
        if self.memory is None:
            return verdict
        memories = await self.memory.recall(candidate, signals, regime)
        if not memories:
            return verdict
        note = DebateTurn(role="judge", round=rounds, text="Similar past situations: " + " | ".join(memories),
                          evidence=memories)
        return verdict.model_copy(update={"transcript": [*verdict.transcript, note], "memories_used": memories})


def deterministic_verdict(candidate: Candidate, signals: list[Signal], regime: Regime, rounds: int,
                          fallback_reason: str | None = None) -> Verdict:
    bull, bear = _points(signals, "bull"), _points(signals, "bear")
    transcript: list[DebateTurn] = []
    for r in range(1, rounds + 1):
        # Each round a side brings its next-strongest point; with few points it restates its best.
        b = bull[(r - 1) % len(bull)][1] if bull else "No analyst gives a bullish reason."
        s = bear[(r - 1) % len(bear)][1] if bear else "No analyst gives a bearish reason."
        transcript.append(DebateTurn(role="bull", round=r, text=b, evidence=[p for _, p in bull[:3]]))
        transcript.append(DebateTurn(role="bear", round=r, text=s, evidence=[p for _, p in bear[:3]]))
    bull_weight, bear_weight = sum(w for w, _ in bull), sum(w for w, _ in bear)
    total = bull_weight + bear_weight
    margin = (bull_weight - bear_weight) / total if total else 0.0
    if candidate.price_view == "neutral":
        price_view = "neutral"
    elif abs(margin) < DECISIVE_MARGIN:
        price_view = "inconclusive"
    else:
        price_view = "bullish" if margin > 0 else "bearish"
    if price_view in ("bullish", "bearish") and price_view != candidate.price_view:
        price_view = "inconclusive"  # the debate contradicts the aggregate: do not trade either way
    confidence = min(1.0, abs(margin) * candidate.conviction + (0.2 if price_view != "inconclusive" else 0.0))
    rationale = (
        f"Regime {regime.name} (VIX {regime.vix:.1f}, VIX/VIX3M {regime.term_ratio:.2f}). "
        f"Bull evidence weight {bull_weight:.2f} vs bear {bear_weight:.2f} (margin {margin:+.2f}); "
        f"volatility view {candidate.vol_view}. Verdict: {price_view}. Deterministic debate from the evidence; no LLM."
    )
    transcript.append(DebateTurn(role="judge", round=rounds, text=rationale))
    return Verdict(
        ticker=candidate.ticker, price_view=price_view, vol_view=candidate.vol_view,
        confidence=round(confidence, 6), rationale=rationale, debater="deterministic", rounds=rounds,
        transcript=transcript, fallback_reason=fallback_reason,
    )


@timed("debate")
async def debate(state: DecisionState, runtime: Runtime[RunDeps]) -> dict:
    """Debate every candidate (and only candidates), concurrently; store each transcript."""
    deps, run = runtime.context, state["run"]
    regime = state["context"].regime
    signals = state.get("signals", [])
    candidates = state.get("candidates", [])
    verdicts = await asyncio.gather(*(
        deps.debater.debate(c, [s for s in signals if s.ticker == c.ticker], regime, deps.decision.debate_rounds, run.run_id)
        for c in candidates
    ))
    await DecisionRepository(deps.db.pool).save_verdicts(run.run_id, list(verdicts))
    return {"verdicts": list(verdicts)}
