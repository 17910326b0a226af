"""`hedgegraph positions | pnl | account`: the book after the fill (paper mode honours HEDGEGRAPH_NOW)."""
from __future__ import annotations

from datetime import date, timedelta
from typing import Optional

import typer

from service.commands.common import console, fail, print_json, run_async, table, with_service

app = typer.Typer(no_args_is_help=True)


def _money(value) -> str:
    return "—" if value is None else f"{float(value):+,.2f}"


@app.command("positions")
def positions_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """Open strategy positions: units, entry, last mark, unrealized P&L, Greeks, exit orders."""
    from service import operations

    data = run_async(with_service(operations.positions))
    if as_json:
        return print_json(data)
    t = table(f"Open positions as of {data['as_of']}", ("position", "ticker", "structure", "expiry", "units",
                                                        "entry", "mark", "unrealized", "delta", "exit"))
    for p in data["positions"]:
        exits = ", ".join(f"{e['exit_rule']}:{e['state']}" for e in p["exit_orders"]) or "—"
        delta = "—" if p["greeks"] is None or p["greeks"]["delta"] is None else f"{p['greeks']['delta']:+.1f}"
        t.add_row(p["position_id"], p["ticker"], p["structure"], p["expiry"], str(p["units"]), str(p["entry_price"]),
                  str(p["mark"] or "—"), _money(p["unrealized_pnl"]), delta, exits)
    console.print(t if data["positions"] else "no open positions")


def _day(value: str | None, option: str, default: date) -> date:
    if value is None:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date (YYYY-MM-DD)")


@app.command("pnl")
def pnl_command(start: Optional[str] = typer.Option(None, "--from", help="First New York day (default: 30 days ago)."),
                end: Optional[str] = typer.Option(None, "--to", help="Last New York day (default: today)."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Daily P&L (realized, unrealized) and P&L by strategy."""
    from config.clock import wall_clock
    from service import operations
    from tools.chain import NEW_YORK

    today = wall_clock().astimezone(NEW_YORK).date()
    first, last = _day(start, "--from", today - timedelta(days=30)), _day(end, "--to", today)
    if last < first:
        fail(f"--to {last} is before --from {first}")
    data = run_async(with_service(lambda ctx: operations.pnl(ctx, first, last)))
    if as_json:
        return print_json(data)
    days = table(f"P&L {first} .. {last}", ("day", "realized", "unrealized", "change", "total", "NLV"))
    for d in data["days"]:
        days.add_row(d["day"], _money(d["realized_pnl"]), _money(d["unrealized_pnl"]),
                     _money(d["unrealized_change"]), _money(d["total_pnl"]), _money(d["net_liquidation"]))
    console.print(days)
    strategies = table("By strategy", ("structure", "realized", "unrealized", "positions", "open"))
    for s in data["by_strategy"]:
        strategies.add_row(s["structure"], _money(s["realized_pnl"]), _money(s["unrealized_pnl"]),
                           str(s["positions"]), str(s["open_positions"]))
    console.print(strategies)


@app.command("account")
def account_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The account the risk gate reads: NLV, cash, margin, daily P&L, last loss, trades today."""
    from service import operations

    data = run_async(with_service(operations.account))
    if as_json:
        return print_json(data)
    t = table(f"Account as of {data['as_of']}", ("field", "value"))
    for key in ("net_liquidation", "cash", "margin_used", "daily_realized_pnl", "daily_unrealized_pnl",
                "realized_pnl", "last_loss_at", "trades_today", "open_positions", "halted", "daily_reset"):
        t.add_row(key, str(data.get(key)))
    console.print(t)
