"""Every LLM call a run made, one row per request: prompt, response, status, tokens, latency.

The rows serve cost accounting (`usage_by_run`) and replay: a replayed run is served from these
responses, matched by (ticker, role, round, prompt_hash), with no network. Only the messages and
the model's answer are stored; the API key is never passed to this module.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

CallStatus = Literal["ok", "timeout", "http_error", "malformed", "refused"]
CALL_STATUSES: tuple[str, ...] = ("ok", "timeout", "http_error", "malformed", "refused")


def canonical_messages(messages: list[dict[str, str]]) -> str:
    """The one JSON text a list of chat messages hashes as: sorted keys, no whitespace, UTF-8."""
    return json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """sha256 (hex) of the canonical messages: equal prompts hash equal, whatever the key order."""
    return hashlib.sha256(canonical_messages(messages).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LLMCall:
    id: int
    run_id: str
    node: str
    ticker: str
    role: str
    round: int
    model: str
    prompt_hash: str
    messages: list[dict[str, str]]
    response: str | None
    status: str
    error: str | None
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: float
    created_at: datetime
    attempts: int = 1  # HTTP requests made: retries are attempts - 1

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> "LLMCall":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


class LLMCallRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def record(
        self, *, run_id: str, node: str, ticker: str, role: str, round: int, model: str,
        messages: list[dict[str, str]], response: str | None, status: str, latency_ms: float,
        error: str | None = None, tokens_in: int | None = None, tokens_out: int | None = None, attempts: int = 1,
    ) -> int:
        """Store one call; returns its id. The prompt hash is computed here from `messages`."""
        if status not in CALL_STATUSES:
            raise ValueError(f"unknown LLM call status {status!r}; expected one of {CALL_STATUSES}")
        return await self.pool.fetchval(
            """INSERT INTO llm_calls (run_id, node, ticker, role, round, model, prompt_hash, messages, response,
                                      status, error, tokens_in, tokens_out, latency_ms, attempts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
               RETURNING id""",
            run_id, node, ticker, role, round, model, prompt_hash(messages), messages, response,
            status, error, tokens_in, tokens_out, float(latency_ms), attempts,
        )

    async def for_run(self, run_id: str) -> list[LLMCall]:
        """The run's calls in the order they were recorded."""
        rows = await self.pool.fetch("SELECT * FROM llm_calls WHERE run_id = $1 ORDER BY id", run_id)
        return [LLMCall.from_row(r) for r in rows]

    async def usage_by_run(self, run_id: str) -> dict[str, int]:
        """{calls, tokens_in, tokens_out} for the run; unknown token counts count as zero."""
        row = await self.pool.fetchrow(
            """SELECT count(*) AS calls, COALESCE(sum(tokens_in), 0) AS tokens_in,
                      COALESCE(sum(tokens_out), 0) AS tokens_out
               FROM llm_calls WHERE run_id = $1""",
            run_id,
        )
        return {"calls": int(row["calls"]), "tokens_in": int(row["tokens_in"]), "tokens_out": int(row["tokens_out"])}

    async def totals(self) -> dict[str, int]:
        """{calls, tokens_in, tokens_out} over every run."""
        row = await self.pool.fetchrow("SELECT count(*) AS calls, coalesce(sum(tokens_in), 0) AS tokens_in, "
                                       "coalesce(sum(tokens_out), 0) AS tokens_out FROM llm_calls")
        return {k: row[k] for k in ("calls", "tokens_in", "tokens_out")}

    async def usage_by_model(self, run_id: str) -> dict[str, dict[str, int]]:
        """{model: {calls, requests, retries, failed, tokens_in, tokens_out}}: what a run's calls
        cost is priced per model; retries are HTTP requests beyond the first of each call."""
        rows = await self.pool.fetch(
            """SELECT model, count(*) AS calls, sum(attempts) AS requests,
                      count(*) FILTER (WHERE status <> 'ok') AS failed,
                      COALESCE(sum(tokens_in), 0) AS tokens_in, COALESCE(sum(tokens_out), 0) AS tokens_out
               FROM llm_calls WHERE run_id = $1 GROUP BY model ORDER BY model""",
            run_id,
        )
        return {r["model"]: {"calls": int(r["calls"]), "requests": int(r["requests"]),
                             "retries": int(r["requests"]) - int(r["calls"]), "failed": int(r["failed"]),
                             "tokens_in": int(r["tokens_in"]), "tokens_out": int(r["tokens_out"])} for r in rows}

    async def usage_by_ticker(self, run_id: str) -> dict[str, dict[str, int]]:
        """{ticker: {calls, tokens_in, tokens_out}}: what each debated ticker cost."""
        rows = await self.pool.fetch(
            """SELECT ticker, count(*) AS calls, COALESCE(sum(tokens_in), 0) AS tokens_in,
                      COALESCE(sum(tokens_out), 0) AS tokens_out
               FROM llm_calls WHERE run_id = $1 GROUP BY ticker ORDER BY ticker""",
            run_id,
        )
        return {r["ticker"]: {"calls": int(r["calls"]), "tokens_in": int(r["tokens_in"]),
                              "tokens_out": int(r["tokens_out"])} for r in rows}
