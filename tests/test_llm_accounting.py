"""LLM accounting: every call with its prompt, response and HTTP attempts; the cost of a run in dollars."""
from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, strategies as st

from config.settings import ModelPrice, llm_prices
from service.cli import app
from service.operations import price_usage

SLOT = ["--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20T15:30"]


class FlakyLLMServer:
    """Chat Completions that answer every distinct request with HTTP 503 the first time and properly
    the second: each call succeeds after one retry by the client."""

    def __init__(self):
        self.requests = 0
        seen: set[str] = set()
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                with lock:
                    server.requests += 1
                    first = raw not in seen
                    seen.add(raw)
                if first:
                    data = b'{"error": {"message": "overloaded", "type": "server_error"}}'
                    self.send_response(503)
                else:
                    system = body["messages"][0]["content"]
                    role = next(r for r in ("bull", "bear", "judge") if f"You are the {r.upper()}" in system)
                    text = (json.dumps({"price_view": "neutral", "vol_view": "neutral", "confidence": 0.5,
                                        "rationale": "Neither side carried it."})
                            if role == "judge" else f"The {role} speaks.")
                    data = json.dumps({
                        "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": 1,
                        "model": "m", "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200},
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                    }).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky_llm():
    server = FlakyLLMServer()
    yield server
    server.stop()


def cli(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        app(list(args))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


def test_llm_calls_show_prompts_responses_retries_and_cost(cli_env, flaky_llm, monkeypatch, tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text('gpt-4o-mini: {input: "0.15", output: "0.60"}\n')
    monkeypatch.setenv("HEDGEGRAPH_LLM_PRICES", str(prices))
    monkeypatch.setenv("OPENAI_BASE_URL", flaky_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run_id = json.loads(cli(capsys, "run", *SLOT, "--json"))["run"]["run_id"]

    data = json.loads(cli(capsys, "llm", "calls", run_id, "--json"))
    calls, usage = data["calls"], data["usage"]
    assert calls and all(c["status"] == "ok" and c["attempts"] == 2 for c in calls)
    assert usage["calls"] == len(calls) and usage["retries"] == len(calls) == flaky_llm.requests // 2
    assert all(c["messages"][0]["role"] == "system" and c["response"] for c in calls)
    # 1000 tokens in at $0.15/M and 200 out at $0.60/M per call
    assert Decimal(usage["cost_usd"]) == len(calls) * (Decimal("0.00015") + Decimal("0.00012"))
    assert data["fallbacks"] == []

    table = cli(capsys, "llm", "calls", run_id, "--full")
    assert f"{len(calls)} retries" in table and "The bull speaks." in table and "You are the BULL" in table
    shown = cli(capsys, "runs", "show", run_id)
    assert f"cost ${float(usage['cost_usd']):.4f}" in shown and f"{len(calls)} retries" in shown


def test_a_model_without_a_price_has_no_cost_rather_than_zero():
    usage = {"calls": 3, "requests": 3, "retries": 0, "failed": 0, "tokens_in": 10, "tokens_out": 5}
    priced = price_usage({"local-model": usage}, prices={"gpt-4o-mini": ModelPrice(input="1", output="2")})
    assert priced["cost_usd"] is None and priced["by_model"]["local-model"]["cost_usd"] is None


def test_the_shipped_price_table_loads():
    assert llm_prices()["gpt-4o-mini"] == ModelPrice(input=Decimal("0.15"), output=Decimal("0.60"))


tokens = st.integers(min_value=0, max_value=10**9)
dollars = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)


@given(dollars, dollars, tokens, tokens, tokens, tokens)
def test_cost_is_exact_additive_and_never_negative(p_in, p_out, a_in, a_out, b_in, b_out):
    price = ModelPrice(input=p_in, output=p_out)
    together = price.cost(a_in + b_in, a_out + b_out)
    assert together == price.cost(a_in, a_out) + price.cost(b_in, b_out)
    assert together >= 0 and isinstance(together, Decimal)
    assert price.cost(a_in, a_out) == (p_in * a_in + p_out * a_out) / 1_000_000
