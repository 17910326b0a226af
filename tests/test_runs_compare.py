"""Comparing runs: one slot with and without the LLM, `runs list` filters, `runs diff`, full fork diffs."""
from __future__ import annotations

import json

import pytest

from service.cli import app
from tests.test_replay import LLMServer

SLOT = ["--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20T15:30"]


def cli(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        app(list(args))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


def ids(capsys, *args) -> list[str]:
    return [r["run_id"] for r in json.loads(cli(capsys, "runs", "list", *args, "--json"))]


@pytest.fixture
def llm_server():
    server = LLMServer()
    yield server
    server.stop()


def test_one_slot_with_and_without_the_llm_then_filter_and_diff(cli_env, llm_server, monkeypatch, capsys):
    plain = json.loads(cli(capsys, "run", *SLOT, "--json"))["run"]
    monkeypatch.setenv("OPENAI_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with_llm = json.loads(cli(capsys, "run", *SLOT, "--json"))
    debated = with_llm["run"]
    assert with_llm["executed"] and debated["run_id"] != plain["run_id"]  # a new run, not "already run"
    assert (plain["debater"], debated["debater"]) == ("deterministic", "llm:gpt-4o-mini")
    assert llm_server.requests  # the LLM did debate

    a, b = plain["run_id"], debated["run_id"]
    assert ids(capsys, "--debater", "llm") == [b]
    assert ids(capsys, "--debater", "llm:gpt-4o-mini") == [b]
    assert ids(capsys, "--debater", "deterministic") == [a]
    assert set(ids(capsys, "--ticker", "amzn")) == {a, b}
    assert ids(capsys, "--ticker", "TSLA") == []
    assert set(ids(capsys, "--since", "2026-11-20", "--until", "2026-11-20")) == {a, b}
    assert ids(capsys, "--since", "2026-11-21") == []
    assert ids(capsys, "--mode", "sandbox") == []
    assert set(ids(capsys, "--status", debated["status"])) >= {b}

    diff = json.loads(cli(capsys, "runs", "diff", a, b, "--json"))
    assert {"field": "debater", "a": "deterministic", "b": "llm:gpt-4o-mini"} in diff["inputs"]
    nodes = {n["node"]: n for n in diff["nodes"]}
    for same in ("load_context", "vol_surface", "flow", "technical", "social", "select_candidates"):
        assert nodes[same]["matched"] and nodes[same]["differences"] == [], same
    debate = nodes["debate"]
    assert not debate["matched"] and "debate" in diff["differing_nodes"]
    transcripts = [d for d in debate["differences"] if d["path"].endswith(".transcript")]
    assert transcripts, debate["differences"]
    lines = "\n".join(transcripts[0]["text_diff"])
    assert "+[bull r1] The bull case rests on the evidence table above." in lines
    assert transcripts[0]["original"] and transcripts[0]["other"]  # both transcripts, in full

    table = cli(capsys, "runs", "diff", a, b)
    assert "debate" in table and "differs at" in table


def test_runs_diff_of_an_unknown_run_is_one_line(cli_env, capsys):
    run_id = json.loads(cli(capsys, "run", *SLOT, "--json"))["run"]["run_id"]
    with pytest.raises(SystemExit) as exit_info:
        app(["runs", "diff", run_id, "nope"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and err == "error: no run nope\n"


def test_a_fork_in_json_lists_every_difference(cli_env, capsys):
    run_id = json.loads(cli(capsys, "run", *SLOT, "--json"))["run"]["run_id"]
    fork = json.loads(cli(capsys, "fork", run_id, "--at", "strategy_selector", "--set", "target_dte=60", "--json"))
    truncated = [n for n in fork["nodes"] if "more)" in n["diff"]]
    assert truncated, [n["diff"] for n in fork["nodes"]]
    for node in truncated:
        shown = node["diff"].count(" → ") + node["diff"].count("only in")
        more = int(node["diff"].rsplit("(+", 1)[1].split()[0])
        assert len(node["differences"]) == shown + more, node
