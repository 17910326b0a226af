"""`hedgegraph run`, `replay` and `fork`: make a decision run, re-execute one, change one."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from service.commands.common import console, fail, note, print_json, run_async, settings, table, with_db

app = typer.Typer()


def latest_slot_time(now: datetime) -> tuple[str, datetime]:
    """The most recent configured slot at or before `now` on an NYSE session: (watchlist, time).

    `hedgegraph run` without `--as-of` decides as of that slot, so a run on a weekend or at night
    still decides inside session hours, and repeating it the same day repeats the same slot.
    """
    from service.scheduler import load_schedule, previous_session, slots_for_session, xnys_calendar
    from tools.chain import NEW_YORK

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


def files_decision_time(market, tickers: list[str], now: datetime) -> tuple[datetime, str]:
    """When a files-market run decides by default, and why: the first scheduled slot after the data
    ends (its last close, or a quote table exported later), so the run trades in session on the
    files' last prices; the data's own end when that slot is still in the future."""
    from datetime import timedelta

    from service.scheduler import load_schedule, slots_for_session, xnys_calendar
    from tools.chain import NEW_YORK

    ends = market.latest_as_of(tickers)
    calendar, schedule = xnys_calendar(), load_schedule()
    day = ends.astimezone(NEW_YORK).date()
    for _ in range(10):
        if calendar.is_session(day.isoformat()):
            slots = [s.scheduled_at for s in slots_for_session(schedule, day) if s.scheduled_at >= ends]
            if slots:
                first = min(slots)
                if first <= now:
                    return first, (f"--market files: the data ends {ends.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}; "
                                   "deciding at the next scheduled slot, "
                                   f"{first.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}")
                break
        day += timedelta(days=1)
    return ends, (f"--market files: deciding when the data ends, {ends.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z} "
                  "(the next scheduled slot is still to come)")


def market_provider(seed: int, chains: dict | None = None, *, market: str | None = None,
                    data_dir: str | None = None):
    """The market a run reads: `market` (default: `market:` in config/connections.yaml), with
    `--chain` files over the simulated one or `--data DIR` for the files market. A market that
    cannot be built (a missing directory, an unreadable file) is refused here with one line."""
    from config.connections import ConfigurationError, load_connections
    from service.markets import MarketSourceError, build_market, market_source
    from service.run_inputs import RunInputError

    try:
        connections = load_connections()
        source = market_source(market or connections.market, data_dir=data_dir, chains=chains or {},
                               connections=connections)
        return build_market(source, seed, connections=connections)
    except (ConfigurationError, MarketSourceError) as exc:
        raise RunInputError(str(exc)) from None


@app.command()
def run(
    tickers: Optional[str] = typer.Option(None, help="Comma-separated tickers (default: the default watchlist)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Decision time, ISO 8601 (New York time without an "
                                        "offset); a date alone means that day's last scheduled slot; default: the "
                                        "latest schedule slot."),
    seed: Optional[int] = typer.Option(None, help="Seed of the simulated market (0 to 2^31-1)."),
    chain: list[str] = typer.Option([], "--chain", help="SYMBOL=PATH: use a Cboe quote-table file as SYMBOL's chain."),
    market: Optional[str] = typer.Option(None, "--market", help="simulated | files | ibkr | tastytrade (default: "
                                         "market: in config/connections.yaml, HEDGEGRAPH_MARKET)."),
    data: Optional[str] = typer.Option(None, "--data", help="The files market's directory: daily bars per ticker "
                                       "(TICKER.csv / .parquet) and Cboe quote tables "
                                       "(<ticker>_quotedata_<date>.csv)."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """One decision run: market data → analysts → debate → risk → strategy → Kelly → staged orders."""
    from config.settings import defaults
    from service.run_inputs import (
        PrefetchedProvider, RunInputError, check_seed, parse_as_of, parse_chain_options, parse_tickers,
    )
    from config.clock import wall_clock
    from tools.chain import NEW_YORK
    from brokers.broker_market import BrokerMarket
    from tools.providers.files import FilesDataError, FilesMarket

    d = defaults()
    try:  # every input is checked, and the market read, before a run row exists
        seed = check_seed(d.seed if seed is None else seed)
        chains = parse_chain_options(chain)
        provider = market_provider(seed, chains, market=market, data_dir=data)
        from_files = isinstance(provider, FilesMarket)
        # The files market's default watchlist is the tickers it has files for.
        ticker_list = parse_tickers(tickers, provider.tickers() if from_files else list(d.watchlist))
        ticker_list += [symbol for symbol in chains if symbol not in ticker_list]
        now = wall_clock().astimezone(NEW_YORK)  # HEDGEGRAPH_NOW in paper mode
        if from_files:
            provider.require(ticker_list)
        if as_of:
            parsed = parse_as_of(as_of, now)
            when, watchlist = parsed.when, parsed.watchlist or "adhoc"
            if parsed.slot_note:
                note(parsed.slot_note)
        elif from_files:  # decide on the data's last close (or its last quote table of that session)
            (when, why), watchlist = files_decision_time(provider, ticker_list, now), "adhoc"
            note(why)
        elif isinstance(provider, BrokerMarket):  # the broker's market is read live: decide now
            when, watchlist = now, "adhoc"
        elif chains:
            when, watchlist = provider.latest_as_of, "adhoc"  # decide when the chain files were taken
        else:
            watchlist, when = latest_slot_time(now)
        if tickers or chains:
            watchlist = "adhoc"
        try:
            provider = PrefetchedProvider(provider, ticker_list, when)
        except ValueError as exc:  # out of the provider's span, a chain file after the as-of, a bad file, ...
            raise RunInputError(f"no market data for this run: {exc}") from None
        missing = provider.snapshot(ticker_list, when).meta.get("missing_tickers") if from_files else None
        if missing:
            raise RunInputError(f"no market data for this run: {'; '.join(missing)}")
    except (RunInputError, FilesDataError) as exc:
        fail(str(exc))
    outcome = run_async(_run(provider, ticker_list, when, seed, watchlist, quiet=as_json))
    if as_json:
        from service import operations

        print_json(operations.jsonable({
            "run": outcome.run.__dict__, "executed": outcome.executed, "resumed": outcome.resumed,
            "orders": [operations.order_summary(o) for o in outcome.orders],
        }))
        return
    _render_outcome(outcome)


async def _run(provider, tickers, when, seed, watchlist, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from graph.runner import RunBusy, RunFailed
    from service import operations
    from service.commands.common import CommandError
    from storage.database import open_database

    async with open_database(settings()) as db:
        total_tasks = 10 + 4 * len(tickers)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=quiet, transient=False) as progress:
            task = progress.add_task(f"decision run {when:%Y-%m-%d %H:%M %Z}", total=total_tasks)

            def on_node(node: str, update: dict) -> None:
                progress.update(task, advance=1, description=f"{node}")

            try:
                outcome = await operations.run_decision(
                    db, provider, watchlist=watchlist, tickers=tickers, as_of=when, seed=seed, on_node=on_node)
            except RunBusy as exc:
                raise CommandError(f"busy: {exc}; it finishes there (see `hedgegraph runs show`)") from None
            except RunFailed as exc:
                raise CommandError(f"{exc} (`hedgegraph run` again resumes it from its last checkpoint)") from None
            progress.update(task, completed=total_tasks, description="done")
        return outcome


def _render_outcome(outcome) -> None:
    from tools.chain import NEW_YORK

    run, state = outcome.run, outcome.state
    done = f"{'resumed; ' if outcome.resumed else ''}{run.status.replace('_', ' ')}"
    status = f"already run ({run.status.replace('_', ' ')}) — nothing added" if not outcome.executed else done
    console.print(f"\n[bold]run[/] {run.run_id}  as of {run.as_of.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}  [green]{status}[/]")
    ctx = state.get("context")
    if ctx is not None:
        r = ctx.regime
        console.print(f"regime [bold]{r.name}[/]  VIX {r.vix:.2f}  VIX/VIX3M {r.term_ratio:.3f}")
    signals = table("Signals", ("ticker", "vol_surface", "flow", "technical", "social"))
    by_ticker: dict[str, dict[str, str]] = {}
    for s in state.get("signals", []):
        by_ticker.setdefault(s.ticker, {})[s.source] = f"{s.direction} {s.conviction:.2f}"
    for ticker in sorted(by_ticker):
        row = by_ticker[ticker]
        signals.add_row(ticker, *(row.get(c, "—") for c in ("vol_surface", "flow", "technical", "social")))
    console.print(signals)

    verdicts = table("Debate verdicts and risk", ("ticker", "verdict", "vol view", "confidence", "pre-trade",
                                                  "structure / why not"))
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
    render_orders(outcome.orders, title="Staged orders")
    if any(o.state == "STAGED" for o in outcome.orders):
        console.print("review with [bold]hedgegraph orders show ORDER[/]; decide with "
                      "[bold]hedgegraph orders approve|reject|resize ORDER[/]")


def render_orders(orders, title: str) -> None:
    from service.commands.common import legs_text

    t = table(title, ())
    for col in ("order", "ticker", "structure", "legs", "qty", "limit", "max loss/unit", "state", "ack"):
        t.add_column(col, no_wrap=col in ("order", "legs"))
    for o in orders:
        t.add_row(o.order_id, o.ticker, o.structure, legs_text([leg.to_json() for leg in o.legs]), str(o.quantity), f"{o.limit_price:+.2f}",
                  str(o.proposal.get("max_loss")), o.state, "yes" if o.requires_acknowledgement else "")
    if not orders:
        t.caption = "no orders staged"
    console.print(t)


def render_comparison(nodes: list[dict], title: str) -> None:
    t = table(title, ("node", "matched", "diff"))
    for n in nodes:
        matched = "[green]yes[/]" if n["matched"] else "[red]no[/]"
        t.add_row(n["node"] + ("" if n["rerun"] else " (copied)"), matched, n["diff"])
    console.print(t)


@app.command()
def replay(run_id: Optional[str] = typer.Argument(None, help="The run to replay (or --from-file)."),
           from_file: Optional[Path] = typer.Option(None, "--from-file", help="A trace written by "
                                                    "`hedgegraph runs export`: imported here, then replayed."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-execute a run in a sandbox from its recordings and compare every node with the original.

    No LLM or network call is made (recorded LLM answers are served), nothing is staged or sent."""
    from graph.replay import ReplayError
    from service import operations

    if (run_id is None) == (from_file is None):
        fail("give a run id or --from-file PATH (one of them)")
    try:
        if from_file is not None:
            report = run_async(with_db(lambda db: operations.replay_from_file(db, from_file)))
            run_id = report["run_id"]
        else:
            report = run_async(with_db(lambda db: operations.replay(db, run_id)))
    except ReplayError as exc:
        fail(str(exc))
    if as_json:
        return print_json(report)
    if from_file is not None:
        console.print(f"{'imported' if report['imported'] else 'already here:'} [bold]{run_id}[/] from {from_file}")
    console.print(f"replayed [bold]{run_id}[/] as {report['replay_run_id']} (debater {report['debater']}, "
                  f"{report['llm_calls_served']} recorded LLM answers served)")
    render_comparison(report["nodes"], "Replay vs original")
    verdict = "[green]every node matched[/]" if report["matched"] else \
        f"[red]differs at {', '.join(report['differing_nodes'])}[/]"
    console.print(verdict)


@app.command()
def fork(run_id: str, at: str = typer.Option(..., "--at", help="Node to re-run from: load_context, one "
                                             "analyst (vol_surface, flow, technical, social), select_candidates, debate, "
                                             "risk_gate, strategy_selector, kelly_allocator, post_trade_check, stage_orders."),
         set_: list[str] = typer.Option([], "--set", help="key=value: a DecisionConfig setting to change."),
         live_llm: bool = typer.Option(False, "--live-llm", help="Debate with the configured LLM, not the recording."),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """Run a run again from before one node with changed settings, in a sandbox, and show what changed."""
    from graph.replay import ReplayError
    from service import operations

    try:
        report = run_async(with_db(lambda db: operations.fork(db, run_id, at, set_, live_llm=live_llm)))
    except ReplayError as exc:
        fail(str(exc))
    if as_json:
        return print_json(report)
    console.print(f"forked [bold]{run_id}[/] at {at} as {report['fork_run_id']} with {report['overrides']}")
    render_comparison(report["nodes"], "Fork vs original")
    console.print(f"staged: original {report['original_staged'] or 'none'} → fork {report['staged'] or 'none'}")
