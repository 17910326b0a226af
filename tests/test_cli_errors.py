"""Bad input on the command line: one `error:` line, a non-zero exit, no traceback, no run row.

The commands run in-process through the real entry point (`service.cli.app()`, what the
`hedgegraph` script calls) against a fresh embedded-Postgres database.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime

import asyncpg
import pytest

from service.cli import app
from tests.conftest import REPO_ROOT
from tools.chain import NEW_YORK


def call(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        app(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def run_rows(url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            if await conn.fetchval("SELECT to_regclass('public.runs')") is None:
                return 0  # never migrated: no command got as far as the database
            return await conn.fetchval("SELECT count(*) FROM runs")
        finally:
            await conn.close()
    return asyncio.run(count())


@pytest.fixture
def chain_files(tmp_path, shared_data):
    real = (shared_data / "cboe" / "spy_quotedata_2023-09-14.csv").read_text(encoding="utf-8")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 40)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text(real, encoding="utf-16")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    return {"binary": binary, "utf16": utf16, "empty": empty, "missing": tmp_path / "missing.csv",
            "directory": tmp_path}


AS_OF = ["--as-of", "2026-11-20T15:30"]
BAD_INPUTS = {
    "as-of far future date": (["run", "--as-of", "2099-01-01"], "XNYS calendar"),
    "as-of future time": (["run", "--as-of", "2099-01-01T10:00"], "in the future"),
    "as-of date before the calendar": (["run", "--as-of", "1990-01-01"], "XNYS calendar"),
    "as-of before the market data": (["run", "--as-of", "1990-01-02T10:00"], "no market data"),
    "as-of weekend date": (["run", "--as-of", "2025-03-15"], "not an XNYS trading day"),
    "as-of not a date": (["run", "--as-of", "yesterday"], "ISO 8601"),
    "as-of impossible date": (["run", "--as-of", "2025-02-30"], "not a calendar date"),
    "ticker path": (["run", "--tickers", "../../etc", *AS_OF], "not a ticker symbol"),
    "ticker twice": (["run", "--tickers", "SPY,spy", *AS_OF], "SPY twice"),
    "tickers only commas": (["run", "--tickers", ",,,", *AS_OF], "names no ticker"),
    "tickers empty": (["run", "--tickers", "", *AS_OF], "names no ticker"),
    "tickers empty item": (["run", "--tickers", "SPY,,QQQ", *AS_OF], "empty item"),
    "seed huge": (["run", "--seed", str(10**20), *AS_OF], "--seed must be between"),
    "seed negative": (["run", "--seed", "-1", *AS_OF], "--seed must be between"),
    "seed expression": (["run", "--seed", "10**20", *AS_OF], "Invalid value for '--seed'"),
    "chain binary": (["run", "--chain", "SPY={binary}"], "--chain"),
    "chain utf-16": (["run", "--chain", "SPY={utf16}"], "--chain"),
    "chain empty": (["run", "--chain", "SPY={empty}"], "--chain"),
    "chain missing": (["run", "--chain", "SPY={missing}"], "--chain"),
    "chain directory": (["run", "--chain", "SPY={directory}"], "--chain"),
    "chain without path": (["run", "--chain", "SPY"], "SYMBOL=PATH"),
    "chain before as-of": (["run", "--chain", "SPY={utf16}", "--as-of", "2020-01-02T10:00"], "--chain"),
    "orders negative limit": (["orders", "list", "--limit", "-5"], "--limit"),
    "orders unknown state": (["orders", "list", "--state", "BOGUS"], "not an order state"),
    "runs zero limit": (["runs", "list", "--limit", "0"], "--limit"),
    "unknown command": (["nope"], "No such command"),
    "step negative": (["runs", "show", "x", "--step", "-1"], "--step"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_no_run(name, cli_env, fresh_database_url, chain_files, capsys):
    args, expected = BAD_INPUTS[name]
    args = [a.format(**chain_files) for a in args]
    code, out, err = call(args, capsys)
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in out + err and out.strip() == ""
    assert run_rows(fresh_database_url) == 0


@pytest.mark.parametrize("url, shown", [
    ("notaurl", "DATABASE_URL must be a postgresql://"),
    ("mysql://me:hunter2@db/x", "scheme 'mysql'"),
    ("postgresql://me:hunter2@127.0.0.1:1/x", "cannot connect to postgresql://me:***@127.0.0.1:1/x"),
    ("host=127.0.0.1 port=1 dbname=x user=me password=hunter2", "cannot connect to postgresql://me:***@127.0.0.1:1/x"),
])
def test_unusable_database_url_is_one_line_without_the_password(url, shown, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = call(["run", "--tickers", "SPY", *AS_OF], capsys)
    assert code == 2 and err.count("\n") == 1 and shown in err and "hunter2" not in out + err, err


@pytest.mark.parametrize("url, shown", [
    ("host=db user=me password=hunter2 dbname=x", "host=db user=me password=*** dbname=x"),
    ("host=db password = 'it''s hunter2' dbname=x", "host=db password = *** dbname=x"),
    ("postgresql://me:hunter2@db/x?sslmode=require", "postgresql://me:***@db/x?sslmode=require"),
    ("postgresql://me@db/x?password=hunter2&sslmode=require", "postgresql://me@db/x?password=***&sslmode=require"),
])
def test_db_url_redacts_passwords(url, shown, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", url)
    code, out, err = call(["db", "url"], capsys)
    assert code == 0 and out.strip() == shown


def test_a_date_only_as_of_is_that_days_last_slot_and_says_so(cli_env, capsys):
    code, out, err = call(["run", "--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20", "--json"], capsys)
    assert code == 0, err
    run = json.loads(out)["run"]
    assert datetime.fromisoformat(run["as_of"]).astimezone(NEW_YORK) == datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
    assert "means that day's last scheduled slot, 15:30" in err


def test_concurrent_runs_of_one_slot_say_busy_in_one_line(cli_env, fresh_database_url):
    """Three processes run the same slot at once: one executes it, the others either find it done
    or are told in one line that it is busy — never a RunBusy traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": fresh_database_url}
    args = [sys.executable, "-m", "service.cli", "run", "--tickers", "AMZN,JPM", *AS_OF, "--json"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert any(code == 0 for code, _, _ in results)
    for code, out, err in results:
        assert "Traceback" not in out + err
        if code != 0:
            assert err.strip().count("\n") == 0 and err.startswith("error: busy: run "), err
    assert run_rows(fresh_database_url) == 1


def test_a_run_held_by_another_process_is_one_busy_line(cli_env, fresh_database_url, capsys):
    """While another session holds the run's lock (as a process executing it does), `run` says so."""
    from config.settings import defaults
    from graph.runner import RunRequest
    from storage.database import advisory_key

    request = RunRequest(watchlist="adhoc", tickers=["AMZN"], as_of=datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK),
                         seed=defaults().seed, provider="simulated", config=defaults().decision)

    async def hold_lock_while(fn):
        conn = await asyncpg.connect(fresh_database_url)
        try:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", advisory_key(f"run:{request.run_id}"))
            return await asyncio.to_thread(fn)
        finally:
            await conn.close()

    code, out, err = asyncio.run(hold_lock_while(lambda: call(["run", "--tickers", "AMZN", *AS_OF], capsys)))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: busy: run {request.run_id} is being executed by another process"), err
