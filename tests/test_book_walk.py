"""As a new user would: a paper account walked through days from the shell with HEDGEGRAPH_NOW.

run → approve → FILLED → `positions` shows the position → the next day's `schedule --once` marks
the book → `pnl` shows a marked, non-zero unrealized P&L and `account` the NLV the gate reads.
"""
from __future__ import annotations

import json

from service.cli import app


def invoke(runner, *args):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_paper_account_walked_through_two_days_from_the_shell(cli_env, monkeypatch):
    monkeypatch.setenv("HEDGEGRAPH_NOW", "2026-11-19T15:35")  # Thursday, inside the session
    staged = json.loads(invoke(cli_env, "run", "--json"))["orders"]
    assert staged, "the 15:30 slot stages orders on the simulated market"
    first = staged[0]
    decided = json.loads(invoke(cli_env, "orders", "approve", first["order_id"], "--acknowledge",
                                "--approver", "dana", "--json"))
    assert decided["state"] == "FILLED", decided["execution"]
    for other in staged[1:]:
        invoke(cli_env, "orders", "reject", other["order_id"], "--reason", "one at a time")

    book = json.loads(invoke(cli_env, "positions", "--json"))
    [position] = book["positions"]
    assert position["ticker"] == first["ticker"] and position["structure"] == first["structure"]
    assert position["units"] == first["quantity"] and position["order_id"] == first["order_id"]

    monkeypatch.setenv("HEDGEGRAPH_NOW", "2026-11-20T15:35")  # the next session's last slot
    invoke(cli_env, "schedule", "--once")
    pnl = json.loads(invoke(cli_env, "pnl", "--from", "2026-11-19", "--to", "2026-11-20", "--json"))
    friday = next(d for d in pnl["days"] if d["day"] == "2026-11-20")
    assert friday["unrealized_pnl"] is not None and float(friday["unrealized_pnl"]) != 0.0
    assert any(s["structure"] == first["structure"] and s["open_positions"] == 1 for s in pnl["by_strategy"])
    marked = json.loads(invoke(cli_env, "positions", "--json"))["positions"][0]
    assert marked["marked_at"].startswith("2026-11-20") and marked["mark"] is not None

    account = json.loads(invoke(cli_env, "account", "--json"))
    assert float(account["net_liquidation"]) > 0 and account["open_positions"] >= 1
    assert account["trades_today"] == 0  # yesterday's fill is not today's trade


def test_book_commands_refuse_bad_dates_in_one_line(cli_env):
    result = cli_env.invoke(app, ["pnl", "--from", "yesterday"])
    assert result.exit_code == 2 and "not a date" in result.output and "Traceback" not in result.output
    result = cli_env.invoke(app, ["pnl", "--from", "2026-11-20", "--to", "2026-11-19"])
    assert result.exit_code == 2 and "before" in result.output
