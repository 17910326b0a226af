"""`hedgegraph journal`, `schedule`, `serve` and `chain`: the service around the runs."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer

from service.commands.common import console, fail, print_json, run_async, settings, table, with_db

app = typer.Typer()


@app.command()
def journal(limit: int = typer.Option(50, min=1, max=10_000), ticker: Optional[str] = None,
            as_json: bool = typer.Option(False, "--json")) -> None:
    """Fills with their market context, approver and run; and the latest account snapshots."""
    from service.operations import jsonable
    from storage.journal import Journal

    async def go(db):
        j = Journal(db.pool)
        return await j.entries(ticker=ticker.upper() if ticker else None, limit=limit), (await j.snapshots())[-10:]

    entries, snapshots = run_async(with_db(go))
    if as_json:
        return print_json(jsonable({"entries": [e.__dict__ for e in entries],
                                    "snapshots": [s.__dict__ for s in snapshots]}))
    t = table("Journal", ("filled at", "order", "ticker", "qty", "price", "approver", "regime", "VIX", "run"))
    for e in entries:
        t.add_row(str(e.filled_at)[:19], e.order_id, e.ticker, str(e.quantity), str(e.price), e.approver or "",
                  e.regime or "", f"{e.vix:.1f}" if e.vix is not None else "", e.run_id)
    console.print(t)
    snaps = table("Account snapshots", ("at", "NLV", "cash", "margin", "delta", "SPX β-delta", "|Θ|/|V|"))
    for s in snapshots:
        ratio = "—" if s.theta_vega_ratio is None else f"{s.theta_vega_ratio:.3f}"
        snaps.add_row(str(s.captured_at)[:19], str(s.net_liquidation), str(s.cash), str(s.margin_used),
                      f"{s.delta:.1f}", f"{s.spx_beta_weighted_delta:.1f}", ratio)
    console.print(snaps)


@app.command()
def schedule(once: bool = typer.Option(False, help="Run one tick (due slots now) and exit."),
             poll_seconds: float = typer.Option(20.0, min=0.1, help="Seconds between ticks.")) -> None:
    """Run the slots of config/schedule.yaml on NYSE trading days (one run per slot, even with two schedulers)."""
    run_async(_schedule(once, poll_seconds))


async def _schedule(once: bool, poll_seconds: float) -> None:
    from config.settings import defaults
    from service import operations
    from service.commands.common import CommandError
    from service.commands.decide import market_provider
    from service.run_inputs import RunInputError
    from service.scheduler import Scheduler, load_schedule
    from storage.database import open_database

    config = load_schedule()
    d = defaults()
    async with open_database(settings()) as db:
        try:  # the configured market (config/connections.yaml), refused here with one line
            provider = market_provider(d.seed)
        except RunInputError as exc:
            raise CommandError(str(exc)) from None

        async def run_slot(slot) -> str:
            outcome = await operations.run_decision(
                db, provider, watchlist=slot.watchlist, tickers=list(slot.tickers), as_of=slot.scheduled_at, seed=d.seed)
            return outcome.run.run_id

        scheduler = Scheduler(db, config, run_slot)
        if once:
            for outcome in await scheduler.tick():
                console.print(outcome)
            report = await _housekeeping(db, mark=True)
            if report is not None:
                console.print(report)
            return
        stop = asyncio.Event()
        console.print(f"scheduler running ({len(config.slots)} slots a session); Ctrl-C to stop")

        async def after_tick(outcomes) -> None:
            # The book is marked after a slot has run (and once after the close), not at every poll.
            await _housekeeping(db, mark=bool(outcomes))

        try:
            await scheduler.run_forever(stop, poll_seconds=poll_seconds, after_tick=after_tick)
        except asyncio.CancelledError:
            stop.set()


async def _housekeeping(db, *, mark: bool):
    """Expiry, recovery, settlement, marks, exits and outcomes (service.housekeeping); it never stops
    the scheduler: a failure is one line."""
    from memory.store import MemoryStore
    from service.approvals import ServiceContext
    from service.housekeeping import housekeeping

    try:
        return await housekeeping(ServiceContext(db=db, memory=MemoryStore(db.pool)), mark=mark)
    except Exception as exc:  # housekeeping must never stop the scheduler
        console.print(f"[yellow]housekeeping:[/] {type(exc).__name__}: {exc}")
        return None


@app.command("chain")
def chain_command(path: Optional[Path] = typer.Argument(None, help="A Cboe quote-table file."),
                  model: Optional[str] = typer.Option(None, "--model", help="Instead: the history market's chain of TICKER."),
                  as_of: Optional[str] = typer.Option(None, "--as-of", help="With --model: the day (YYYY-MM-DD), at its close."),
                  data: Optional[Path] = typer.Option(None, "--data", help="With --model: daily-bar files (default ../shared/data/history)."),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Analyse one Cboe quote-table file, or (--model TICKER --as-of DATE) the chain the history
    market gives that ticker that day (recorded when a quote table exists, else modelled):
    forwards, SVI fits, arbitrage flags, GEX, max pain, rejects."""
    import csv

    from tools.cboe import read_cboe_quote_table
    from tools.chain_analysis import analyze_chain

    if (path is None) == (model is None):
        fail("give either a quote-table PATH or --model TICKER --as-of DATE")
    note_line = None
    if model is not None:
        from datetime import date

        from tools.providers.history import HistoryDataError, history_chain_analysis
        from tools.chain_model import ChainModelError

        if as_of is None:
            fail("--model needs --as-of YYYY-MM-DD")
        try:
            day = date.fromisoformat(as_of)
        except ValueError:
            fail(f"--as-of takes a date YYYY-MM-DD, got {as_of!r}")
        try:
            result = history_chain_analysis(model.upper(), day, data)
        except (HistoryDataError, ChainModelError, ValueError) as exc:
            fail(str(exc))
        if as_json:
            return print_json(result.to_dict())
        analysis, note_line = result.analysis, result.note
    else:
        try:
            chain = read_cboe_quote_table(path)
        except (OSError, ValueError, csv.Error) as exc:  # CboeFormatError and UnicodeDecodeError are ValueErrors
            fail(f"{path}: {exc}")
        analysis = analyze_chain(chain)
        if as_json:
            return print_json(analysis.to_dict())
    from service.chain_report import render_chain_report

    if note_line:
        console.print(note_line)
    render_chain_report(analysis, console)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, min=1, max=65535, help="TCP port.")) -> None:
    """The HTTP API (OpenAPI at /docs): runs, orders and approvals, risk, health, metrics."""
    import uvicorn

    from service.api import create_app

    uvicorn.run(create_app(), host=host, port=port)
