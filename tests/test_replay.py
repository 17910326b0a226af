"""Replay, fork and trace inspection on the embedded Postgres and the simulated market.

The original runs are real decision runs (the deterministic debater, or the LLM debater over real
HTTP against a local OpenAI-compatible server that counts its requests); replays and forks run the
real graph in sandbox runs. Nothing of ours is mocked.
"""
from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agents.llm_debate import LLMDebater, OpenAIChatBackend
from config.settings import DecisionConfig
from graph.compare import COMPARED_NODES, value_differences
from graph.graph import build_graph
from graph.replay import (
    FORKABLE_NODES, RecordedInputMismatch, RecordedProvider, ReplayError, fork_predecessor, fork_run,
    parse_overrides, replay_run,
)
from graph.runner import RunRequest, execute_run
from graph.trace import TraceError, run_steps, state_at_step
from service import operations
from service.cli import app as cli_app
from service.operations import default_account
from storage.llm_calls import LLMCallRepository
from storage.runs import RunRepository
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
TICKERS = ["AMZN", "JPM", "XLE"]
ANALYST_NODES = {"vol_surface", "flow", "technical", "social"}
AFTER_SELECT = ["select_candidates", "debate", "risk_gate", "strategy_selector", "kelly_allocator",
                "post_trade_check", "stage_orders"]


def request(**overrides) -> RunRequest:
    values = dict(watchlist="core", tickers=TICKERS, as_of=AS_OF, seed=7, provider="simulated")
    values.update(overrides)
    return RunRequest(**values)


async def original_run(db, **dep_options):
    outcome = await execute_run(db, request(), SimulatedMarket(seed=7), account=default_account(), **dep_options)
    assert outcome.orders, "seed 7 on 2026-11-20 stages an order: the tests below need one"
    return outcome


async def count(db, sql, *args) -> int:
    return await db.pool.fetchval(sql, *args)


async def final_state(db, run_id: str) -> dict:
    app = build_graph().compile(checkpointer=db.checkpointer)
    return dict((await app.aget_state({"configurable": {"thread_id": run_id}})).values)


def order_view(items) -> list[tuple]:
    return sorted((o.ticker, o.structure, o.quantity, o.limit_price) for o in items)


# --- replay --------------------------------------------------------------------------------------------

async def test_a_replay_matches_every_node_and_stages_nothing(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id
    orders_before = await count(db, "SELECT count(*) FROM orders")
    history_before = await count(db, "SELECT count(*) FROM order_state_history")

    report = await replay_run(db, run_id)

    assert [n.node for n in report.nodes] == list(COMPARED_NODES)
    assert report.matched and report.differing_nodes == []
    assert all(n.matched and n.rerun and n.diff == "" for n in report.nodes)
    assert report.replay_run_id == f"{run_id}~replay1"
    assert (report.debater, report.llm_calls_served) == ("deterministic", 0)

    replay = await RunRepository(db.pool).get(report.replay_run_id)
    assert (replay.mode, replay.parent_run_id, replay.status, replay.provider) == ("sandbox", run_id, "completed", "recorded")
    assert replay.config == outcome.run.config
    state = await final_state(db, report.replay_run_id)
    assert state["run"].run_id == report.replay_run_id and state["run"].mode == "sandbox"
    # the same orders, decided again, but only in the sandbox's state: none reached the order book
    assert order_view(state["staged"]) == order_view(outcome.orders)
    assert not {o.order_id for o in state["staged"]} & {o.order_id for o in outcome.orders}
    assert await count(db, "SELECT count(*) FROM orders") == orders_before
    assert await count(db, "SELECT count(*) FROM order_state_history") == history_before
    assert await count(db, "SELECT count(*) FROM broker_orders") == 0
    assert await count(db, "SELECT count(*) FROM executions") == 0
    assert state["awaiting"] == [] and state["executions"] == []  # no interrupt waited for an approver
    # it saw the very bytes the original recorded
    hashes = await db.pool.fetch("SELECT run_id, sha256 FROM market_snapshots ORDER BY run_id")
    assert len(hashes) == 2 and hashes[0]["sha256"] == hashes[1]["sha256"]
    assert state["context"].snapshot_sha256 == outcome.state["context"].snapshot_sha256

    again = await replay_run(db, run_id)
    assert again.replay_run_id == f"{run_id}~replay2" and again.matched


async def test_a_replay_of_an_llm_debate_serves_the_recording_with_no_network(db, llm_server):
    debater = LLMDebater(OpenAIChatBackend(model="test-model", api_key="sk-test", base_url=llm_server.base_url,
                                           timeout_s=5.0, max_retries=0), calls=LLMCallRepository(db.pool))
    outcome = await original_run(db, debater=debater)
    run_id = outcome.run.run_id
    candidates = outcome.state["candidates"]
    sent = len(llm_server.requests)
    assert candidates and sent == 3 * len(candidates)  # bull, bear, judge per debated ticker (1 round)
    assert {v.debater for v in outcome.state["verdicts"]} == {"llm:test-model"}
    usage = (await operations.show_run(db, run_id))["llm_usage"]
    assert usage == {"calls": sent, "tokens_in": sent * 100, "tokens_out": sent * 20}
    llm_server.stop()  # a replay that tried the network would now fail and fall back, visibly

    report = await replay_run(db, run_id)

    assert report.matched, report.differing_nodes
    assert len(llm_server.requests) == sent
    assert (report.debater, report.llm_calls_served) == ("recorded llm:test-model", sent)
    assert await count(db, "SELECT count(*) FROM llm_calls WHERE run_id = $1", report.replay_run_id) == 0
    replayed = await final_state(db, report.replay_run_id)
    assert [v.transcript for v in replayed["verdicts"]] == [v.transcript for v in outcome.state["verdicts"]]

    # Two debate rounds ask the LLM what it was never asked: the recording cannot answer, and the
    # fork says so instead of calling out.
    with pytest.raises(ReplayError, match="never sent"):
        await fork_run(db, run_id, "debate", {"debate_rounds": 2})
    assert len(llm_server.requests) == sent


# --- fork ----------------------------------------------------------------------------------------------

async def test_a_fork_with_a_high_conviction_threshold_stages_nothing(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id
    assert max(c.conviction for c in outcome.state["candidates"]) < 0.95

    report = await fork_run(db, run_id, "select_candidates", {"conviction_threshold": 0.95})

    assert report.fork_run_id == f"{run_id}~fork1"
    assert report.staged == [] and [o["ticker"] for o in report.original_staged] == [o.ticker for o in outcome.orders]
    assert report.differing_nodes == AFTER_SELECT
    by_node = {n.node: n for n in report.nodes}
    for node in ("load_context", *ANALYST_NODES):  # copied from the original checkpoint, not re-run
        assert by_node[node].matched and not by_node[node].rerun
    assert all(by_node[n].rerun for n in AFTER_SELECT)
    assert by_node["select_candidates"].diff == "; ".join(
        f"candidates.{c.ticker}: only in original" for c in outcome.state["candidates"])
    fork = await RunRepository(db.pool).get(report.fork_run_id)
    assert (fork.mode, fork.parent_run_id, fork.status) == ("sandbox", run_id, "completed")
    assert fork.config == {**outcome.run.config, "conviction_threshold": 0.95} == report.config
    state = await final_state(db, report.fork_run_id)
    assert state["run"].run_id == report.fork_run_id and state["run"].mode == "sandbox"
    assert state["candidates"] == [] and state["staged"] == []
    assert state["signals"] == outcome.state["signals"]
    # analysts did not run again: the fork stored no signals of its own
    assert await count(db, "SELECT count(*) FROM signals WHERE run_id = $1", report.fork_run_id) == 0
    assert await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)

    # A setting outside its range is refused before any sandbox run is made.
    runs_before = await count(db, "SELECT count(*) FROM runs")
    with pytest.raises(ReplayError, match="kelly_multiplier=2.0"):
        await fork_run(db, run_id, "kelly_allocator", {"kelly_multiplier": 2.0})
    with pytest.raises(ReplayError, match="unknown decision settings"):
        await fork_run(db, run_id, "kelly_allocator", {"kelly_multipler": 0.2})
    assert await count(db, "SELECT count(*) FROM runs") == runs_before


async def test_a_fork_at_kelly_changes_only_sizing_and_what_follows(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id
    [sized] = [t for t in outcome.state["sized"] if t.contracts > 0]

    report = await fork_run(db, run_id, "kelly_allocator", {"kelly_multiplier": 0.001})

    assert report.differing_nodes == ["kelly_allocator", "post_trade_check", "stage_orders"]
    by_node = {n.node: n for n in report.nodes}
    assert f"sized.{sized.proposal.ticker}.contracts: {sized.contracts} → 0" in by_node["kelly_allocator"].diff
    assert [n.node for n in report.nodes if n.rerun] == ["kelly_allocator", "post_trade_check", "stage_orders"]
    assert report.staged == []
    # the debate and the gate were not re-executed: the fork wrote no debate or pre-trade rows
    assert await count(db, "SELECT count(*) FROM debates WHERE run_id = $1", report.fork_run_id) == 0
    assert await count(db, "SELECT count(*) FROM risk_decisions WHERE run_id = $1 AND stage = 'pre_trade'",
                       report.fork_run_id) == 0

    # More debate rounds change the transcript, not the deterministic judge's decision.
    rounds = await fork_run(db, run_id, "debate", {"debate_rounds": 2})
    assert rounds.fork_run_id == f"{run_id}~fork2"
    assert rounds.differing_nodes == ["debate"]
    assert "rounds: 1 → 2" in {n.node: n for n in rounds.nodes}["debate"].diff
    assert order_view_dicts(rounds.staged) == order_view_dicts(rounds.original_staged)

    # From the top with nothing changed, a fork is a replay.
    same = await fork_run(db, run_id, "load_context", {})
    assert same.differing_nodes == [] and all(n.rerun for n in same.nodes)


def order_view_dicts(items: list[dict]) -> list[tuple]:
    return sorted((o["ticker"], o["structure"], o["quantity"], o["limit_price"]) for o in items)


async def test_bad_forks_and_replays_are_clear_errors(db):
    with pytest.raises(ReplayError, match="cannot fork at 'nope'; forkable nodes: load_context, vol_surface, flow, "
                                          "technical, social, select_candidates"):
        fork_predecessor("nope")
    with pytest.raises(ReplayError, match="cannot fork at 'aggregate_signals'"):
        await fork_run(db, "whatever", "aggregate_signals", {})
    with pytest.raises(ReplayError, match="no run nope"):
        await replay_run(db, "nope")
    with pytest.raises(ReplayError, match="no run nope"):
        await fork_run(db, "nope", "debate", {})
    assert [fork_predecessor(n) for n in FORKABLE_NODES] == [
        None, "load_context", "load_context", "load_context", "load_context", "aggregate_signals", "select_candidates", "debate", "risk_gate", "strategy_selector",
        "kelly_allocator", "post_trade_check"]
    # a run that never recorded its market cannot be replayed
    await RunRepository(db.pool).create_if_absent(
        run_id="empty", slot_key="s", watchlist="w", as_of=AS_OF, tickers=TICKERS, seed=7, provider="simulated",
        config={})
    with pytest.raises(ReplayError, match="recorded no market snapshot"):
        await replay_run(db, "empty")


# --- settings and the recorded provider -----------------------------------------------------------

def test_parse_overrides_types_values_by_the_config_field():
    assert parse_overrides(["kelly_multiplier=0.25", "debate_rounds=2", "short_delta = 0.2"]) == {
        "kelly_multiplier": 0.25, "debate_rounds": 2, "short_delta": 0.2}
    assert type(parse_overrides(["debate_rounds=3"])["debate_rounds"]) is int
    assert parse_overrides([]) == {}
    with pytest.raises(ReplayError, match="unknown decision setting 'kelly'; known: .*kelly_multiplier"):
        parse_overrides(["kelly=0.5"])
    with pytest.raises(ReplayError, match="debate_rounds takes a finite int, got '2.5'"):
        parse_overrides(["debate_rounds=2.5"])
    with pytest.raises(ReplayError, match="kelly_multiplier takes a finite float, got 'nan'"):
        parse_overrides(["kelly_multiplier=nan"])
    with pytest.raises(ReplayError, match="key=value"):
        parse_overrides(["kelly_multiplier"])
    with pytest.raises(ReplayError, match="set twice"):
        parse_overrides(["debate_rounds=2", "debate_rounds=3"])
    # the parsed values build a valid configuration
    config = DecisionConfig().with_overrides(parse_overrides(["conviction_threshold=0.95", "target_dte=21"]))
    assert (config.conviction_threshold, config.target_dte) == (0.95, 21)


def test_recorded_provider_answers_only_the_recorded_request():
    snapshot = SimulatedMarket(seed=7).snapshot(TICKERS, AS_OF)
    provider = RecordedProvider(snapshot, as_of=AS_OF, tickers=TICKERS)
    assert provider.name == "recorded"
    # the same instant in another zone and the tickers in another order are the same request
    assert provider.snapshot(list(reversed(TICKERS)), AS_OF.astimezone(timezone.utc)) is snapshot
    with pytest.raises(RecordedInputMismatch, match="cannot answer for 2026-11-20T15:31"):
        provider.snapshot(TICKERS, AS_OF.replace(minute=31))
    with pytest.raises(RecordedInputMismatch, match=r"not recorded: \['SPY'\]"):
        provider.snapshot([*TICKERS, "SPY"], AS_OF)
    with pytest.raises(RecordedInputMismatch, match=r"recorded but not asked: \['XLE'\]"):
        provider.snapshot(["AMZN", "JPM"], AS_OF)


def test_value_differences_reports_paths_and_tolerates_only_rounding():
    a = {"AMZN": {"contracts": 13, "fraction": 0.03, "legs": [1, 2]}, "JPM": {"x": 1}}
    assert value_differences(a, json.loads(json.dumps(a)), "", "fork") == []
    assert value_differences({"p": 0.1 + 0.2}, {"p": 0.3}, "", "fork") == []  # last-bit rounding
    b = {"AMZN": {"contracts": 0, "fraction": 0.0301, "legs": [1]}, "XLE": {"x": 2}}
    assert value_differences(a, b, "", "fork") == [
        "AMZN.contracts: 13 → 0", "AMZN.fraction: 0.03 → 0.0301", "AMZN.legs: 2 items → 1",
        "JPM: only in original", "XLE: only in fork"]


# --- the trace -------------------------------------------------------------------------------------------

async def test_run_steps_list_the_nodes_in_order_with_durations(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id

    steps = await run_steps(db, run_id)

    nodes = [set(s.nodes) if len(s.nodes) > 1 else s.nodes[0] for s in steps]
    assert nodes == ["__start__", "load_context", ANALYST_NODES, "aggregate_signals", "select_candidates", "debate",
                     "risk_gate", "strategy_selector", "kelly_allocator", "post_trade_check", "stage_orders",
                     "await_approval"]
    assert [s.step for s in steps] == list(range(len(steps)))
    assert [s.status for s in steps] == ["done"] * (len(steps) - 1) + ["interrupted"]  # waiting for approval
    analysts = steps[2]
    assert analysts.tasks == 4 * len(TICKERS) and analysts.writes == [f"signals +{4 * len(TICKERS)}"]
    by_node = {s.nodes[0]: s for s in steps if len(s.nodes) == 1}
    assert by_node["select_candidates"].writes == [f"candidates {len(outcome.state['candidates'])}"]
    assert by_node["debate"].writes == [f"verdicts {len(outcome.state['verdicts'])}"]
    assert by_node["stage_orders"].writes == [f"staged {len(outcome.orders)}"]
    assert by_node["__start__"].writes == ["run"] and by_node["aggregate_signals"].writes == []
    for step in steps[:-1]:
        assert step.duration_ms is not None and step.duration_ms >= 0
        # a step's wall time spans the time its node reports (checkpoints are written around it)
        # and so does each node's (parallel tasks: their span, never the sum of their times)
        for node, wall in step.node_ms.items():
            assert step.duration_ms + 1.0 >= wall
            assert wall <= step.task_ms[node] + 1.0 or step.node_tasks[node] > 1
    assert by_node["load_context"].node_ms["load_context"] > 0
    assert steps[-1].duration_ms is None
    assert analysts.node_tasks == {name: len(TICKERS) for name in ANALYST_NODES}
    for name in ANALYST_NODES:  # a node's wall time is the span of its tasks within the step, not their sum
        timings = [t for t in outcome.state["node_timings"] if t.node == name]
        start = min(t.started_at for t in timings)
        end = max(t.started_at + timedelta(milliseconds=t.duration_ms) for t in timings)
        assert analysts.node_ms[name] == pytest.approx((end - start).total_seconds() * 1000.0, abs=0.01)
        assert analysts.task_ms[name] == pytest.approx(sum(t.duration_ms for t in timings), abs=0.01)
        assert 0 < analysts.node_ms[name] <= analysts.duration_ms + 1.0

    # every step --steps lists can be read with --step N, the unfinished last one included
    for step in steps:
        at = await state_at_step(db, run_id, step.step)
        assert (at["step"], at["status"], at["checkpoint_id"]) == (step.step, step.status, step.checkpoint_id)
        assert at["finished"] == (step.status == "done")
    waiting = await state_at_step(db, run_id, steps[-1].step)
    assert waiting["next"] == ["await_approval"] and len(waiting["values"]["staged"]) == len(outcome.orders)

    select = by_node["select_candidates"].step
    state = await state_at_step(db, run_id, select)
    assert json.loads(json.dumps(state, allow_nan=False)) == state  # plain JSON, no NaN
    assert state["next"] == ["debate"] and "verdicts" not in state["values"]
    assert state["values"]["candidates"] == [c.model_dump(mode="json") for c in outcome.state["candidates"]]
    assert state["values"]["run"]["run_id"] == run_id
    with pytest.raises(TraceError, match=f"run {run_id} has no step 99; its steps are 0..{steps[-1].step}"):
        await state_at_step(db, run_id, 99)
    with pytest.raises(TraceError, match="run nope has no checkpoints"):
        await run_steps(db, "nope")

    # a fork's trace starts with the state it copied, then only the nodes it ran
    fork = await fork_run(db, run_id, "kelly_allocator", {"kelly_multiplier": 0.001})
    fork_steps = await run_steps(db, fork.fork_run_id)
    assert fork_steps[0].status == "update" and "signals +12" in fork_steps[0].writes
    assert [s.nodes[0] for s in fork_steps[1:4]] == ["kelly_allocator", "post_trade_check", "stage_orders"]
    assert {s.status for s in fork_steps[1:]} == {"done"}  # a sandbox never waits for approval
    for step in fork_steps:
        assert (await state_at_step(db, fork.fork_run_id, step.step))["checkpoint_id"] == step.checkpoint_id


# --- LangGraph Studio -------------------------------------------------------------------------------

def test_studio_graph_is_compiled_without_our_checkpointer():
    from graph.studio import make_graph

    root = Path(__file__).resolve().parents[1]
    config = json.loads((root / "langgraph.json").read_text())
    path, _, name = config["graphs"]["hedgegraph"].partition(":")
    assert (root / path).is_file() and name == "make_graph"
    graph = make_graph()
    assert graph.checkpointer is None
    assert {"load_context", "debate", "stage_orders", "await_approval"} <= set(graph.nodes)


# --- the command line ----------------------------------------------------------------------------------

def invoke(runner, *args):
    result = runner.invoke(cli_app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_replay_fork_and_steps_from_the_command_line(cli_env):
    run = json.loads(invoke(cli_env, "run", "--tickers", ",".join(TICKERS), "--as-of", "2026-11-20T15:30", "--json"))
    run_id = run["run"]["run_id"]

    replay = json.loads(invoke(cli_env, "replay", run_id, "--json"))
    assert replay["matched"] and replay["replay_run_id"] == f"{run_id}~replay1"
    assert [n["node"] for n in replay["nodes"]] == list(COMPARED_NODES)
    table = invoke(cli_env, "replay", run_id)
    assert "every node matched" in table and "stage_orders" in table

    fork = json.loads(invoke(cli_env, "fork", run_id, "--at", "select_candidates", "--set", "conviction_threshold=0.95",
                             "--json"))
    assert fork["staged"] == [] and fork["differing_nodes"] == AFTER_SELECT
    assert fork["overrides"] == {"conviction_threshold": 0.95}

    steps = json.loads(invoke(cli_env, "runs", "show", run_id, "--steps", "--json"))
    assert [s["nodes"][0] for s in steps][:2] == ["__start__", "load_context"]
    state = json.loads(invoke(cli_env, "runs", "show", run_id, "--step", "4", "--json"))
    assert state["step"] == 4 and state["next"] == ["debate"]
    shown = invoke(cli_env, "runs", "show", run_id)
    assert "LLM calls 0, tokens in 0, out 0" in shown
    table = invoke(cli_env, "runs", "show", run_id, "--steps")
    assert "select_candidates" in table and "wall ms" in table and "sum of tasks" not in table
    assert f"vol_surface" in table and f"({len(TICKERS)} tasks:" in table  # span, then the tasks' own total
    for listed in steps:  # --steps and --step N agree on which steps exist
        at = json.loads(invoke(cli_env, "runs", "show", run_id, "--step", str(listed["step"]), "--json"))
        assert at["checkpoint_id"] == listed["checkpoint_id"]

    for args, message in [
        (["fork", run_id, "--at", "select_candidates", "--set", "kelly=1"], "unknown decision setting 'kelly'"),
        (["fork", run_id, "--at", "aggregate_signals"], "cannot fork at 'aggregate_signals'"),
        (["replay", "nope"], "no run nope"),
        (["runs", "show", run_id, "--step", "99"], "has no step 99"),
    ]:
        result = cli_env.invoke(cli_app, args)
        assert result.exit_code == 2 and message in result.output, result.output


# --- a local OpenAI-compatible server -------------------------------------------------------------------

class LLMServer:
    """Chat Completions over HTTP: bull and bear argue, the judge agrees with the analysts'
    aggregate (read from the prompt); every request is counted."""

    def __init__(self):
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                system, user = body["messages"][0]["content"], body["messages"][1]["content"]
                role = next(r for r in ("bull", "bear", "judge") if f"You are the {r.upper()}" in system)
                server.requests.append(role)
                if role == "judge":
                    view = next((v for v in ("bullish", "bearish") if f"price view {v}" in user), "neutral")
                    vol = next((v for v in ("rich", "cheap") if f"volatility view {v}" in user), "neutral")
                    text = json.dumps({"price_view": view, "vol_view": vol, "confidence": 0.6,
                                       "rationale": f"The analysts' aggregate is {view}; the bear did not refute it."})
                else:
                    text = f"The {role} case rests on the evidence table above."
                data = json.dumps({
                    "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": 1, "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


@pytest.fixture
def llm_server():
    server = LLMServer()
    yield server
    server.stop()
