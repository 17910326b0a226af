"""`hedgegraph backtest`: the whole graph on real history; `backtest list|show`."""
from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import List, Optional

import typer

from service.commands.common import console, fail, note, print_json, run_async, settings, table, with_db

app = typer.Typer(help="Backtest the decision graph on historical data.", invoke_without_command=True)


def _date(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(f"{flag} takes a date YYYY-MM-DD, got {text!r}")


def _slots(text: str):
    from datetime import time

    out = []
    for part in text.split(","):
        try:
            out.append(time.fromisoformat(part.strip()))
        except ValueError:
            fail(f"--slots takes HH:MM[,HH:MM...], got {text!r}")
    return tuple(out)


@app.callback()
def backtest(ctx: typer.Context,
             start: Optional[str] = typer.Option(None, "--from", help="First day (YYYY-MM-DD)."),
             end: Optional[str] = typer.Option(None, "--to", help="Last day (YYYY-MM-DD)."),
             tickers: str = typer.Option("SPY", "--tickers", help="Comma-separated tickers."),
             slots: str = typer.Option("15:30", "--slots", help="Decision slots, New York time, comma-separated."),
             data: Optional[Path] = typer.Option(None, "--data", help="Daily-bar files (default ../shared/data/history)."),
             approve: str = typer.Option("all", "--approve", help="Approval policy: all | policy."),
             sets: List[str] = typer.Option([], "--set", help="Decision setting key=value (repeatable)."),
             results: Optional[Path] = typer.Option(None, "--results", help="Results root (default $HEDGEGRAPH_HOME/backtests)."),
             sweeps: List[str] = typer.Option([], "--sweep", help="key=v1,v2: one backtest per combination, in parallel."),
             workers: int = typer.Option(2, "--workers", min=1, max=64, help="Parallel backtests of a sweep."),
             ray: bool = typer.Option(False, "--ray", help="Run a sweep as Ray tasks (RAY_ADDRESS, else a local cluster)."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Run the graph on each NYSE session from --from to --to: one decision run per slot, an approval
    policy for the human, paper fills, marks, exits and expiry as live; metrics, both baselines and
    the report in a results folder."""
    if ctx.invoked_subcommand is not None:
        return
    if start is None or end is None:
        fail("backtest needs --from and --to (or a subcommand: list, show)")
    from graph.replay import ReplayError, parse_overrides
    from service.backtest import BacktestError, BacktestSpec
    from tools.providers.history import default_history_dir

    data_dir = data or default_history_dir()
    if data_dir is None or not Path(data_dir).is_dir():
        fail(f"no history directory: {data or '../shared/data/history does not exist'} (give --data DIR)")
    try:
        overrides = parse_overrides(sets)
        spec = BacktestSpec(_date(start, "--from"), _date(end, "--to"),
                            tuple(dict.fromkeys(t.strip().upper() for t in tickers.split(",") if t.strip())),
                            str(Path(data_dir).resolve()), slots=_slots(slots), approve=approve, overrides=overrides)
        spec.config()
    except (ReplayError, BacktestError, ValueError) as exc:
        fail(str(exc))
    root = results or settings().home / "backtests"
    if sweeps:
        return _sweep(spec, sweeps, root, workers, ray, as_json)
    report = run_async(with_db(lambda db: _run(db, spec, root, quiet=as_json)))
    if as_json:
        return print_json(_public(report))
    _print_summary(report)


def _sweep(spec, sweeps: list[str], root: Path, workers: int, ray: bool, as_json: bool) -> None:
    from service.backtest import BacktestError
    from service.backtest_sweep import parse_sweeps, run_sweep, sweep_specs, use_ray

    try:
        specs = sweep_specs(spec, parse_sweeps(sweeps))
    except BacktestError as exc:
        fail(str(exc))
    if use_ray(ray):
        try:
            import ray as _ray  # noqa: F401
        except ImportError:
            fail("--ray (or RAY_ADDRESS) needs the ray package: pip install 'ray>=2.9'")
    async def migrated(db):  # the workers then find the index tables ready (and never migrate at once)
        return None

    run_async(with_db(migrated))
    if not as_json:
        console.print(f"sweep: {len(specs)} backtests, {'Ray tasks' if use_ray(ray) else f'{workers} local processes'}")
    done = (lambda r: None) if as_json else (lambda r: console.print(f"done {r['backtest_id']} {r['overrides']}"))
    rows = run_sweep(specs, root, workers=workers, ray=ray, on_done=done)
    if as_json:
        return print_json(rows)
    t = table("Sweep", ("backtest", "settings", "total return", "sharpe", "max drawdown", "trades", "win rate"))
    for r in rows:
        m = r["metrics"]
        t.add_row(r["backtest_id"], " ".join(f"{k}={v}" for k, v in r["overrides"].items()), _fmt(m.get("total_return")),
                  _fmt(m.get("sharpe")), _fmt(m.get("max_drawdown")), _fmt(m.get("trades")), _fmt(m.get("win_rate")))
    console.print(t)


def _public(report: dict) -> dict:
    keep = ("backtest_id", "params", "days", "metrics", "baselines", "pnl_by_strategy", "pnl_by_regime",
            "pnl_by_agreement", "greeks_attribution", "calibration", "modelled_chain_days", "results_dir", "database",
            "account_id", "assumptions", "not_measured")
    return {k: report[k] for k in keep if k in report}


async def _run(db, spec, root: Path, *, quiet: bool) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from service.backtest import BacktestError, finish_backtest, run_backtest
    from tools.providers.history import HistoryDataError

    trades = 0
    progress = Progress(TextColumn("backtest"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), console=console, disable=quiet, transient=False)

    def on_day(day, n, total):
        nonlocal trades
        trades += day.filled
        equity = f"{float(day.net_liquidation):,.0f}" if day.net_liquidation is not None else "?"
        progress.update(task, completed=n, total=total, info=f"{day.session} trades {trades} equity {equity}")

    with progress:
        task = progress.add_task("backtest", total=None, info="")
        try:
            result = await run_backtest(db, spec, on_day=on_day)
        except (BacktestError, HistoryDataError) as exc:
            fail(str(exc))
    if result.reused:
        note(f"backtest {result.backtest_id} already completed with these parameters and data: reporting it")
    elif result.continued_after is not None:
        note(f"backtest {result.backtest_id} had stopped: continued after {result.continued_after}")
    return await finish_backtest(db, result, root)


def _fmt(value) -> str:
    return "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def _print_summary(report: dict) -> None:
    metrics = {"graph": report["metrics"], "SPY buy&hold": report["baselines"]["spy_buy_and_hold"],
               "iron condor": report["baselines"]["iron_condor_16d_45dte"]}
    t = table(f"Backtest {report['backtest_id']} ({report['days']} sessions)", ("metric", *metrics))
    for key in ("total_return", "cagr", "annual_volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                "var_95", "cvar_95", "trades", "win_rate", "average_win", "average_loss", "profit_factor", "turnover"):
        t.add_row(key, *(_fmt(m.get(key)) for m in metrics.values()))
    console.print(t)
    console.print(f"modelled chains on {len(report['modelled_chain_days'])} of {report['days']} sessions")
    console.print(f"results: {report['results_dir']}/report.html")
    console.print(f"runs: DATABASE_URL=<this server>/{report['database']} hedgegraph runs list")


@app.command("list")
def backtest_list(limit: int = typer.Option(50, min=1, max=10_000), as_json: bool = typer.Option(False, "--json")) -> None:
    """Backtests, newest first."""
    from service.operations import list_backtests

    data = run_async(with_db(lambda db: list_backtests(db, limit)))
    if as_json:
        return print_json(data)
    t = table("Backtests", ("backtest", "status", "from", "to", "tickers", "total return", "sharpe", "results"))
    for r in data:
        m = (r.get("summary") or {}).get("metrics", {})
        t.add_row(r["backtest_id"], r["status"], r["params"]["from"], r["params"]["to"], ",".join(r["params"]["tickers"]),
                  _fmt(m.get("total_return")), _fmt(m.get("sharpe")), r.get("results_dir") or "")
    console.print(t)


@app.command("show")
def backtest_show(backtest_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One backtest: parameters, summary, its days, where its runs live, and its report."""
    from service.operations import show_backtest

    data = run_async(with_db(lambda db: show_backtest(db, backtest_id)))
    if data is None:
        fail(f"no backtest {backtest_id}")
    if as_json:
        return print_json(data)
    console.print(f"[bold]{data['backtest_id']}[/] {data['status']} {data['params']}")
    if data.get("error"):
        console.print(f"[red]error:[/] {data['error']}")
    t = table("Days", ("session", "runs", "staged", "filled", "NLV"))
    for d in data["days"]:
        t.add_row(d["session"], ", ".join(d["run_ids"]), str(d["orders_staged"]), str(d["orders_filled"]),
                  str(d["net_liquidation"]))
    console.print(t)
    console.print(f"runs, replay, fork on a day: DATABASE_URL={data['database_url']} hedgegraph runs show RUN_ID")
    if data.get("results_dir"):
        console.print(f"report: {data['results_dir']}/report.html")
