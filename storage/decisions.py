"""What a run decided, one row per (run, ticker, stage): signals, debates, risk decisions.

Writes are upserts keyed by the run, so a node that re-executes after a crash rewrites its rows
instead of adding new ones.
"""
from __future__ import annotations

import asyncpg

from domain.decision import RiskDecision, Signal, Verdict


class DecisionRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def save_signals(self, run_id: str, signals: list[Signal]) -> None:
        await self.pool.executemany(
            """INSERT INTO signals (run_id, ticker, source, direction, conviction, edge_type, horizon_days,
                                    as_of, evidence, data_quality)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (run_id, ticker, source) DO UPDATE SET
                   direction = EXCLUDED.direction, conviction = EXCLUDED.conviction,
                   edge_type = EXCLUDED.edge_type, horizon_days = EXCLUDED.horizon_days,
                   as_of = EXCLUDED.as_of, evidence = EXCLUDED.evidence, data_quality = EXCLUDED.data_quality""",
            [
                (run_id, s.ticker, s.source, s.direction, s.conviction, s.edge_type, s.horizon_days, s.as_of,
                 s.model_dump(mode="json")["evidence"], s.data_quality)
                for s in signals
            ],
        )

    async def save_verdicts(self, run_id: str, verdicts: list[Verdict]) -> None:
        await self.pool.executemany(
            """INSERT INTO debates (run_id, ticker, debater, price_view, vol_view, confidence, rationale, rounds,
                                    transcript, memories_used, fallback_reason)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (run_id, ticker) DO UPDATE SET
                   debater = EXCLUDED.debater, price_view = EXCLUDED.price_view, vol_view = EXCLUDED.vol_view,
                   confidence = EXCLUDED.confidence, rationale = EXCLUDED.rationale, rounds = EXCLUDED.rounds,
                   transcript = EXCLUDED.transcript, memories_used = EXCLUDED.memories_used,
                   fallback_reason = EXCLUDED.fallback_reason""",
            [
                (run_id, v.ticker, v.debater, v.price_view, v.vol_view, v.confidence, v.rationale, v.rounds,
                 [t.model_dump(mode="json") for t in v.transcript], v.memories_used, v.fallback_reason)
                for v in verdicts
            ],
        )

    async def save_risk_decisions(self, run_id: str, decisions: list[RiskDecision]) -> None:
        await self.pool.executemany(
            """INSERT INTO risk_decisions (run_id, ticker, stage, approved, regime, vetoes, warnings,
                                           requires_acknowledgement)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (run_id, ticker, stage) DO UPDATE SET
                   approved = EXCLUDED.approved, regime = EXCLUDED.regime, vetoes = EXCLUDED.vetoes,
                   warnings = EXCLUDED.warnings, requires_acknowledgement = EXCLUDED.requires_acknowledgement""",
            [
                (run_id, d.ticker, d.stage, d.approved, d.regime,
                 [r.model_dump(mode="json") for r in d.vetoes], [r.model_dump(mode="json") for r in d.warnings],
                 d.requires_acknowledgement)
                for d in decisions
            ],
        )

    async def signals(self, run_id: str) -> list[dict]:
        return [dict(r) for r in await self.pool.fetch(
            "SELECT * FROM signals WHERE run_id = $1 ORDER BY ticker, source", run_id)]

    async def verdicts(self, run_id: str) -> list[dict]:
        return [dict(r) for r in await self.pool.fetch(
            "SELECT * FROM debates WHERE run_id = $1 ORDER BY ticker", run_id)]

    async def fallback_debates(self, run_id: str) -> list[dict]:
        """(ticker, debater) of the run's debates that fell back from the LLM to the deterministic debater."""
        return [dict(r) for r in await self.pool.fetch(
            "SELECT ticker, debater FROM debates WHERE run_id = $1 AND debater LIKE '%fallback%' ORDER BY ticker",
            run_id)]

    async def risk_decisions(self, run_id: str) -> list[dict]:
        return [dict(r) for r in await self.pool.fetch(
            "SELECT * FROM risk_decisions WHERE run_id = $1 ORDER BY ticker, stage", run_id)]
