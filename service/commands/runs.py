"""`hedgegraph runs ...`: list, show and trace decision runs."""
from __future__ import annotations

from typing import Optional

import typer

from service.commands.common import console, fail, print_json, run_async, table, with_db

app = typer.Typer(no_args_is_help=True, help="Decision runs.")


@app.command("list")
def runs_list(limit: int = typer.Option(50, min=1, max=10_000, help="At most this many runs."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Recent runs."""
    from service import operations

    rows = run_async(with_db(lambda db: operations.list_runs(db, limit)))
    if as_json:
        return print_json(rows)
    t = table("Runs", ("run_id", "as_of", "status", "tickers", "attempts", "mode"))
    for r in rows:
        t.add_row(r["run_id"], r["as_of"], r["status"], str(len(r["tickers"])), str(r["attempts"]), r["mode"])
    console.print(t)


@app.command("show")
def runs_show(run_id: str, as_json: bool = typer.Option(False, "--json"),
              steps: bool = typer.Option(False, "--steps", help="The trace: each step's nodes, duration and writes."),
              step: Optional[int] = typer.Option(None, "--step", min=0, help="The full state after step N (JSON).")) -> None:
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
    console.print(f"LLM calls {usage['calls']}, tokens in {usage['tokens_in']}, out {usage['tokens_out']}")
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
    t = table(f"Steps of {run_id}", ("step", "node(s)", "tasks", "status", "ms", "node ms (sum of tasks)", "wrote"))
    for r in rows:
        node_ms = ", ".join(f"{k} {v:.0f}" for k, v in r["node_ms"].items())
        t.add_row(str(r["step"]), ", ".join(r["nodes"]), str(r["tasks"]), r["status"],
                  "—" if r["duration_ms"] is None else f"{r['duration_ms']:.0f}", node_ms,
                  ", ".join(r["writes"]) + ("; " + "; ".join(r["errors"]) if r["errors"] else ""))
    console.print(t)
