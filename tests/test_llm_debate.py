"""The LLM debate over real HTTP: a local OpenAI-compatible server scripted per role, the real
`ChatOpenAI` client, and the real embedded Postgres for the call records.

Nothing of ours or of langchain is mocked: the server speaks the Chat Completions wire format and
counts the requests it receives, so "zero network calls on replay" is measured, not assumed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.debate import DeterministicDebater, deterministic_verdict
from agents.llm_debate import (
    LLMDebater, OpenAIChatBackend, RecordedChatBackend, ReplayDivergence, make_debater, make_replay_debater,
    parse_ruling, render_messages,
)
from config.settings import DecisionConfig, LLMConfig, Settings, defaults
from domain.decision import Candidate, Regime, Signal
from prompts import PROMPT_NAMES, load_prompt
from storage.llm_calls import LLMCallRepository, canonical_messages, prompt_hash
from storage.runs import RunRepository

MODEL = "test-model"
API_KEY = f"sk-test-{uuid.uuid4().hex}"
AS_OF = datetime(2023, 9, 14, 15, 30, tzinfo=timezone.utc)

BULL_TEXT = "Dealers are short gamma below 445 and RSI is 58: upside has room. Key number: gamma -1.2e9."
BEAR_TEXT = "Social sentiment is bearish at 0.30 and IV is rich; a pullback to 440 is plausible. Key number: 0.30."
JUDGE_JSON = {"price_view": "bullish", "vol_view": "rich", "confidence": 0.72,
              "rationale": "Flow (0.70) and technicals (0.60) outweigh social (0.30); IV rank 78 says sell premium."}


# --- a scripted OpenAI-compatible server ------------------------------------------------------------

def completion(text: str | None, tokens_in: int, tokens_out: int, refusal: str | None = None) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": 1694700000, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text, "refusal": refusal}}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


NORMAL = {
    "bull": {"body": completion(BULL_TEXT, 101, 21)},
    "bear": {"body": completion(BEAR_TEXT, 102, 22)},
    "judge": {"body": completion(json.dumps(JUDGE_JSON), 103, 23)},
}


class ScriptedServer:
    """POST /v1/chat/completions answered from `script[role]`: {"body", "status", "delay_s"}."""

    def __init__(self):
        self.script: dict[str, dict] = dict(NORMAL)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system = body["messages"][0]["content"]
                role = next(r for r in ("bull", "bear", "judge") if f"You are the {r.upper()}" in system)
                with server.lock:
                    server.requests.append({"path": self.path, "role": role, "body": body,
                                            "authorization": self.headers.get("Authorization")})
                    entry = server.script[role]
                time.sleep(entry.get("delay_s", 0.0))
                payload = entry["body"]
                if callable(payload):
                    payload = payload(self.headers)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(entry.get("status", 200))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def roles(self) -> list[str]:
        return [r["role"] for r in self.requests]


@pytest.fixture(scope="module")
def server():
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def llm(server):
    """Reset the script and request log; the server is shared by the module."""
    server.script = dict(NORMAL)
    server.requests.clear()
    return server


def backend(server: ScriptedServer, timeout_s: float = 5.0, max_retries: int = 0) -> OpenAIChatBackend:
    return OpenAIChatBackend(model=MODEL, api_key=API_KEY, base_url=server.base_url, timeout_s=timeout_s,
                             max_retries=max_retries, max_tokens=300)


async def new_run(db) -> str:
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    await RunRepository(db.pool).create_if_absent(
        run_id=run_id, slot_key=run_id, watchlist="test", as_of=AS_OF, tickers=["SPY"], seed=7,
        provider="simulated", config={})
    return run_id


# --- the debate's inputs ---------------------------------------------------------------------------

def sig(source, direction, conviction, edge, **evidence) -> Signal:
    return Signal(source=source, ticker="SPY", direction=direction, conviction=conviction, edge_type=edge,
                  horizon_days=10, as_of=AS_OF, evidence=evidence)


SIGNALS = [
    sig("flow", "bullish", 0.70, "dealer_short_gamma", total_gex=-1.2e9, zero_gamma=445.0, pcr_oi=0.85),
    sig("technical", "bullish", 0.60, "trend", rsi=58.2, adx=24.1, score=0.41),
    sig("social", "bearish", 0.30, "sentiment", mentions=120, baseline=80),
    sig("vol_surface", "rich", 0.55, "iv_rich_vs_realized", iv_rank=78.0, iv30=0.19, rv20=0.13),
]
CANDIDATE = Candidate(ticker="SPY", price_view="bullish", vol_view="rich", conviction=0.62, score=0.45,
                      vol_score=0.40, sources=["flow", "technical"], reasons=["2 of 4 analysts bullish"])
REGIME = Regime(name="neutral", vix=16.2, vix3m=18.1, term_ratio=16.2 / 18.1, realized_vol=0.13)
MEMORIES = ["2023-03-10 SPY neutral regime, dealers short gamma, bull put spread: +42% of max profit"]


class FixedMemory:
    async def recall(self, candidate, signals, regime):
        return list(MEMORIES)


# --- tests -------------------------------------------------------------------------------------------

async def test_a_debate_is_three_recorded_calls_and_the_judge_decides(db, llm):
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    debater = LLMDebater(backend(llm), calls=repo, memory=FixedMemory())

    verdict = await debater.debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)

    assert llm.roles() == ["bull", "bear", "judge"]
    assert all(r["path"] == "/v1/chat/completions" for r in llm.requests)
    assert all(r["authorization"] == f"Bearer {API_KEY}" for r in llm.requests)
    assert "response_format" not in llm.requests[0]["body"]
    assert llm.requests[2]["body"]["response_format"] == {"type": "json_object"}
    # the bear answers the bull, and the judge reads both; memories reach every prompt
    assert BULL_TEXT in llm.requests[1]["body"]["messages"][1]["content"]
    assert BEAR_TEXT in llm.requests[2]["body"]["messages"][1]["content"]
    assert all(MEMORIES[0] in r["body"]["messages"][1]["content"] for r in llm.requests)

    assert verdict.debater == f"llm:{MODEL}" and verdict.fallback_reason is None
    assert (verdict.price_view, verdict.vol_view, verdict.confidence) == ("bullish", "rich", 0.72)
    assert verdict.rationale == JUDGE_JSON["rationale"]
    assert [(t.role, t.round) for t in verdict.transcript] == [("bull", 1), ("bear", 1), ("judge", 1)]
    assert [t.text for t in verdict.transcript[:2]] == [BULL_TEXT, BEAR_TEXT]
    assert verdict.memories_used == MEMORIES

    calls = await repo.for_run(run_id)
    assert [(c.role, c.round, c.status, c.tokens_in, c.tokens_out) for c in calls] == [
        ("bull", 1, "ok", 101, 21), ("bear", 1, "ok", 102, 22), ("judge", 1, "ok", 103, 23)]
    assert [c.response for c in calls] == [BULL_TEXT, BEAR_TEXT, json.dumps(JUDGE_JSON)]
    assert all(c.model == MODEL and c.node == "debate" and c.ticker == "SPY" and c.latency_ms > 0 for c in calls)
    for call, request in zip(calls, llm.requests):
        # the recorded prompt is exactly what went over the wire, and its hash is sha256 of it
        sent = [{"role": m["role"], "content": m["content"]} for m in request["body"]["messages"]]
        assert call.messages == sent
        assert call.prompt_hash == hashlib.sha256(canonical_messages(sent).encode()).hexdigest()
    assert await repo.usage_by_run(run_id) == {"calls": 3, "tokens_in": 306, "tokens_out": 66}
    assert await repo.usage_by_ticker(run_id) == {"SPY": {"calls": 3, "tokens_in": 306, "tokens_out": 66}}


async def test_two_rounds_make_five_calls_in_debate_order(db, llm):
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    verdict = await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 2, run_id)
    assert llm.roles() == ["bull", "bear", "bull", "bear", "judge"]
    assert [(t.role, t.round) for t in verdict.transcript] == [
        ("bull", 1), ("bear", 1), ("bull", 2), ("bear", 2), ("judge", 2)]
    # round 2's bull sees round 1's bear
    assert "**Bear, round 1:** " + BEAR_TEXT in llm.requests[2]["body"]["messages"][1]["content"]
    assert [(c.role, c.round) for c in await repo.for_run(run_id)] == [
        ("bull", 1), ("bear", 1), ("bull", 2), ("bear", 2), ("judge", 2)]


@pytest.mark.parametrize("judge_text, problem", [
    ("The bull wins, clearly.", "not valid JSON"),
    (json.dumps({**JUDGE_JSON, "confidence": 1.7}), "confidence"),
    (json.dumps({k: v for k, v in JUDGE_JSON.items() if k != "vol_view"}), "vol_view"),
    (json.dumps({**JUDGE_JSON, "price_view": "moon"}), "price_view"),
])
async def test_a_malformed_judge_verdict_falls_back_and_is_recorded(db, llm, judge_text, problem):
    llm.script["judge"] = {"body": completion(judge_text, 90, 9)}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)

    verdict = await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)

    expected = deterministic_verdict(CANDIDATE, SIGNALS, REGIME, 1)
    assert verdict.debater == f"deterministic (fallback from llm:{MODEL}: malformed)"
    assert verdict.fallback_reason.startswith(f"llm:{MODEL} judge round 1: malformed: ")
    assert problem in verdict.fallback_reason
    assert (verdict.price_view, verdict.vol_view, verdict.confidence) == (
        expected.price_view, expected.vol_view, expected.confidence)
    # the LLM's arguments stay in the transcript; the ruling is the deterministic one
    assert [t.text for t in verdict.transcript] == [BULL_TEXT, BEAR_TEXT, expected.rationale]
    judge = (await repo.for_run(run_id))[-1]
    assert (judge.role, judge.status, judge.response, judge.tokens_out) == ("judge", "malformed", judge_text, 9)
    assert problem in judge.error


async def test_a_timeout_falls_back_within_the_client_timeout(db, llm):
    llm.script["bull"] = {"body": completion(BULL_TEXT, 1, 1), "delay_s": 2.0}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)

    started = time.perf_counter()
    verdict = await LLMDebater(backend(llm, timeout_s=0.5, max_retries=0), calls=repo).debate(
        CANDIDATE, SIGNALS, REGIME, 1, run_id)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.8  # gave up at the 0.5 s timeout, not at the server's 2 s
    assert llm.roles() == ["bull"]  # a failed turn ends the LLM debate: no bear, no judge
    assert verdict.debater == f"deterministic (fallback from llm:{MODEL}: timeout)"
    assert verdict == deterministic_verdict(CANDIDATE, SIGNALS, REGIME, 1).model_copy(
        update={"debater": verdict.debater, "fallback_reason": verdict.fallback_reason})
    [call] = await repo.for_run(run_id)
    assert (call.status, call.response, call.tokens_in) == ("timeout", None, None)
    assert 400 < call.latency_ms < 1800


async def test_a_refusal_falls_back(db, llm):
    llm.script["judge"] = {"body": completion(None, 80, 6, refusal="I can't help with trading decisions.")}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    verdict = await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    assert verdict.debater == f"deterministic (fallback from llm:{MODEL}: refused)"
    assert "I can't help with trading decisions." in verdict.fallback_reason
    judge = (await repo.for_run(run_id))[-1]
    assert (judge.status, judge.response) == ("refused", "I can't help with trading decisions.")


async def test_an_http_error_falls_back(db, llm):
    llm.script["bear"] = {"status": 503, "body": {"error": {"message": "overloaded", "type": "server_error"}}}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    verdict = await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    assert llm.roles() == ["bull", "bear"]
    assert verdict.debater == f"deterministic (fallback from llm:{MODEL}: http_error)"
    assert "HTTP 503" in verdict.fallback_reason
    assert [t.role for t in verdict.transcript] == ["bull", "judge"] and verdict.transcript[0].text == BULL_TEXT
    assert [c.status for c in await repo.for_run(run_id)] == ["ok", "http_error"]


async def test_a_recorded_debate_replays_with_no_network_and_the_same_verdict(db, llm):
    repo = LLMCallRepository(db.pool)
    original_run = await new_run(db)
    original = await LLMDebater(backend(llm), calls=repo, memory=FixedMemory()).debate(
        CANDIDATE, SIGNALS, REGIME, 2, original_run)
    llm.requests.clear()

    replay_run = await new_run(db)
    replayer = make_replay_debater(await repo.for_run(original_run), record_to=repo, memory=FixedMemory())
    replayed = await replayer.debate(CANDIDATE, SIGNALS, REGIME, 2, replay_run)

    assert llm.requests == []
    assert replayer.backend.served == 5
    assert replayed == original
    assert [(c.role, c.round, c.prompt_hash) for c in await repo.for_run(replay_run)] == [
        (c.role, c.round, c.prompt_hash) for c in await repo.for_run(original_run)]


async def test_a_recorded_fallback_replays_as_the_same_fallback(db, llm):
    llm.script["judge"] = {"body": completion("not json", 5, 5)}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    original = await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    llm.requests.clear()
    llm.script["bull"] = {"body": completion(BULL_TEXT, 1, 1), "delay_s": 2.0}  # would time out if asked
    replayed = await make_replay_debater(await repo.for_run(run_id)).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    assert llm.requests == [] and replayed == original and "malformed" in replayed.debater


async def test_a_diverged_replay_is_a_clear_error(db, llm):
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    llm.requests.clear()
    changed = [*SIGNALS[:-1], SIGNALS[-1].model_copy(update={"conviction": 0.56})]
    replayer = make_replay_debater(await repo.for_run(run_id))
    with pytest.raises(ReplayDivergence, match=r"no recorded LLM call for SPY bull round 1 with prompt sha256 "):
        await replayer.debate(CANDIDATE, changed, REGIME, 1, run_id)
    with pytest.raises(ReplayDivergence, match="recorded prompts for this turn: none"):
        await replayer.debate(CANDIDATE.model_copy(update={"ticker": "QQQ"}), SIGNALS, REGIME, 1, run_id)
    assert llm.requests == []


async def test_the_api_key_never_reaches_the_records_or_the_logs(db, llm, caplog):
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key back in its error body, as some gateways do
    llm.script["judge"] = {"status": 401, "body": lambda headers: {
        "error": {"message": f"invalid key {headers['Authorization']}", "type": "invalid_request_error"}}}
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    debater = LLMDebater(backend(llm), calls=repo)
    verdict = await debater.debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)

    assert all(r["authorization"] == f"Bearer {API_KEY}" for r in llm.requests)  # it was used
    assert "http_error" in verdict.debater and "***" in verdict.fallback_reason
    assert API_KEY not in verdict.model_dump_json()
    leaks = await db.pool.fetchval(
        "SELECT count(*) FROM llm_calls t WHERE strpos(t::text, $1) > 0", API_KEY)
    assert leaks == 0 and await db.pool.fetchval("SELECT count(*) FROM llm_calls") == 3
    assert all(API_KEY not in record.getMessage() for record in caplog.records)
    assert API_KEY not in repr(debater) + repr(debater.backend)


def test_make_debater_is_llm_only_when_an_endpoint_is_configured(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    decision = DecisionConfig()
    assert isinstance(make_debater(Settings(), decision, None), DeterministicDebater)
    local = make_debater(Settings(OPENAI_BASE_URL="http://127.0.0.1:9/v1"), decision, None)
    assert isinstance(local, LLMDebater) and local.name == f"llm:{defaults().llm.model}"
    keyed = make_debater(Settings(OPENAI_API_KEY=API_KEY), decision, None,
                         llm_config=LLMConfig(model="other-model", timeout_s=3, max_retries=1))
    assert keyed.name == "llm:other-model" and API_KEY not in repr(keyed)


def test_llm_config_is_optional_in_defaults():
    config = defaults().llm
    assert config.max_retries >= 0 and config.timeout_s > 0
    assert LLMConfig(timeout_s=0.5, max_retries=0).call_deadline_s == pytest.approx(1.5)
    with pytest.raises(ValueError):
        LLMConfig(timeout_s=0)


def test_prompts_are_package_templates_with_both_sections():
    for name in PROMPT_NAMES:
        text = load_prompt(name)
        assert "<!-- system -->" in text and "<!-- user -->" in text and "$ticker" in text
    with pytest.raises(ValueError, match="unknown prompt"):
        load_prompt("oracle")
    with pytest.raises(KeyError):
        render_messages("bull", {"ticker": "SPY"})  # a missing field is an error, not a blank


def test_parse_ruling_accepts_only_the_verdict_shape():
    assert parse_ruling("```json\n" + json.dumps(JUDGE_JSON) + "\n```").confidence == 0.72
    with pytest.raises(ValueError, match="confidence"):
        parse_ruling(json.dumps({**JUDGE_JSON, "confidence": -0.1}))


def test_prompt_hash_is_independent_of_key_order():
    a = [{"role": "user", "content": "x"}]
    b = [{"content": "x", "role": "user"}]
    assert prompt_hash(a) == prompt_hash(b) != prompt_hash([{"role": "user", "content": "y"}])


async def test_recorded_backend_needs_one_model(db, llm):
    repo = LLMCallRepository(db.pool)
    run_id = await new_run(db)
    await LLMDebater(backend(llm), calls=repo).debate(CANDIDATE, SIGNALS, REGIME, 1, run_id)
    calls = await repo.for_run(run_id)
    assert RecordedChatBackend(calls).model == MODEL
    mixed = [*calls, calls[0].__class__(**{**calls[0].__dict__, "id": 10**9, "model": "other"})]
    with pytest.raises(ValueError, match="several models"):
        RecordedChatBackend(mixed)
