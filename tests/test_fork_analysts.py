"""Forking at a single analyst: only that analyst's per-ticker tasks run again (the other analysts'
original results are recorded as finished tasks of the same fan-out), then everything after them;
and `--set` checked against the `DecisionConfig` schema before any fork run is written.

Real decision runs on the embedded Postgres and the simulated market; nothing of ours is mocked.
"""
from __future__ import annotations

from collections import Counter

import pytest

from agents.analysts import ANALYSTS
from graph.replay import ReplayError, fork_run
from graph.trace import run_steps
from service.cli import app as cli_app
from storage.runs import RunRepository
from tests.test_replay import TICKERS, count, final_state, original_run


def signal_view(signals) -> list[tuple]:
    return sorted((s.source, s.ticker, s.direction, s.conviction) for s in signals)


async def test_a_fork_at_one_analyst_reruns_only_its_tasks_and_what_follows(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id

    report = await fork_run(db, run_id, "vol_surface", {"conviction_threshold": 0.95})

    by_node = {n.node: n for n in report.nodes}
    assert [n.node for n in report.nodes if not n.rerun] == ["load_context", "flow", "technical", "social"]
    assert by_node["vol_surface"].rerun and by_node["vol_surface"].matched  # same inputs, same signal
    assert report.staged == [] and report.differing_nodes[0] == "select_candidates"
    state = await final_state(db, report.fork_run_id)
    assert state["run"].run_id == report.fork_run_id and state["run"].mode == "sandbox"
    # every analyst's signal is there once per ticker: three copied, one recomputed
    assert signal_view(state["signals"]) == signal_view(outcome.state["signals"])
    assert Counter(s.source for s in state["signals"]) == {name: len(TICKERS) for name in ANALYSTS}
    # and only the vol_surface tasks ran: the analysts' step timed nothing else
    timed = Counter(t.node for t in state["node_timings"] if t.node in ANALYSTS)
    assert timed == {"vol_surface": len(TICKERS)}
    [analyst_step] = [s for s in await run_steps(db, report.fork_run_id) if "vol_surface" in s.nodes]
    assert analyst_step.tasks == len(ANALYSTS) * len(TICKERS) and set(analyst_step.node_ms) == {"vol_surface"}
    # aggregate_signals ran again and stored the whole set under the fork
    assert await count(db, "SELECT count(*) FROM signals WHERE run_id = $1", report.fork_run_id) == \
        len(ANALYSTS) * len(TICKERS)
    assert await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)  # a sandbox stages nothing real

    # with nothing changed, a fork at another analyst reproduces the original throughout
    same = await fork_run(db, run_id, "social", {})
    assert same.differing_nodes == [], same.differing_nodes
    assert [n.node for n in same.nodes if n.rerun][:1] == ["social"]


async def test_fork_settings_are_checked_against_the_config_schema_before_anything_is_written(db):
    outcome = await original_run(db)
    run_id = outcome.run.run_id
    runs_before = await count(db, "SELECT count(*) FROM runs")
    for overrides, message in [
        ({"conviction_treshold": 0.5}, "unknown decision settings"),
        ({"jade_lizard_short_put": "sometimes"}, "jade_lizard_short_put='sometimes'"),
        ({"min_agreeing_sources": 9}, "min_agreeing_sources=9"),
    ]:
        with pytest.raises(ReplayError, match=message):
            await fork_run(db, run_id, "flow", overrides)
    assert await count(db, "SELECT count(*) FROM runs") == runs_before
    ok = await fork_run(db, run_id, "technical", {"jade_lizard_short_put": "cash_secured"})
    assert (await RunRepository(db.pool).get(ok.fork_run_id)).config["jade_lizard_short_put"] == "cash_secured"


def test_fork_at_an_analyst_and_bad_settings_on_the_command_line(cli_env):
    import json

    from tests.test_replay import invoke

    run = json.loads(invoke(cli_env, "run", "--tickers", ",".join(TICKERS), "--as-of", "2026-11-20T15:30", "--json"))
    run_id = run["run"]["run_id"]
    fork = json.loads(invoke(cli_env, "fork", run_id, "--at", "vol_surface", "--set", "kelly_multiplier=0.25", "--json"))
    assert fork["at_node"] == "vol_surface" and fork["overrides"] == {"kelly_multiplier": 0.25}
    assert [n["node"] for n in fork["nodes"] if not n["rerun"]] == ["load_context", "flow", "technical", "social"]
    for sets, message in [
        (["kelly=1"], "unknown decision setting 'kelly'; known: approval_ttl_market_minutes"),
        (["kelly_multiplier=lots"], "kelly_multiplier takes a finite float, got 'lots'"),
        (["kelly_multiplier=nan"], "kelly_multiplier takes a finite float"),
        (["kelly_multiplier=3"], "kelly_multiplier=3.0: Input should be less than or equal to 1"),
        (["debate_rounds=1.5"], "debate_rounds takes a finite int"),
        (["debate_rounds=2", "debate_rounds=3"], "debate_rounds is set twice"),
        (["jade_lizard_short_put=always"], "jade_lizard_short_put='always'"),
        (["conviction_threshold"], "--set takes key=value"),
    ]:
        args = ["fork", run_id, "--at", "flow"] + [a for s in sets for a in ("--set", s)]
        result = cli_env.invoke(cli_app, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
    shown = json.loads(invoke(cli_env, "runs", "list", "--mode", "sandbox", "--json"))
    assert [r["run_id"] for r in shown] == [fork["fork_run_id"]]  # the refused forks wrote nothing
