"""`runs export` and `replay --from-file`: a run recorded in one fresh database, written to one file,
imported into another fresh database and replayed there node by node, with no network.

The original is a real LLM-debated run against a local OpenAI-compatible server (stopped before the
replay, so any network call would show); both databases are real embedded Postgres databases.
"""
from __future__ import annotations

import json
import uuid
import zipfile
from urllib.parse import urlsplit, urlunsplit

import pytest

from agents.llm_debate import LLMDebater, OpenAIChatBackend
from graph.compare import COMPARED_NODES
from graph.run_export import TraceFileError, export_run, import_trace, read_trace_file, replay_from_file
from graph.trace import run_steps
from service.cli import app as cli_app
from storage.database import connect
from storage.llm_calls import LLMCallRepository
from storage.runs import RunRepository
from tests.test_replay import TICKERS, LLMServer, final_state, invoke, original_run


@pytest.fixture
def llm_server():
    server = LLMServer()
    yield server
    server.stop()


@pytest.fixture
def other_database_url(pg_server):
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    yield urlunsplit(urlsplit(pg_server.get_uri())._replace(path=f"/{name}"))
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
async def other_db(other_database_url):
    database = await connect(other_database_url, max_size=6)
    yield database
    await database.close()


async def test_an_exported_llm_run_replays_in_another_database_with_no_network(db, other_db, llm_server, tmp_path):
    debater = LLMDebater(OpenAIChatBackend(model="test-model", api_key="sk-test", base_url=llm_server.base_url,
                                           timeout_s=5.0, max_retries=0), calls=LLMCallRepository(db.pool))
    outcome = await original_run(db, debater=debater)
    run_id = outcome.run.run_id
    sent = len(llm_server.requests)
    assert sent > 0
    path = tmp_path / "run.trace.zip"

    summary = await export_run(db, run_id, path)

    original_steps = await run_steps(db, run_id)
    assert (summary.run_id, summary.llm_calls, summary.steps) == (run_id, sent, len(original_steps))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == sorted(["manifest.json", "run.json", "snapshot.npz", "llm_calls.json",
                                                "checkpoints.json", "steps.json"])
        steps = json.loads(zf.read("steps.json"))
        calls = json.loads(zf.read("llm_calls.json"))
    # every step's full state is in the file, readable without the database
    assert [s["trace"]["nodes"] for s in steps] == [s.nodes for s in original_steps]
    last = steps[-1]["state"]  # the step waiting for approval: the state it started from
    assert last["finished"] is False and last["next"] == ["await_approval"]
    assert {o["ticker"] for o in last["values"]["staged"]} == {o.ticker for o in outcome.orders}
    assert all(s["state"]["checkpoint_id"] == s["trace"]["checkpoint_id"] for s in steps)
    assert [c["response"] for c in calls] == [c.response for c in await LLMCallRepository(db.pool).for_run(run_id)]
    llm_server.stop()  # from here on a network call would fail

    report, added = await replay_from_file(other_db, path)

    assert added and report.run_id == run_id and report.matched, report.differing_nodes
    assert [n.node for n in report.nodes] == list(COMPARED_NODES)
    assert (report.debater, report.llm_calls_served) == ("recorded llm:test-model", sent)
    assert len(llm_server.requests) == sent
    imported = await RunRepository(other_db.pool).get(run_id)
    assert imported.config == outcome.run.config and imported.as_of == outcome.run.as_of
    assert imported.debater == outcome.run.debater and imported.status == outcome.run.status
    assert (await RunRepository(other_db.pool).load_snapshot(run_id))[1] == \
        (await RunRepository(db.pool).load_snapshot(run_id))[1]
    # the imported thread is the original's: its trace and final state read the same there
    assert [s.nodes for s in await run_steps(other_db, run_id)] == [s.nodes for s in original_steps]
    moved = await final_state(other_db, run_id)
    assert [v.transcript for v in moved["verdicts"]] == [v.transcript for v in outcome.state["verdicts"]]
    replayed = await final_state(other_db, report.replay_run_id)
    assert [v.transcript for v in replayed["verdicts"]] == [v.transcript for v in outcome.state["verdicts"]]
    assert await other_db.pool.fetchval("SELECT count(*) FROM orders") == 0  # a replay stages nothing

    # importing the same file again adds nothing and replays again
    again, added_again = await replay_from_file(other_db, path)
    assert not added_again and again.matched and again.replay_run_id == f"{run_id}~replay2"
    assert await other_db.pool.fetchval("SELECT count(*) FROM llm_calls WHERE run_id = $1", run_id) == sent


async def test_bad_trace_files_are_refused_with_one_clear_reason(db, other_db, tmp_path):
    outcome = await original_run(db)
    good = tmp_path / "good.zip"
    await export_run(db, outcome.run.run_id, good)

    not_zip = tmp_path / "notes.zip"
    not_zip.write_bytes(b"just some text")
    with pytest.raises(TraceFileError, match="not a zip file"):
        read_trace_file(not_zip)
    with pytest.raises(TraceFileError, match="no file"):
        read_trace_file(tmp_path / "missing.zip")

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "llm_calls.json":
                data = b'[{"run_id": "x"}]'
            dst.writestr(name, data)
    with pytest.raises(TraceFileError, match="llm_calls.json does not match its hash"):
        read_trace_file(tampered)

    pickled = tmp_path / "pickled.zip"  # a consistent file whose checkpoint blob claims to be a pickle
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(pickled, "w") as dst:
        manifest = json.loads(src.read("manifest.json"))
        for name in src.namelist():
            data = src.read(name)
            if name == "checkpoints.json":
                rows = json.loads(data)
                rows["checkpoint_blobs"][0]["type"] = "pickle"
                data = json.dumps(rows).encode()
                import hashlib
                manifest["sha256"][name] = hashlib.sha256(data).hexdigest()
            if name != "manifest.json":
                dst.writestr(name, data)
        dst.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(TraceFileError, match="'pickle' blob"):
        await import_trace(other_db, pickled)
    assert await other_db.pool.fetchval("SELECT count(*) FROM runs") == 0  # nothing half-imported

    with pytest.raises(TraceFileError, match="no run nope"):
        await export_run(db, "nope", tmp_path / "x.zip")


def test_export_and_replay_from_file_on_the_command_line(cli_env, other_database_url, tmp_path, monkeypatch):
    run = json.loads(invoke(cli_env, "run", "--tickers", ",".join(TICKERS), "--as-of", "2026-11-20T15:30", "--json"))
    run_id = run["run"]["run_id"]
    path = tmp_path / "t.zip"
    out = invoke(cli_env, "runs", "export", run_id, "-o", str(path))
    assert f"wrote {path}" in out and path.is_file()

    monkeypatch.setenv("DATABASE_URL", other_database_url)  # elsewhere: a database that never saw the run
    report = json.loads(invoke(cli_env, "replay", "--from-file", str(path), "--json"))
    assert report["imported"] and report["run_id"] == run_id and report["matched"]
    assert json.loads(invoke(cli_env, "runs", "show", run_id, "--steps", "--json"))  # the trace came along

    for args, message in [
        (["replay"], "give a run id or --from-file"),
        (["replay", run_id, "--from-file", str(path)], "give a run id or --from-file"),
        (["replay", "--from-file", str(tmp_path / "none.zip")], "no file"),
        (["runs", "export", "nope", "-o", str(tmp_path / "n.zip")], "no run nope"),
    ]:
        result = cli_env.invoke(cli_app, args)
        assert result.exit_code == 2 and message in result.output, result.output
