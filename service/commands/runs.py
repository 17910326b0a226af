"""`hedgegraph runs ...`: list, show and trace decision runs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from service.commands.common import console, fail, print_json, run_async, table, with_db

app = typer.Typer(no_args_is_help=True, help="Decision runs.")


RUN_STATUSES = ("pending", "running", "awaiting_approval", "completed", "failed")


def _choice(allowed: tuple[str, ...]):
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value.lower() not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value.lower() if value is not None else None
    return check


def _ticker(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    from tools.providers.simulated import normalize_ticker

    try:
        return normalize_ticker(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a ticker symbol") from None


def _day(value: Optional[str]):
    """A New York date (YYYY-MM-DD) as the start of that day."""
    if value is None:
        return None
    from datetime import date

    from tools.market_hours import day_start

    try:
        return day_start(date.fromisoformat(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date like 2026-11-20") from None


@app.command("list")
def runs_list(limit: int = typer.Option(50, min=1, max=10_000, help="At most this many runs."),
              ticker: Optional[str] = typer.Option(None, callback=_ticker, help="Runs that decided on TICKER."),
              status: Optional[str] = typer.Option(None, callback=_choice(RUN_STATUSES),
                                                   help=f"One of {', '.join(RUN_STATUSES)}."),
              since: Optional[str] = typer.Option(None, help="As of this New York date or later (YYYY-MM-DD)."),
              until: Optional[str] = typer.Option(None, help="As of this New York date or earlier (YYYY-MM-DD)."),
              debater: Optional[str] = typer.Option(None, help="deterministic, llm (any model) or llm:MODEL."),
              mode: Optional[str] = typer.Option(None, callback=_choice(("live", "sandbox")),
                                                 help="live, or sandbox (replays and forks)."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Recent runs, newest first, optionally filtered."""
    from datetime import timedelta

    from service import operations

    try:
        start, end = _day(since), _day(until)
    except typer.BadParameter as exc:
        fail(f"--since/--until: {exc}")
    filters = {"ticker": ticker, "status": status, "since": start, "until": end and end + timedelta(days=1),
               "debater": debater, "mode": mode}
    rows = run_async(with_db(lambda db: operations.list_runs(db, limit, **filters)))
    if as_json:
        return print_json(rows)
    t = table("Runs", ("run_id", "as_of", "status", "tickers", "debater", "attempts", "mode"))
    for r in rows:
        t.add_row(r["run_id"], r["as_of"], r["status"], str(len(r["tickers"])), r["debater"], str(r["attempts"]),
                  r["mode"])
    if not rows:
        t.caption = "no runs" + (" match these filters" if any(v is not None for v in filters.values()) else "")
    console.print(t)


@app.command("diff")
def runs_diff(a: str = typer.Argument(..., metavar="RUN_A", help="A run id (shown as the original)."),
              b: str = typer.Argument(..., metavar="RUN_B", help="The run id to compare it with."),
              as_json: bool = typer.Option(False, "--json", help="Everything, in full.")) -> None:
    """Compare any two runs, node by node.

    Inputs and settings first, then signals, verdicts (with a line diff of the transcripts), risk
    decisions, proposals, sizes and staged orders."""
    from graph.diff import RunDiffError
    from service import operations

    try:
        data = run_async(with_db(lambda db: operations.diff_runs(db, a, b)))
    except RunDiffError as exc:
        fail(str(exc))
    if as_json:
        return print_json(data)
    console.print(f"[bold]{a}[/] → [bold]{b}[/]")
    if data["inputs"] or data["config"]:
        t = table("Inputs", ("input", a, b))
        for d in data["inputs"]:
            t.add_row(d["field"], str(d["a"]), str(d["b"]))
        for d in data["config"]:
            t.add_row(f"config.{d['setting']}", str(d["a"]), str(d["b"]))
        console.print(t)
    t = table("Nodes", ("node", "same", "differences"))
    for n in data["nodes"]:
        t.add_row(n["node"], "[green]yes[/]" if n["matched"] else "[red]no[/]", n["diff"])
    console.print(t)
    console.print("[green]every node matched[/]" if data["matched"] else
                  f"[red]differs at {', '.join(data['differing_nodes'])}[/] (all of it: --json)")


@app.command("export")
def runs_export(run_id: str = typer.Argument(..., metavar="RUN"),
                output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                      help="The file to write (default: RUN.trace.zip here)."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Write a run's whole trace as one file: every step's state, LLM calls, the market snapshot, the run
    record. `hedgegraph replay --from-file FILE` re-runs it in any database."""
    from graph.run_export import TraceFileError
    from service import operations

    path = output if output is not None else Path(f"{run_id}.trace.zip")
    if "/" in run_id and output is None:
        fail(f"{run_id!r} is not a run id")
    try:
        summary = run_async(with_db(lambda db: operations.export_run(db, run_id, path)))
    except TraceFileError as exc:
        fail(str(exc))
    if as_json:
        return print_json(summary)
    console.print(f"wrote {summary['path']} ({summary['bytes']:,} bytes: {summary['steps']} steps, "
                  f"{summary['checkpoints']} checkpoints, {summary['llm_calls']} LLM calls)")


@app.command("studio")
def runs_studio(run_id: str = typer.Argument(..., metavar="RUN"),
                url: str = typer.Option("http://127.0.0.1:2024", "--url", help="The `langgraph dev` server."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Open a recorded run in LangGraph Studio (a thread on the `langgraph dev` server at --url)."""
    from service import operations

    try:
        data = run_async(with_db(lambda db: operations.open_in_studio(db, run_id, url)))
    except LookupError as exc:
        fail(str(exc))
    if as_json:
        return print_json(data)
    console.print(f"{run_id} is thread {data['thread_id']} on {data['server']} ({data['checkpoints']} checkpoints): "
                  f"{data['studio_url']}")


@app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json"),
              steps: bool = typer.Option(False, "--steps", help="The trace: each step's nodes, duration and writes."),
              step: Optional[int] = typer.Option(None, "--step", min=0, help="The full state after step N (JSON); "
                                                 "for a step that has not finished, the state it started from.")) -> None:
    """One run: its signals, debates, risk decisions, orders, node timings and LLM usage."""
    from service import operations

    if step is not None or steps:
        return _show_trace(run_id, step, as_json)
    data = run_async(with_db(lambda db: operations.show_run(db, run_id)))
    if data is None:
        fail(f"no run {run_id}")
    if as_json:
        return print_json(data)
    run = data["run"]
    console.print(f"[bold]{run['run_id']}[/] {run['status']} as of {run['as_of']} ({len(run['tickers'])} tickers)"
                  + (f" — {run['mode']}, from {run['parent_run_id']}" if run.get("parent_run_id") else ""))
    if run.get("error"):
        console.print(f"[red]error:[/] {run['error']}")
    usage = data["llm_usage"]
    cost = data["llm_cost"]
    priced = "" if not usage["calls"] else (
        f", cost ${float(cost['cost_usd']):.4f}" if cost["cost_usd"] is not None else ", cost unknown (no price)")
    console.print(f"LLM calls {usage['calls']}, tokens in {usage['tokens_in']}, out {usage['tokens_out']}{priced}"
                  + (f", {cost['retries']} retries" if cost["retries"] else ""))
    fallbacks = [d["ticker"] for d in data["debates"] if "fallback" in d["debater"]]
    if fallbacks:
        console.print(f"[yellow]the LLM debate fell back to the deterministic debater for {', '.join(fallbacks)}[/] "
                      f"(see `hedgegraph llm calls {run['run_id']}`)")
    t = table("Signals", ("ticker", "source", "direction", "conviction", "edge", "data quality"))
    for s in data["signals"]:
        t.add_row(s["ticker"], s["source"], s["direction"], f"{s['conviction']:.2f}", s["edge_type"],
                  "; ".join(s["data_quality"])[:60])
    console.print(t)
    t = table("Debates", ("ticker", "debater", "verdict", "confidence", "rationale"))
    for d in data["debates"]:
        t.add_row(d["ticker"], d["debater"], d["price_view"], f"{d['confidence']:.2f}", d["rationale"][:100])
    console.print(t)
    t = table("Risk decisions", ("ticker", "stage", "approved", "vetoes", "warnings"))
    for d in data["risk_decisions"]:
        t.add_row(d["ticker"], d["stage"], str(d["approved"]), "; ".join(v["message"] for v in d["vetoes"])[:90],
                  "; ".join(w["code"] for w in d["warnings"]))
    console.print(t)
    t = table("Orders", ("order", "ticker", "structure", "qty", "limit", "state"))
    for o in data["orders"]:
        t.add_row(o["order_id"], o["ticker"], o["structure"], str(o["quantity"]), o["limit_price"], o["state"])
    console.print(t)


def _show_trace(run_id: str, step: Optional[int], as_json: bool) -> None:
    from graph.trace import TraceError
    from service import operations

    try:
        if step is not None:  # a full state is only readable as JSON
            return print_json(run_async(with_db(lambda db: operations.state_at(db, run_id, step))))
        rows = run_async(with_db(lambda db: operations.steps(db, run_id)))
    except TraceError as exc:
        fail(str(exc))
    if as_json:
        return print_json(rows)
    t = table(f"Steps of {run_id}", ("step", "node(s)", "tasks", "status", "wall ms", "node wall ms (its tasks' own ms)",
                                     "wrote"))
    for r in rows:
        # a node's tasks run in parallel within a step: its wall time is their span, not their sum
        node_ms = ", ".join(
            f"{k} {v:.0f}" + (f" ({r['node_tasks'][k]} tasks: {r['task_ms'][k]:.0f})" if r["node_tasks"][k] > 1 else "")
            for k, v in r["node_ms"].items())
        t.add_row(str(r["step"]), ", ".join(r["nodes"]), str(r["tasks"]), r["status"],
                  "—" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}", node_ms,
                  ", ".join(r["writes"]) + ("; " + "; ".join(r["errors"]) if r["errors"] else ""))
    console.print(t)
