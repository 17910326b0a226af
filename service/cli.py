"""`hedgegraph`: run decisions, follow schedules, and inspect runs and orders.

Every list/show command takes `--json` for machines; without it, rich tables for people.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from config.clock import wall_clock
from config.settings import defaults, settings
from service import operations
from storage.database import DatabaseUnavailable, open_database
from tools.chain import NEW_YORK

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
runs_app = typer.Typer(no_args_is_help=True, help="Decision runs.")
orders_app = typer.Typer(no_args_is_help=True, help="Staged orders.")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
app.add_typer(runs_app, name="runs")
app.add_typer(orders_app, name="orders")
app.add_typer(db_app, name="db")
risk_app = typer.Typer(no_args_is_help=True, help="The kill switch.")
app.add_typer(risk_app, name="risk")
# Wide enough for the order tables when output is not a terminal (make run in CI, pipes).
console = Console(width=None if Console().is_terminal else 150)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def _run_async(coro):
    try:
        return asyncio.run(coro)
    except DatabaseUnavailable as exc:
        _fail(str(exc))


def latest_slot_time(now: datetime) -> tuple[str, datetime]:
    """The most recent configured slot at or before `now` on an NYSE session: (watchlist, time).

    `hedgegraph run` without `--as-of` decides as of that slot, so a run on a weekend or at night
    still decides inside session hours, and repeating it the same day repeats the same slot.
    """
    from service.scheduler import load_schedule, previous_session, slots_for_session, xnys_calendar

    schedule = load_schedule()
    day = now.astimezone(NEW_YORK).date()
    if not xnys_calendar().is_session(day.isoformat()):
        day = previous_session(day)
    for _ in range(10):
        slots = [s for s in slots_for_session(schedule, day) if s.scheduled_at <= now]
        if slots:
            latest = max(slots, key=lambda s: s.scheduled_at)
            return latest.watchlist, latest.scheduled_at
        day = previous_session(day)
    raise RuntimeError("no scheduled slot in the last ten sessions")


def _parse_as_of(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--as-of must be ISO 8601 like 2026-11-20T15:30 (New York time if no offset), got {text!r}")
    return value.replace(tzinfo=NEW_YORK) if value.tzinfo is None else value


def _parse_chains(values: list[str]) -> dict[str, Path]:
    chains = {}
    for item in values:
        symbol, sep, path = item.partition("=")
        if not sep or not symbol or not path:
            _fail(f"--chain takes SYMBOL=PATH, got {item!r}")
        chains[symbol.upper()] = Path(path)
    return chains


def _provider(seed: int, chains: dict[str, Path]):
    from tools.providers.simulated import SimulatedMarket

    provider = SimulatedMarket(seed=seed)
    if chains:
        from tools.providers.chain_files import ChainFileOverlay

        provider = ChainFileOverlay(provider, chains)
    return provider


@app.command()
def run(
    tickers: Optional[str] = typer.Option(None, help="Comma-separated tickers (default: the default watchlist)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Decision time, ISO 8601; default: the latest schedule slot."),
    seed: Optional[int] = typer.Option(None, help="Seed of the simulated market."),
    chain: list[str] = typer.Option([], "--chain", help="SYMBOL=PATH: use a Cboe quote-table file as SYMBOL's chain."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """One decision run: market data → analysts → debate → risk → strategy → Kelly → staged orders."""
    d = defaults()
    seed = d.seed if seed is None else seed
    chains = _parse_chains(chain)
    try:
        provider = _provider(seed, chains)
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    ticker_list = [t.strip().upper() for t in tickers.split(",") if t.strip()] if tickers else list(d.watchlist)
    ticker_list += [symbol for symbol in chains if symbol not in ticker_list]
    if as_of:
        when, watchlist = _parse_as_of(as_of), "adhoc"
    elif chains:
        when, watchlist = provider.latest_as_of, "adhoc"  # decide when the chain files were taken
    else:
        watchlist, when = latest_slot_time(wall_clock().astimezone(NEW_YORK))
    if tickers:
        watchlist = "adhoc"
    outcome = _run_async(_run(provider, ticker_list, when, seed, watchlist, quiet=as_json))
    if as_json:
        _print_json(operations.jsonable({
            "run": outcome.run.__dict__, "executed": outcome.executed, "resumed": outcome.resumed,
            "orders": [operations.order_summary(o) for o in outcome.orders],
        }))
        return
    _render_outcome(outcome)


async def _run(provider, tickers, when, seed, watchlist, quiet: bool):
    async with open_database(settings()) as db:
        total_tasks = 10 + 4 * len(tickers)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=quiet, transient=False) as progress:
            task = progress.add_task(f"decision run {when:%Y-%m-%d %H:%M %Z}", total=total_tasks)

            def on_node(node: str, update: dict) -> None:
                progress.update(task, advance=1, description=f"{node}")

            outcome = await operations.run_decision(
                db, provider, watchlist=watchlist, tickers=tickers, as_of=when, seed=seed, on_node=on_node)
            progress.update(task, completed=total_tasks, description="done")
        return outcome


def _render_outcome(outcome) -> None:
    run, state = outcome.run, outcome.state
    done = f"{'resumed; ' if outcome.resumed else ''}{run.status.replace('_', ' ')}"
    status = f"already run ({run.status.replace('_', ' ')}) — nothing added" if not outcome.executed else done
    console.print(f"\n[bold]run[/] {run.run_id}  as of {run.as_of.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}  [green]{status}[/]")
    ctx = state.get("context")
    if ctx is not None:
        r = ctx.regime
        console.print(f"regime [bold]{r.name}[/]  VIX {r.vix:.2f}  VIX/VIX3M {r.term_ratio:.3f}")
    signals = Table(title="Signals", show_lines=False)
    for col in ("ticker", "vol_surface", "flow", "technical", "social"):
        signals.add_column(col)
    by_ticker: dict[str, dict[str, str]] = {}
    for s in state.get("signals", []):
        by_ticker.setdefault(s.ticker, {})[s.source] = f"{s.direction} {s.conviction:.2f}"
    for ticker in sorted(by_ticker):
        row = by_ticker[ticker]
        signals.add_row(ticker, *(row.get(c, "—") for c in ("vol_surface", "flow", "technical", "social")))
    console.print(signals)

    verdicts = Table(title="Debate verdicts and risk")
    for col in ("ticker", "verdict", "vol view", "confidence", "pre-trade", "structure / why not"):
        verdicts.add_column(col)
    pre = {d.ticker: d for d in state.get("pre_trade", [])}
    post = {d.ticker: d for d in state.get("post_trade", [])}
    proposals = {p.ticker: p.structure for p in state.get("proposals", [])}
    rejected = state.get("rejected_proposals", {})
    sized = {t.proposal.ticker: t for t in state.get("sized", [])}
    for v in state.get("verdicts", []):
        d = pre.get(v.ticker)
        gate = "—" if d is None else ("pass" if d.approved else "VETO: " + "; ".join(x.code for x in d.vetoes))
        what = proposals.get(v.ticker) or rejected.get(v.ticker, "")
        if v.ticker in sized and sized[v.ticker].contracts == 0:
            what += f" (0 contracts: {', '.join(sized[v.ticker].caps_applied) or 'no edge'})"
        if v.ticker in post and not post[v.ticker].approved:
            what += " POST-TRADE VETO: " + "; ".join(x.code for x in post[v.ticker].vetoes)
        verdicts.add_row(v.ticker, v.price_view, v.vol_view, f"{v.confidence:.2f}", gate, what)
    console.print(verdicts)
    _render_orders(outcome.orders, title="Staged orders")
    if any(o.state == "STAGED" for o in outcome.orders):
        console.print("review with [bold]hedgegraph orders show ORDER[/]; decide with "
                      "[bold]hedgegraph orders approve|reject|resize ORDER[/]")


def _render_orders(orders, title: str) -> None:
    table = Table(title=title)
    for col in ("order", "ticker", "structure", "legs", "qty", "limit", "max loss/unit", "state", "ack"):
        table.add_column(col, no_wrap=col in ("order", "legs"))
    for o in orders:
        legs = _legs_text(o.legs)
        table.add_row(o.order_id, o.ticker, o.structure, legs, str(o.quantity), f"{o.limit_price:+.2f}",
                      str(o.proposal.get("max_loss")), o.state, "yes" if o.requires_acknowledgement else "")
    if not orders:
        table.caption = "no orders staged"
    console.print(table)


def _legs_text(legs: list[dict]) -> str:
    """"2026-12-24 +165C -175C": expiry once when all legs share it, signed ratio and strike."""
    expiries = {l["expiry"] for l in legs}
    parts = []
    for l in legs:
        ratio = "" if l["ratio"] == 1 else str(l["ratio"])
        text = f"{'+' if l['side'] == 'buy' else '-'}{ratio}{float(l['strike']):g}{l['right']}"
        parts.append(text if len(expiries) == 1 else f"{l['expiry']} {text}")
    return (f"{next(iter(expiries))} " if len(expiries) == 1 else "") + " ".join(parts)


async def _with_db(fn):
    async with open_database(settings()) as db:
        return await fn(db)


@runs_app.command("list")
def runs_list(limit: int = 50, as_json: bool = typer.Option(False, "--json")) -> None:
    """Recent runs."""
    rows = _run_async(_with_db(lambda db: operations.list_runs(db, limit)))
    if as_json:
        return _print_json(rows)
    table = Table(title="Runs")
    for col in ("run_id", "as_of", "status", "tickers", "attempts", "mode"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run_id"], r["as_of"], r["status"], str(len(r["tickers"])), str(r["attempts"]), r["mode"])
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json"),
              steps: bool = typer.Option(False, "--steps", help="The trace: each step's nodes, duration and writes."),
              step: Optional[int] = typer.Option(None, "--step", help="The full state after step N (JSON).")) -> None:
    """One run: its signals, debates, risk decisions, orders, node timings and LLM usage."""
    if step is not None or steps:
        return _show_trace(run_id, step, as_json)
    data = _run_async(_with_db(lambda db: operations.show_run(db, run_id)))
    if data is None:
        _fail(f"no run {run_id}")
    if as_json:
        return _print_json(data)
    run = data["run"]
    console.print(f"[bold]{run['run_id']}[/] {run['status']} as of {run['as_of']} ({len(run['tickers'])} tickers)"
                  + (f" — {run['mode']}, from {run['parent_run_id']}" if run.get("parent_run_id") else ""))
    if run.get("error"):
        console.print(f"[red]error:[/] {run['error']}")
    usage = data["llm_usage"]
    console.print(f"LLM calls {usage['calls']}, tokens in {usage['tokens_in']}, out {usage['tokens_out']}")
    t = Table(title="Signals")
    for col in ("ticker", "source", "direction", "conviction", "edge", "data quality"):
        t.add_column(col)
    for s in data["signals"]:
        t.add_row(s["ticker"], s["source"], s["direction"], f"{s['conviction']:.2f}", s["edge_type"], "; ".join(s["data_quality"])[:60])
    console.print(t)
    t = Table(title="Debates")
    for col in ("ticker", "debater", "verdict", "confidence", "rationale"):
        t.add_column(col)
    for d in data["debates"]:
        t.add_row(d["ticker"], d["debater"], d["price_view"], f"{d['confidence']:.2f}", d["rationale"][:100])
    console.print(t)
    t = Table(title="Risk decisions")
    for col in ("ticker", "stage", "approved", "vetoes", "warnings"):
        t.add_column(col)
    for d in data["risk_decisions"]:
        t.add_row(d["ticker"], d["stage"], str(d["approved"]), "; ".join(v["message"] for v in d["vetoes"])[:90],
                  "; ".join(w["code"] for w in d["warnings"]))
    console.print(t)
    t = Table(title="Orders")
    for col in ("order", "ticker", "structure", "qty", "limit", "state"):
        t.add_column(col)
    for o in data["orders"]:
        t.add_row(o["order_id"], o["ticker"], o["structure"], str(o["quantity"]), o["limit_price"], o["state"])
    console.print(t)


def _show_trace(run_id: str, step: Optional[int], as_json: bool) -> None:
    from graph.trace import TraceError

    try:
        if step is not None:  # a full state is only readable as JSON
            return _print_json(_run_async(_with_db(lambda db: operations.state_at(db, run_id, step))))
        rows = _run_async(_with_db(lambda db: operations.steps(db, run_id)))
    except TraceError as exc:
        _fail(str(exc))
    if as_json:
        return _print_json(rows)
    table = Table(title=f"Steps of {run_id}")
    for col in ("step", "node(s)", "tasks", "status", "ms", "node ms (sum of tasks)", "wrote"):
        table.add_column(col)
    for r in rows:
        node_ms = ", ".join(f"{k} {v:.0f}" for k, v in r["node_ms"].items())
        table.add_row(str(r["step"]), ", ".join(r["nodes"]), str(r["tasks"]), r["status"],
                      "—" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}", node_ms,
                      ", ".join(r["writes"]) + ("; " + "; ".join(r["errors"]) if r["errors"] else ""))
    console.print(table)


def _render_comparison(nodes: list[dict], title: str) -> None:
    table = Table(title=title)
    for col in ("node", "matched", "diff"):
        table.add_column(col)
    for n in nodes:
        matched = "[green]yes[/]" if n["matched"] else "[red]no[/]"
        table.add_row(n["node"] + ("" if n["rerun"] else " (copied)"), matched, n["diff"])
    console.print(table)


@app.command()
def replay(run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-execute a run in a sandbox from its recordings and compare every node with the original.

    No LLM or network call is made (recorded LLM answers are served), nothing is staged or sent."""
    from graph.replay import ReplayError

    try:
        report = _run_async(_with_db(lambda db: operations.replay(db, run_id)))
    except ReplayError as exc:
        _fail(str(exc))
    if as_json:
        return _print_json(report)
    console.print(f"replayed [bold]{run_id}[/] as {report['replay_run_id']} (debater {report['debater']}, "
                  f"{report['llm_calls_served']} recorded LLM answers served)")
    _render_comparison(report["nodes"], "Replay vs original")
    verdict = "[green]every node matched[/]" if report["matched"] else \
        f"[red]differs at {', '.join(report['differing_nodes'])}[/]"
    console.print(verdict)


@app.command()
def fork(run_id: str, at: str = typer.Option(..., "--at", help="Node to re-run from (load_context, "
                                             "select_candidates, debate, risk_gate, strategy_selector, ...)."),
         set_: list[str] = typer.Option([], "--set", help="key=value: a DecisionConfig setting to change."),
         live_llm: bool = typer.Option(False, "--live-llm", help="Debate with the configured LLM, not the recording."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a run again from before one node with changed settings, in a sandbox, and show what changed."""
    from graph.replay import ReplayError

    try:
        report = _run_async(_with_db(lambda db: operations.fork(db, run_id, at, set_, live_llm=live_llm)))
    except ReplayError as exc:
        _fail(str(exc))
    if as_json:
        return _print_json(report)
    console.print(f"forked [bold]{run_id}[/] at {at} as {report['fork_run_id']} with {report['overrides']}")
    _render_comparison(report["nodes"], "Fork vs original")
    console.print(f"staged: original {report['original_staged'] or 'none'} → fork {report['staged'] or 'none'}")


@orders_app.command("list")
def orders_list(state: Optional[str] = None, run_id: Optional[str] = typer.Option(None, "--run"),
                limit: int = 100, as_json: bool = typer.Option(False, "--json")) -> None:
    """Orders, newest first (filter by --state STAGED, --run RUN_ID)."""
    rows = _run_async(_with_db(lambda db: operations.list_orders(db, state=state, run_id=run_id, limit=limit)))
    if as_json:
        return _print_json(rows)
    table = Table(title="Orders")
    for col in ("order", "run", "ticker", "structure", "qty", "limit", "state", "ack"):
        table.add_column(col)
    for o in rows:
        table.add_row(o["order_id"], o["run_id"], o["ticker"], o["structure"], str(o["quantity"]), o["limit_price"],
                      o["state"], "yes" if o["requires_acknowledgement"] else "")
    console.print(table)


@orders_app.command("show")
def orders_show(order_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One order with its legs, sizing and state history."""
    data = _run_async(_with_db(lambda db: operations.show_order(db, order_id)))
    if data is None:
        _fail(f"no order {order_id}")
    if as_json:
        return _print_json(data)
    console.print(f"[bold]{data['order_id']}[/] {data['ticker']} {data['structure']} ×{data['quantity']} "
                  f"limit {data['limit_price']} [{data['state']}]")
    legs = Table(title="Legs")
    for col in ("side", "ratio", "expiry", "strike", "right", "bid", "ask", "iv", "delta"):
        legs.add_column(col)
    for l in data["legs"]:
        legs.add_row(l["side"], str(l["ratio"]), l["expiry"], l["strike"], l["right"], l["bid"], l["ask"],
                     f"{l['iv']:.3f}" if l.get("iv") is not None else "—",
                     f"{l['delta']:+.3f}" if l.get("delta") is not None else "—")
    console.print(legs)
    p, s = data["proposal"], data["sizing"]
    console.print(f"max profit {p['max_profit']}  max loss {p['max_loss']}  breakevens {p['breakevens']}  "
                  f"PoP {p['probability_of_profit']:.2f}")
    console.print(f"Kelly f*={s['kelly_fraction']:.3f} applied={s['applied_fraction']:.4f} win_rate={s['win_rate']:.3f} "
                  f"payoff={s['payoff_ratio']:.3f} capital at risk {s['capital_at_risk']} caps {s['caps_applied']}")
    hist = Table(title="State history")
    for col in ("at", "from", "to", "actor", "reason"):
        hist.add_column(col)
    for h in data["history"]:
        hist.add_row(str(h["at"]), h["from_state"] or "", h["to_state"], h["actor"], h["reason"] or "")
    console.print(hist)


async def _with_service(fn):
    from service.approvals import ServiceContext

    ctx = await ServiceContext.open(settings())
    try:
        return await fn(ctx)
    finally:
        await ctx.close()


def _decide(order_id: str, decision, as_json: bool) -> None:
    from service import approvals

    try:
        result = _run_async(_with_service(lambda ctx: approvals.decide(ctx, order_id, decision)))
    except approvals.ApprovalError as exc:
        _fail(str(exc))
    if as_json:
        return _print_json(result)
    execution = result.get("execution") or {}
    console.print(f"[bold]{order_id}[/] is now [bold]{result['state']}[/] (decided by {decision.approver})")
    if execution:
        console.print(f"execution: {execution['outcome']}" + (f" — {'; '.join(execution['reasons'])}" if execution["reasons"] else ""))


def _approver_name(approver: Optional[str]) -> str:
    import getpass

    return approver or f"cli:{getpass.getuser()}"


@orders_app.command("approve")
def orders_approve(order_id: str, acknowledge: bool = typer.Option(False, help="Acknowledge more than 10 contracts."),
                   approver: Optional[str] = typer.Option(None, help="Recorded as the approver (default: cli:<user>)."),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Approve a staged order: it is re-checked against a fresh quote and sent to the paper broker."""
    from service.approvals import Decision

    _decide(order_id, Decision("approve", _approver_name(approver), acknowledge=acknowledge), as_json)


@orders_app.command("reject")
def orders_reject(order_id: str, reason: str = typer.Option(..., help="Why (recorded)."),
                  approver: Optional[str] = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Reject a staged order with a reason."""
    from service.approvals import Decision

    _decide(order_id, Decision("reject", _approver_name(approver), reason=reason), as_json)


@orders_app.command("resize")
def orders_resize(order_id: str, quantity: int = typer.Option(..., help="Fewer contracts than staged."),
                  acknowledge: bool = typer.Option(False), approver: Optional[str] = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Approve a staged order for a smaller quantity."""
    from service.approvals import Decision

    _decide(order_id, Decision("resize", _approver_name(approver), quantity=quantity, acknowledge=acknowledge), as_json)


@orders_app.command("flatten")
def orders_flatten(with_protection: bool = typer.Option(False, help="Close each short with its protecting long."),
                   actor: Optional[str] = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Stage buy-to-close orders for every short option position; they wait for approval."""
    from service import approvals

    staged = _run_async(_with_service(lambda ctx: approvals.stage_flatten(ctx, _approver_name(actor),
                                                                            with_protection=with_protection)))
    if as_json:
        return _print_json(staged)
    if not staged:
        console.print("no short option positions: nothing to flatten")
    for o in staged:
        console.print(f"staged {o['order_id']} {o['ticker']} {_legs_text(o['legs'])} ×{o['quantity']} limit {o['limit_price']}")


@app.command()
def journal(limit: int = 50, ticker: Optional[str] = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Fills with their market context, approver and run; and the latest account snapshots."""
    from storage.journal import Journal

    async def go(db):
        j = Journal(db.pool)
        return await j.entries(ticker=ticker, limit=limit), (await j.snapshots())[-10:]

    entries, snapshots = _run_async(_with_db(go))
    if as_json:
        return _print_json(operations.jsonable({"entries": [e.__dict__ for e in entries],
                                                "snapshots": [s.__dict__ for s in snapshots]}))
    table = Table(title="Journal")
    for col in ("filled at", "order", "ticker", "qty", "price", "approver", "regime", "VIX", "run"):
        table.add_column(col)
    for e in entries:
        table.add_row(str(e.filled_at)[:19], e.order_id, e.ticker, str(e.quantity), str(e.price), e.approver or "",
                      e.regime or "", f"{e.vix:.1f}" if e.vix is not None else "", e.run_id)
    console.print(table)
    snaps = Table(title="Account snapshots")
    for col in ("at", "NLV", "cash", "margin", "delta", "SPX β-delta", "|Θ|/|V|"):
        snaps.add_column(col)
    for s in snapshots:
        ratio = "—" if s.theta_vega_ratio is None else f"{s.theta_vega_ratio:.3f}"
        snaps.add_row(str(s.captured_at)[:19], str(s.net_liquidation), str(s.cash), str(s.margin_used),
                      f"{s.delta:.1f}", f"{s.spx_beta_weighted_delta:.1f}", ratio)
    console.print(snaps)


@risk_app.command("status")
def risk_status_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The kill switch and the order book by state."""
    from service import approvals

    data = _run_async(_with_service(approvals.risk_status))
    if as_json:
        return _print_json(data)
    console.print(f"trading {'[red]HALTED[/]: ' + str(data['reason']) if data['halted'] else '[green]active[/]'}")
    console.print(f"orders by state: {data['orders_by_state']}")


@risk_app.command("halt")
def risk_halt(reason: str = typer.Option(..., help="Why (recorded)."), actor: Optional[str] = None) -> None:
    """Kill switch: nothing new is staged or sent until `risk resume`."""
    from service import approvals

    try:
        data = _run_async(_with_service(lambda ctx: approvals.halt(ctx, _approver_name(actor), reason)))
    except approvals.ApprovalError as exc:
        _fail(str(exc))
    console.print(f"[red]halted[/] by {data['actor']}: {data['reason']}")


@risk_app.command("resume")
def risk_resume(actor: Optional[str] = None) -> None:
    """Lift the kill switch."""
    from service import approvals

    data = _run_async(_with_service(lambda ctx: approvals.resume_trading(ctx, _approver_name(actor))))
    console.print(f"[green]trading resumed[/] by {data['actor']}")


@app.command()
def schedule(once: bool = typer.Option(False, help="Run one tick (due slots now) and exit."),
             poll_seconds: float = typer.Option(20.0, help="Seconds between ticks.")) -> None:
    """Run the slots of config/schedule.yaml on NYSE trading days (one run per slot, even with two schedulers)."""
    _run_async(_schedule(once, poll_seconds))


async def _schedule(once: bool, poll_seconds: float) -> None:
    from service.scheduler import Scheduler, load_schedule

    config = load_schedule()
    d = defaults()
    async with open_database(settings()) as db:
        provider = _provider(d.seed, {})

        async def run_slot(slot) -> str:
            outcome = await operations.run_decision(
                db, provider, watchlist=slot.watchlist, tickers=list(slot.tickers), as_of=slot.scheduled_at, seed=d.seed)
            return outcome.run.run_id

        scheduler = Scheduler(db, config, run_slot)
        if once:
            for outcome in await scheduler.tick():
                console.print(outcome)
            await _housekeeping(db)
            return
        stop = asyncio.Event()
        console.print(f"scheduler running ({len(config.slots)} slots a session); Ctrl-C to stop")

        async def housekeeping_loop():
            while not stop.is_set():
                await _housekeeping(db)
                await asyncio.sleep(poll_seconds)

        try:
            await asyncio.gather(scheduler.run_forever(stop, poll_seconds=poll_seconds), housekeeping_loop())
        except asyncio.CancelledError:
            stop.set()


async def _housekeeping(db) -> None:
    """Between slots: expire undecided orders, resume approved-but-unsent ones, attach outcomes."""
    from memory.outcomes import attach_due_outcomes
    from memory.store import MemoryStore
    from service import approvals

    ctx = approvals.ServiceContext(db=db, memory=MemoryStore(db.pool))
    try:
        await approvals.expire_due(ctx)
        await approvals.recover_pending(ctx)
        await attach_due_outcomes(ctx.memory, _provider(defaults().seed, {}), ctx.clock())
    except Exception as exc:  # housekeeping must never stop the scheduler
        console.print(f"[yellow]housekeeping:[/] {type(exc).__name__}: {exc}")


@app.command("chain")
def chain_command(path: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """Analyse one Cboe quote-table file: forwards, SVI fits, arbitrage flags, GEX, max pain, rejects."""
    from tools.cboe import CboeFormatError, read_cboe_quote_table
    from tools.chain_analysis import analyze_chain

    try:
        chain = read_cboe_quote_table(path)
    except (CboeFormatError, OSError) as exc:
        _fail(str(exc))
    analysis = analyze_chain(chain)
    if as_json:
        return _print_json(analysis.to_dict())
    from service.chain_report import render_chain_report

    render_chain_report(analysis, console)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (also done automatically on every connect)."""
    async def go(db):
        return await db.pool.fetch("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
    for row in _run_async(_with_db(go)):
        console.print(f"{row['version']:04d} {row['name']} applied {row['applied_at']:%Y-%m-%d %H:%M}")


@db_app.command("url")
def db_url() -> None:
    """Where the database is (password redacted)."""
    from storage.embedded import redact

    s = settings()
    console.print(redact(s.database_url) if s.database_url else f"embedded PostgreSQL under {s.pg_dir}")


tokens_app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the HTTP API.")
app.add_typer(tokens_app, name="tokens")


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="TCP port.")) -> None:
    """The HTTP API (OpenAPI at /docs): runs, orders and approvals, risk, health, metrics."""
    import uvicorn

    from service.api import create_app

    uvicorn.run(create_app(), host=host, port=port)


@tokens_app.command("create")
def tokens_create(name: str, role: str = typer.Option(..., help="viewer, approver or admin.")) -> None:
    """Create a token for NAME (recorded as the approver); it is printed once and stored only hashed."""
    from storage.tokens import TokenError, TokenRepository

    try:
        token = _run_async(_with_db(lambda db: TokenRepository(db.pool).create(name, role)))
    except TokenError as exc:
        _fail(str(exc))
    typer.echo(token)
    typer.echo(f"token for {name} ({role}): shown only now — store it safely", err=True)


@tokens_app.command("list")
def tokens_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Token names, roles and dates (never the tokens themselves)."""
    from storage.tokens import TokenRepository

    rows = _run_async(_with_db(lambda db: TokenRepository(db.pool).list()))
    if as_json:
        return _print_json(operations.jsonable([r.__dict__ for r in rows]))
    table = Table(title="API tokens")
    for col in ("name", "role", "created", "revoked"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, r.role, f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke NAME's active token: it stops working immediately."""
    from storage.tokens import TokenRepository

    if not _run_async(_with_db(lambda db: TokenRepository(db.pool).revoke(name))):
        _fail(f"no active token named {name}")
    console.print(f"revoked the token of {name}")


def main() -> None:  # pragma: no cover - console entry
    logging.basicConfig(level=logging.WARNING)
    app()


from service.commands_doctor import doctor  # noqa: E402

app.command("doctor")(doctor)
