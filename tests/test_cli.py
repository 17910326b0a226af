"""The `hedgegraph` command line against a real (embedded) Postgres database."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from service.cli import app


def invoke(runner, *args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_run_then_list_and_show_runs_and_orders(cli_env):
    out = json.loads(invoke(cli_env, "run", "--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20T15:30", "--json"))
    run_id = out["run"]["run_id"]
    assert out["executed"] and out["run"]["status"] == "awaiting_approval"
    assert [o["ticker"] for o in out["orders"]] == ["AMZN"]

    again = json.loads(invoke(cli_env, "run", "--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20T15:30", "--json"))
    assert not again["executed"] and again["orders"] == out["orders"]  # same slot: nothing added

    runs = json.loads(invoke(cli_env, "runs", "list", "--json"))
    assert [r["run_id"] for r in runs] == [run_id]
    shown = json.loads(invoke(cli_env, "runs", "show", run_id, "--json"))
    assert len(shown["signals"]) == 12 and shown["orders"][0]["order_id"] == out["orders"][0]["order_id"]
    assert {t["node"] for t in shown["node_timings"]} >= {"load_context", "stage_orders"}

    orders = json.loads(invoke(cli_env, "orders", "list", "--json"))
    assert [o["order_id"] for o in orders] == [out["orders"][0]["order_id"]]
    order = json.loads(invoke(cli_env, "orders", "show", orders[0]["order_id"], "--json"))
    assert [h["to_state"] for h in order["history"]] == ["DRAFT", "STAGED"]
    assert order["sizing"]["kelly_fraction"] > 0

    table = invoke(cli_env, "runs", "show", run_id)
    assert "Signals" in table and "AMZN" in table


def test_unknown_ids_and_bad_options_are_clear_errors(cli_env):
    result = cli_env.invoke(app, ["orders", "show", "ord_nope"])
    assert result.exit_code == 2 and "no order ord_nope" in result.output
    result = cli_env.invoke(app, ["runs", "show", "nope"])
    assert result.exit_code == 2 and "no run nope" in result.output
    result = cli_env.invoke(app, ["run", "--as-of", "yesterday"])
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = cli_env.invoke(app, ["run", "--chain", "SPX"])
    assert result.exit_code == 2 and "SYMBOL=PATH" in result.output


def test_run_with_a_real_cboe_chain(cli_env, shared_data):
    path = shared_data / "cboe" / "spy_quotedata_2023-09-14.csv"
    out = json.loads(invoke(cli_env, "run", "--tickers", "SPY", "--chain", f"SPY={path}", "--json"))
    run_id = out["run"]["run_id"]
    shown = json.loads(invoke(cli_env, "runs", "show", run_id, "--json"))
    vol = next(s for s in shown["signals"] if s["source"] == "vol_surface")
    assert any("Cboe file" in q for q in vol["data_quality"])
    assert vol["evidence"]["svi_fitted_expiries"] > 10
    assert 0.05 < vol["evidence"]["atm_iv_30d"] < 0.3  # SPY in September 2023: mid-teens
    flow = next(s for s in shown["signals"] if s["source"] == "flow")
    assert flow["evidence"]["spot"] == pytest.approx(450.81, abs=0.01)


def test_approve_from_the_command_line_then_journal_and_kill_switch(cli_env, monkeypatch):
    monkeypatch.setenv("HEDGEGRAPH_NOW", "2026-11-20T15:35")  # the paper wall clock: inside the session
    out = json.loads(invoke(cli_env, "run", "--tickers", "AMZN,JPM,XLE", "--as-of", "2026-11-20T15:30", "--json"))
    order_id = out["orders"][0]["order_id"]
    result = cli_env.invoke(app, ["orders", "approve", order_id])  # 15 contracts: acknowledgement needed
    assert result.exit_code == 2 and "acknowledge" in result.output
    decided = json.loads(invoke(cli_env, "orders", "approve", order_id, "--acknowledge", "--approver", "dana", "--json"))
    assert decided["decision"]["approver"] == "dana"
    assert decided["state"] == "FILLED", decided["execution"]  # re-checked on the quote at 15:35, then sent
    again = cli_env.invoke(app, ["orders", "reject", order_id, "--reason", "late"])
    assert again.exit_code == 2 and "already decided" in again.output
    journal = json.loads(invoke(cli_env, "journal", "--json"))
    assert journal["entries"][0]["approver"] == "dana"
    invoke(cli_env, "risk", "halt", "--reason", "test")
    assert json.loads(invoke(cli_env, "risk", "status", "--json"))["halted"] is True
    invoke(cli_env, "risk", "resume")
    assert json.loads(invoke(cli_env, "risk", "status", "--json"))["halted"] is False


def test_chain_command_analyses_a_real_cboe_file(shared_data):
    runner = CliRunner()
    path = shared_data / "cboe" / "spy_quotedata_2023-09-14.csv"
    data = json.loads(invoke(runner, "chain", str(path), "--json"))
    assert data["underlying"] == "SPY" and data["spot"] == pytest.approx(450.81)
    fitted = [e for e in data["slices"] if e["fitted"]]
    assert len(fitted) >= 25 and all(e["rmse_vol_points"] < 1.5 and e["butterfly_ok"] for e in fitted)
    assert all(e["risk_reversal_25d"] is None or e["risk_reversal_25d"] < 0.02 for e in fitted)  # equity skew
    assert abs(data["flow"]["zero_gamma_level"] / data["spot"] - 1) < 0.10
    assert data["flow"]["put_call_open_interest_ratio"] > 1 and data["flow"]["max_pain"]
    assert sum(data["quote_rejections"].values()) > 0  # the file's zero bids are counted, not fitted
    table = invoke(runner, "chain", str(path))
    assert "SPY" in table
    bad = runner.invoke(app, ["chain", str(shared_data / "history" / "SPY_close_2015.csv")])
    assert bad.exit_code == 2 and "error" in bad.output


def test_schedule_once_ticks_and_records_every_due_slot(cli_env, fresh_database_url):
    import asyncio

    import asyncpg

    invoke(cli_env, "schedule", "--once")

    async def slots():
        conn = await asyncpg.connect(fresh_database_url)
        try:
            return await conn.fetch("SELECT slot_key, status FROM schedule_slots")
        finally:
            await conn.close()

    rows = asyncio.run(slots())
    # The look-back covers the previous session: its slots are recorded (missed, or run if due now).
    assert rows and all(r["status"] in ("missed", "completed", "failed") for r in rows)
    assert all(r["slot_key"].startswith("core|") for r in rows)
