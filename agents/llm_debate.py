"""The LLM bull/bear debate and its judge, with every call recorded and replayable.

`LLMDebater` implements the `Debater` protocol of `agents.debate`. Per debated ticker it makes
2·rounds + 1 calls (bull, bear per round, then one judge); the judge answers in JSON, validated
here with pydantic. Any failure (timeout, HTTP error, refusal, malformed verdict) stops the debate
for that ticker and falls back to `deterministic_verdict`, whose `debater` then says
`deterministic (fallback from llm:<model>: <status>)`.

The model is reached through a small `ChatBackend` interface: `OpenAIChatBackend` (langchain-openai
`ChatOpenAI`, any OpenAI-compatible endpoint) for live runs, `RecordedChatBackend` to replay a run
from its `llm_calls` rows with no network at all.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from string import Template
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.debate import DeterministicDebater, Debater, deterministic_verdict
from config.settings import DecisionConfig, LLMConfig, Settings, defaults
from domain.decision import Candidate, DebateTurn, Regime, Signal, Verdict
from prompts import load_prompt
from storage.llm_calls import LLMCall, LLMCallRepository, prompt_hash

log = logging.getLogger(__name__)

Role = Literal["bull", "bear", "judge"]
Message = dict[str, str]  # {"role": "system" | "user", "content": ...}
T = TypeVar("T")

# A local OpenAI-compatible server often needs no key, but the OpenAI client insists on one.
NO_KEY_PLACEHOLDER = "no-key-configured"
_EVIDENCE_ITEMS_PER_SIGNAL = 12  # keeps the prompt bounded whatever an analyst puts in evidence


# --- the backend interface ----------------------------------------------------------------------

@dataclass(frozen=True)
class ChatResult:
    text: str
    tokens_in: int | None = None
    tokens_out: int | None = None
    attempts: int = 1  # HTTP requests this answer took: retries are attempts - 1


class LLMCallFailed(Exception):
    """A call gave no usable answer. `status` is the llm_calls status it is recorded with."""

    def __init__(self, status: Literal["timeout", "http_error", "malformed", "refused"], error: str, *,
                 response: str | None = None, tokens_in: int | None = None, tokens_out: int | None = None):
        super().__init__(f"{status}: {error}")
        self.status, self.error, self.response = status, error, response
        self.tokens_in, self.tokens_out = tokens_in, tokens_out
        self.attempts = 1  # HTTP requests made before giving up (set by the backend)


class ReplayDivergence(LookupError):
    """A replayed debate asked for a prompt the original run never sent: the replay diverged."""


class ChatBackend(Protocol):
    model: str

    async def complete(self, messages: list[Message], *, ticker: str, role: Role, round: int,
                       json_mode: bool = False) -> ChatResult:
        """The model's answer to `messages`, or `LLMCallFailed`. `ticker`/`role`/`round` identify
        the call (a recorded backend looks answers up by them)."""
        ...


# The HTTP requests of the call in progress (per asyncio task): the client's retries happen inside
# one `ainvoke`, and only the transport sees each of them.
_HTTP_REQUESTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("llm_http_requests", default=None)


async def _count_http_request(request) -> None:
    counter = _HTTP_REQUESTS.get()
    if counter is not None:
        counter[0] += 1


class OpenAIChatBackend:
    """ChatOpenAI against any OpenAI-compatible endpoint, with bounded timeout and retries."""

    def __init__(self, *, model: str, api_key: str | None, base_url: str | None, timeout_s: float,
                 max_retries: int, temperature: float = 0.0, max_tokens: int | None = None,
                 deadline_s: float | None = None):
        import httpx
        from langchain_openai import ChatOpenAI  # only a live LLM run needs the client

        self.model = model
        self._secret = api_key or None
        self._deadline_s = deadline_s if deadline_s is not None else timeout_s * (max_retries + 1) + 8.0 * max_retries
        self._llm = ChatOpenAI(
            model=model, api_key=api_key or NO_KEY_PLACEHOLDER, base_url=base_url, timeout=timeout_s,
            max_retries=max_retries, temperature=temperature, max_tokens=max_tokens,
            use_responses_api=False,  # Chat Completions is what every compatible endpoint speaks
            http_async_client=httpx.AsyncClient(event_hooks={"request": [_count_http_request]}),
        )

    @classmethod
    def from_settings(cls, settings: Settings, config: LLMConfig) -> "OpenAIChatBackend":
        return cls(model=config.model, api_key=settings.openai_api_key, base_url=settings.openai_base_url,
                   timeout_s=config.timeout_s, max_retries=config.max_retries, temperature=config.temperature,
                   max_tokens=config.max_tokens, deadline_s=config.call_deadline_s)

    def __repr__(self) -> str:  # the key must never reach a log line through a repr
        return f"OpenAIChatBackend(model={self.model!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    async def complete(self, messages: list[Message], *, ticker: str, role: Role, round: int,
                       json_mode: bool = False) -> ChatResult:
        counter = [0]
        token = _HTTP_REQUESTS.set(counter)
        try:
            result = await self._complete(messages, json_mode=json_mode)
        except LLMCallFailed as exc:
            exc.attempts = max(1, counter[0])
            raise
        finally:
            _HTTP_REQUESTS.reset(token)
        return replace(result, attempts=max(1, counter[0]))

    async def _complete(self, messages: list[Message], *, json_mode: bool) -> ChatResult:
        import openai  # loaded with the client already; kept out of module import (~1 s) for other commands

        kwargs: dict[str, Any] = {"response_format": {"type": "json_object"}} if json_mode else {}
        try:
            reply = await asyncio.wait_for(self._llm.ainvoke(messages, **kwargs), timeout=self._deadline_s)
        except (asyncio.TimeoutError, openai.APITimeoutError) as exc:
            raise LLMCallFailed("timeout", self._redact(f"{type(exc).__name__}: {exc}") or "timed out") from None
        except openai.APIStatusError as exc:
            raise LLMCallFailed("http_error", self._redact(f"HTTP {exc.status_code}: {exc.message}")) from None
        except openai.APIResponseValidationError as exc:
            raise LLMCallFailed("malformed", self._redact(f"response failed validation: {exc.message}")) from None
        except openai.APIConnectionError as exc:
            raise LLMCallFailed("http_error", self._redact(f"connection error: {exc}")) from None
        except openai.APIError as exc:
            raise LLMCallFailed("http_error", self._redact(f"{type(exc).__name__}: {exc.message}")) from None
        except (ValueError, KeyError, TypeError) as exc:
            # langchain's own checks on a 200 response that is not a chat completion
            raise LLMCallFailed("malformed", self._redact(f"{type(exc).__name__}: {exc}")) from None
        usage = reply.usage_metadata or {}
        tokens_in, tokens_out = usage.get("input_tokens"), usage.get("output_tokens")
        text = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
        refusal = reply.additional_kwargs.get("refusal")
        if refusal:
            raise LLMCallFailed("refused", f"model refused: {refusal}", response=refusal,
                                tokens_in=tokens_in, tokens_out=tokens_out)
        if reply.response_metadata.get("finish_reason") == "content_filter":
            raise LLMCallFailed("refused", "response stopped by the content filter", response=text or None,
                                tokens_in=tokens_in, tokens_out=tokens_out)
        if not text.strip():
            raise LLMCallFailed("refused", "empty response", response=text, tokens_in=tokens_in,
                                tokens_out=tokens_out)
        return ChatResult(text=text, tokens_in=tokens_in, tokens_out=tokens_out)


class RecordedChatBackend:
    """Serves the answers a run recorded, matched by (ticker, role, round, prompt_hash); no network.

    A recorded failure is replayed as the same failure, so a replay falls back where the original
    did. A prompt the run never sent raises `ReplayDivergence`.
    """

    def __init__(self, calls: Sequence[LLMCall], model: str | None = None):
        models = {c.model for c in calls}
        if model is None:
            if len(models) > 1:
                raise ValueError(f"recorded calls use several models {sorted(models)}; pass model=")
            model = next(iter(models), "unrecorded")
        self.model = model
        self.served = 0
        # Later recordings win: a node re-executed after a crash recorded its calls again.
        self._calls = {(c.ticker, c.role, c.round, c.prompt_hash): c for c in sorted(calls, key=lambda c: c.id)}

    async def complete(self, messages: list[Message], *, ticker: str, role: Role, round: int,
                       json_mode: bool = False) -> ChatResult:
        digest = prompt_hash(messages)
        call = self._calls.get((ticker, role, round, digest))
        if call is None:
            same_turn = sorted(h[:12] for (t, r, n, h) in self._calls if (t, r, n) == (ticker, role, round))
            raise ReplayDivergence(
                f"replay diverged: no recorded LLM call for {ticker} {role} round {round} with prompt "
                f"sha256 {digest[:12]}; recorded prompts for this turn: {same_turn or 'none'}")
        self.served += 1
        if call.status in ("ok", "malformed") and call.response is not None:
            # a malformed answer is served as text: the debater finds it malformed again
            return ChatResult(text=call.response, tokens_in=call.tokens_in, tokens_out=call.tokens_out)
        raise LLMCallFailed(call.status, call.error or "recorded call had no response",  # type: ignore[arg-type]
                            response=call.response, tokens_in=call.tokens_in, tokens_out=call.tokens_out)


# --- the judge's verdict ------------------------------------------------------------------------

class JudgeRuling(BaseModel):
    """What the judge must return; anything else is a malformed verdict."""

    model_config = ConfigDict(extra="ignore")

    price_view: Literal["bullish", "bearish", "neutral", "inconclusive"]
    vol_view: Literal["rich", "cheap", "neutral"]
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str = Field(min_length=1)


def parse_ruling(text: str) -> JudgeRuling:
    """Validate the judge's JSON (a ```json fence around it is tolerated); raises ValueError."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        return JudgeRuling.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:4])
        raise ValueError(f"judge verdict is not valid JSON of the required shape ({problems})") from None


def reconcile(ruling: JudgeRuling, candidate: Candidate) -> tuple[str, str, list[str]]:
    """The judge's views, held to the same guard as the deterministic judge.

    A judge that contradicts the analysts' aggregate (bullish against a bearish candidate, rich
    against cheap) does not trade either way; a candidate with no price direction stays neutral.
    Returns (price_view, vol_view, notes on what was overridden).
    """
    price, vol, notes = ruling.price_view, ruling.vol_view, []
    if candidate.price_view == "neutral" and price in ("bullish", "bearish"):
        notes.append(f"judge said {price} but the analysts' aggregate has no price direction: neutral")
        price = "neutral"
    elif price in ("bullish", "bearish") and candidate.price_view != price:
        notes.append(f"judge said {price} against a {candidate.price_view} aggregate: inconclusive")
        price = "inconclusive"
    if {vol, candidate.vol_view} == {"rich", "cheap"}:
        notes.append(f"judge called volatility {vol} against a {candidate.vol_view} aggregate: neutral")
        vol = "neutral"
    return price, vol, notes


# --- prompts ------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def format_regime(regime: Regime) -> str:
    shape = "backwardation (stress)" if regime.term_ratio > 1 else "contango"
    parts = [f"{regime.name}; VIX {regime.vix:.2f}, VIX3M {regime.vix3m:.2f}, VIX/VIX3M {regime.term_ratio:.3f} ({shape})"]
    if regime.realized_vol is not None:
        parts.append(f"SPY 20-day realized vol {regime.realized_vol:.4f} (annualized)")
    if regime.reasons:
        parts.append("reasons: " + "; ".join(regime.reasons))
    return "; ".join(parts)


def format_candidate(candidate: Candidate) -> str:
    lines = [
        f"price view {candidate.price_view}; volatility view {candidate.vol_view}; conviction {candidate.conviction:.3f}",
        f"score {candidate.score:+.3f} (in [-1, 1], positive bullish); vol score {candidate.vol_score:+.3f} "
        f"(in [-1, 1], positive rich)",
        "agreeing sources: " + ", ".join(candidate.sources),
    ]
    lines += [f"- {r}" for r in candidate.reasons]
    return "\n".join(lines)


def format_evidence(signals: Sequence[Signal]) -> str:
    """One row per analyst signal; evidence keys sorted so the prompt (and its hash) is stable."""
    if not signals:
        return "(no analyst signals)"
    rows = ["| source | direction | conviction | edge | horizon (days) | evidence | data quality |",
            "|---|---|---|---|---|---|---|"]
    for s in sorted(signals, key=lambda s: (s.source, s.edge_type)):
        items = sorted(s.evidence.items())[:_EVIDENCE_ITEMS_PER_SIGNAL]
        evidence = ", ".join(f"{k}={_fmt(v)}" for k, v in items) or "-"
        quality = "; ".join(s.data_quality) or "-"
        rows.append(f"| {s.source} | {s.direction} | {s.conviction:.3f} | {_cell(s.edge_type)} | {s.horizon_days} "
                    f"| {_cell(evidence)} | {_cell(quality)} |")
    return "\n".join(rows)


def format_memories(memories: Sequence[str]) -> str:
    return "\n".join(f"- {m}" for m in memories) if memories else "(no similar past situations recorded)"


def format_transcript(turns: Sequence[DebateTurn]) -> str:
    if not turns:
        return "(no arguments yet: you open the debate)"
    return "\n\n".join(f"**{t.role.capitalize()}, round {t.round}:** {t.text}" for t in turns)


def render_messages(role: Role, fields: dict[str, str]) -> list[Message]:
    """Fill prompt `role` and split it into a system and a user message."""
    template = load_prompt(role)
    head, sep, user = template.partition("<!-- user -->")
    system = head.replace("<!-- system -->", "", 1)
    if not sep or "<!-- system -->" not in head:
        raise ValueError(f"prompt {role}.md must have <!-- system --> and <!-- user --> sections")
    return [
        {"role": "system", "content": Template(system).substitute(fields).strip()},
        {"role": "user", "content": Template(user).substitute(fields).strip()},
    ]


# --- the debater --------------------------------------------------------------------------------

class MemoryRecall(Protocol):
    async def recall(self, candidate: Candidate, signals: list[Signal], regime: Regime) -> list[str]:
        """Short descriptions of similar past situations and their outcomes, most similar first."""
        ...


class LLMDebater:
    """Bull and bear argue through an LLM for `rounds` rounds; an LLM judge rules in JSON."""

    def __init__(self, backend: ChatBackend, *, calls: LLMCallRepository | None = None,
                 memory: MemoryRecall | None = None, node: str = "debate"):
        self.backend, self.calls, self.memory, self.node = backend, calls, memory, node
        self.name = f"llm:{backend.model}"

    def __repr__(self) -> str:
        return f"LLMDebater(name={self.name!r})"

    async def debate(self, candidate: Candidate, signals: list[Signal], regime: Regime, rounds: int,
                     run_id: str) -> Verdict:
        if rounds < 1:
            raise ValueError(f"a debate needs at least one round, got {rounds}")
        memories = list(await self.memory.recall(candidate, signals, regime)) if self.memory else []
        fields = {
            "ticker": candidate.ticker, "rounds": str(rounds), "regime": format_regime(regime),
            "candidate": format_candidate(candidate), "evidence": format_evidence(signals),
            "memories": format_memories(memories),
        }
        turns: list[DebateTurn] = []
        try:
            for r in range(1, rounds + 1):
                for role in ("bull", "bear"):
                    messages = render_messages(role, {**fields, "round": str(r), "transcript": format_transcript(turns)})
                    text = await self._call(run_id, candidate.ticker, role, r, messages, json_mode=False,
                                            accept=lambda t: t.strip())
                    turns.append(DebateTurn(role=role, round=r, text=text))
            messages = render_messages("judge", {**fields, "round": str(rounds), "transcript": format_transcript(turns)})
            ruling = await self._call(run_id, candidate.ticker, "judge", rounds, messages, json_mode=True,
                                      accept=parse_ruling)
        except _TurnFailed as failure:
            return self._fallback(candidate, signals, regime, rounds, turns, memories, failure)
        price_view, vol_view, notes = reconcile(ruling, candidate)
        rationale = ruling.rationale.strip() + "".join(f" [Guard: {n}.]" for n in notes)
        judge = DebateTurn(role="judge", round=rounds,
                           text=f"price view {ruling.price_view}, volatility view {ruling.vol_view}, "
                                f"confidence {ruling.confidence:.2f}. {ruling.rationale.strip()}")
        return Verdict(
            ticker=candidate.ticker, price_view=price_view, vol_view=vol_view, confidence=ruling.confidence,
            rationale=rationale, debater=self.name, rounds=rounds, transcript=[*turns, judge],
            memories_used=memories,
        )

    def _fallback(self, candidate: Candidate, signals: list[Signal], regime: Regime, rounds: int,
                  turns: list[DebateTurn], memories: list[str], failure: "_TurnFailed") -> Verdict:
        reason = f"{failure.role} round {failure.round}: {failure.status}: {failure.error}"
        log.warning("LLM debate of %s fell back to the deterministic judge (%s)", candidate.ticker, reason)
        verdict = deterministic_verdict(candidate, signals, regime, rounds, fallback_reason=f"{self.name} {reason}")
        update: dict[str, Any] = {"debater": f"deterministic (fallback from {self.name}: {failure.status})",
                                  "memories_used": memories}
        if turns:  # what the LLM did argue stays in the record; the ruling is the deterministic one
            update["transcript"] = [*turns, verdict.transcript[-1]]
        return verdict.model_copy(update=update)

    async def _call(self, run_id: str, ticker: str, role: Role, round: int, messages: list[Message], *,
                    json_mode: bool, accept: Callable[[str], T]) -> T:
        """One recorded call; `accept` turns the text into the value the debate needs (or raises
        ValueError, recorded as malformed)."""
        started = time.perf_counter()
        result: ChatResult | None = None
        failure: LLMCallFailed | None = None
        value: Any = None
        try:
            result = await self.backend.complete(messages, ticker=ticker, role=role, round=round, json_mode=json_mode)
            value = accept(result.text)
        except LLMCallFailed as exc:
            failure = exc
        except ValueError as exc:
            failure = LLMCallFailed("malformed", str(exc), response=result.text if result else None)
        latency_ms = (time.perf_counter() - started) * 1000.0
        status = failure.status if failure else "ok"
        if self.calls is not None:
            await self.calls.record(
                run_id=run_id, node=self.node, ticker=ticker, role=role, round=round, model=self.backend.model,
                messages=messages, response=result.text if result else (failure.response if failure else None),
                status=status, error=failure.error if failure else None,
                tokens_in=result.tokens_in if result else (failure.tokens_in if failure else None),
                tokens_out=result.tokens_out if result else (failure.tokens_out if failure else None),
                latency_ms=latency_ms, attempts=result.attempts if result else (failure.attempts if failure else 1),
            )
        log.info("llm %s %s %s round %d: %s in %.0f ms", self.backend.model, ticker, role, round, status, latency_ms)
        if failure:
            raise _TurnFailed(role, round, failure)
        return value


class _TurnFailed(LLMCallFailed):
    def __init__(self, role: Role, round: int, failure: LLMCallFailed):
        super().__init__(failure.status, failure.error, response=failure.response,  # type: ignore[arg-type]
                         tokens_in=failure.tokens_in, tokens_out=failure.tokens_out)
        self.attempts = failure.attempts
        self.role, self.round = role, round


# --- wiring -------------------------------------------------------------------------------------

def llm_configured(settings: Settings) -> bool:
    return bool(settings.openai_api_key or settings.openai_base_url)


def make_debater(settings: Settings, decision_config: DecisionConfig, db: Any | None, *,
                 llm_config: LLMConfig | None = None, memory: MemoryRecall | None = None) -> Debater:
    """`LLMDebater` (calls recorded in `db`) when an OpenAI key or base URL is configured, else
    `DeterministicDebater`. `decision_config` is accepted for the runner's call shape; the number
    of rounds reaches the debater per call."""
    if not llm_configured(settings):
        return DeterministicDebater(memory=memory)
    backend = OpenAIChatBackend.from_settings(settings, llm_config or defaults().llm)
    calls = LLMCallRepository(db.pool) if db is not None else None
    return LLMDebater(backend, calls=calls, memory=memory)


def make_replay_debater(calls: Sequence[LLMCall], *, record_to: LLMCallRepository | None = None,
                        memory: MemoryRecall | None = None) -> LLMDebater:
    """A debater that answers only from a run's recorded calls (`LLMCallRepository.for_run`)."""
    return LLMDebater(RecordedChatBackend(calls), calls=record_to, memory=memory)
