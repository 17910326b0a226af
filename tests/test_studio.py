"""LangGraph Studio's server (`langgraph dev`, from `langgraph.json`) on 127.0.0.1 against the test
database: the schemas render, a run started over its HTTP API executes against our database (its
nodes build their dependencies from the runtime context's configuration), and a run recorded by
`hedgegraph run` is readable there as a thread under its run id.

The server is the real `langgraph dev` process; nothing of ours is mocked.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from graph.studio import studio_thread_id
from service.cli import app as cli_app

from graph.deps import ContextError, RunContext, RunDeps, close_built, registered, run_deps
from graph.runner import RunRequest, execute_run
from domain.decision import RunInfo
from service.operations import default_account
from storage.database import connect
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

ROOT = Path(__file__).resolve().parents[1]
# `make test` builds this environment beside .venv (see the Makefile: langgraph-api and schemathesis
# cannot share one resolver); HEDGEGRAPH_LANGGRAPH names another `langgraph` executable.
LANGGRAPH = Path(os.environ.get("HEDGEGRAPH_LANGGRAPH", str(ROOT / ".venv-studio" / "bin" / "langgraph")))
TICKERS = ["AMZN", "JPM", "XLE"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def studio(fresh_database_url, tmp_path):
    """`langgraph dev` on a free local port, pointed at the test database; stopped afterwards."""
    if not LANGGRAPH.is_file():
        pytest.fail(f"{LANGGRAPH} not found: `make test` builds it (.venv-studio with langgraph-cli[inmem])")
    port = free_port()
    env = {**os.environ, "DATABASE_URL": fresh_database_url, "PYTHONPATH": str(ROOT),
           "HEDGEGRAPH_HOME": str(tmp_path / "home"), "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false",
           "LANGGRAPH_CLI_NO_ANALYTICS": "1", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    log = open(tmp_path / "langgraph-dev.log", "wb")
    proc = subprocess.Popen(
        [str(LANGGRAPH), "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser", "--no-reload",
         "--allow-blocking"],  # our embedded-database start and the simulated market are synchronous
        cwd=ROOT,  # langgraph.json's paths are relative to it (the server's own state: .langgraph_api/, ignored)
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"langgraph dev exited ({proc.returncode}): {(tmp_path / 'langgraph-dev.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("langgraph dev did not answer /ok within 120 s")
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


async def recorded_run(url: str) -> tuple[str, int]:
    db = await connect(url)
    try:
        request = RunRequest(watchlist="core", tickers=TICKERS, seed=7, provider="simulated",
                             as_of=__import__("datetime").datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK))
        outcome = await execute_run(db, request, SimulatedMarket(seed=7), account=default_account())
        return outcome.run.run_id, len(outcome.orders)
    finally:
        await db.close()


async def db_rows(url: str, sql: str, *args):
    db = await connect(url)
    try:
        return await db.pool.fetch(sql, *args)
    finally:
        await db.close()


def test_studio_renders_schemas_runs_against_our_database_and_opens_recorded_runs(studio, fresh_database_url, cli_env):
    recorded_id, recorded_orders = asyncio.run(recorded_run(fresh_database_url))
    assert recorded_orders > 0
    client = httpx.Client(base_url=studio, timeout=120)

    [assistant] = client.post("/assistants/search", json={"graph_id": "hedgegraph"}).json()
    schemas = client.get(f"/assistants/{assistant['assistant_id']}/schemas")
    assert schemas.status_code == 200, schemas.text
    body = schemas.json()
    context = body["context_schema"]["properties"]
    assert {"database_url", "provider", "seed", "debater", "decision"} <= set(context)
    assert "run" in body["input_schema"]["properties"] and "staged" in body["state_schema"]["properties"]

    # A run started from Studio: the input as Studio's form sends it (JSON), the context as configuration.
    thread = client.post("/threads", json={}).json()["thread_id"]
    run_info = {"run_id": "studio-run-1", "slot_key": "studio|2026-11-20|15:30", "watchlist": "studio",
                "as_of": "2026-11-20T15:30:00-05:00", "tickers": TICKERS, "seed": 7, "provider": "simulated",
                "mode": "live"}
    result = client.post(f"/threads/{thread}/runs/wait", json={
        "assistant_id": "hedgegraph", "input": {"run": run_info},
        "context": {"seed": 7, "decision": {"kelly_multiplier": 0.25}}})
    assert result.status_code == 200, result.text
    values = result.json()
    assert "__error__" not in values, values
    assert {o["ticker"] for o in values["staged"]}  # it staged orders (and waits for approval: below)
    state = client.get(f"/threads/{thread}/state").json()
    assert state["next"] == ["await_approval"]
    # it ran against our database: the run row (with the context's settings), its signals, its orders
    [row] = asyncio.run(db_rows(fresh_database_url, "SELECT config, status, mode FROM runs WHERE run_id = $1",
                                "studio-run-1"))
    assert row["config"]["kelly_multiplier"] == 0.25 and row["mode"] == "live"
    signals = asyncio.run(db_rows(fresh_database_url, "SELECT count(*) AS n FROM signals WHERE run_id = $1",
                                  "studio-run-1"))
    assert signals[0]["n"] == 4 * len(TICKERS)
    orders = asyncio.run(db_rows(fresh_database_url, "SELECT state FROM orders WHERE run_id = $1", "studio-run-1"))
    assert len(orders) == len(values["staged"]) and {o["state"] for o in orders} == {"STAGED"}
    # ... and was checkpointed in our database too (Studio's checkpointer is ours)
    checkpoints = asyncio.run(db_rows(fresh_database_url, "SELECT count(*) AS n FROM checkpoints WHERE thread_id = $1",
                                      thread))
    assert checkpoints[0]["n"] > 0

    # A recorded run opens in Studio: `hedgegraph runs studio RUN` makes it a thread there.
    opened = cli_env.invoke(cli_app, ["runs", "studio", recorded_id, "--url", studio, "--json"])
    assert opened.exit_code == 0, opened.output
    thread_id = json.loads(opened.output)["thread_id"]
    assert thread_id == studio_thread_id(recorded_id)
    recorded = client.get(f"/threads/{thread_id}/state")
    assert recorded.status_code == 200, recorded.text
    recorded_values = recorded.json()["values"]
    assert recorded_values["run"]["run_id"] == recorded_id and len(recorded_values["staged"]) == recorded_orders
    assert recorded.json()["next"] == ["await_approval"]
    history = client.post(f"/threads/{thread_id}/history", json={"limit": 100})
    assert history.status_code == 200 and len(history.json()) >= 12  # every step of the recorded run
    shown = client.get(f"/threads/{thread_id}").json()
    assert shown["metadata"]["graph_id"] == "hedgegraph"  # listed among the graph's threads
    again = cli_env.invoke(cli_app, ["runs", "studio", recorded_id, "--url", studio])  # opening twice is harmless
    assert again.exit_code == 0 and thread_id in again.output
    for args, message in [(["runs", "studio", "nope", "--url", studio], "run nope has no checkpoints"),
                          (["runs", "studio", recorded_id, "--url", f"http://127.0.0.1:{free_port()}"],
                           "no LangGraph server at")]:
        result = cli_env.invoke(cli_app, args)
        assert result.exit_code == 2 and message in result.output, result.output

    # bad context: one clear error, not a missing-argument crash
    thread2 = client.post("/threads", json={}).json()["thread_id"]
    bad = client.post(f"/threads/{thread2}/runs/wait", json={
        "assistant_id": "hedgegraph", "input": {"run": {**run_info, "run_id": "studio-run-2"}},
        "context": {"decision": {"kelly_multiplier": 7}}}).json()
    assert "kelly_multiplier" in str(bad.get("__error__", bad))


async def test_run_deps_come_from_the_runner_or_from_configuration(db, fresh_database_url):
    run = RunInfo(run_id="ctx-1", slot_key="s|2026-11-20|15:30", watchlist="s",
                  as_of=__import__("datetime").datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK),
                  tickers=TICKERS, seed=7, provider="simulated")
    live = object.__new__(RunDeps)
    with registered(live) as context:
        assert await run_deps(context, run) is live
        assert await run_deps({"deps_key": context.deps_key}, run) is live
        key = context.deps_key
    with pytest.raises(ContextError, match="no live dependencies registered"):
        await run_deps(RunContext(deps_key=key), run)

    try:
        await built_from_configuration(db, fresh_database_url, run)
    finally:
        await close_built()


async def built_from_configuration(db, fresh_database_url, run):
    built = await run_deps({"database_url": fresh_database_url, "decision": {"debate_rounds": 2}}, run)
    assert built.decision.debate_rounds == 2 and built.broker is None and built.clock() == run.as_of
    again = await run_deps({"database_url": fresh_database_url, "decision": {"debate_rounds": 2}}, run)
    assert again is built  # built once per process and run
    [row] = await db.pool.fetch("SELECT config, mode FROM runs WHERE run_id = 'ctx-1'")
    assert row["config"]["debate_rounds"] == 2
    for context, message in [
        ({"provider": "ibkr"}, "provider 'ibkr' cannot be built"),
        ({"debater": "oracle"}, "debater 'oracle'"),
        ({"decision": {"kelly": 1}}, "unknown decision settings"),
        ({"colour": "red"}, "bad runtime context"),
    ]:
        with pytest.raises(ContextError, match=message):
            await run_deps({"database_url": fresh_database_url, **context}, run)
