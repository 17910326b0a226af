"""`hedgegraph llm ...`: a run's LLM calls — prompts, responses, retries — and what they cost."""
from __future__ import annotations

import typer

from service.commands.common import console, fail, print_json, run_async, table, with_db

app = typer.Typer(no_args_is_help=True, help="LLM calls and their cost.")


@app.command("calls")
def llm_calls(run_id: str,
              full: bool = typer.Option(False, "--full", help="Print every prompt and response in full."),
              as_json: bool = typer.Option(False, "--json", help="Everything, prompts and responses included.")) -> None:
    """The run's LLM calls in order (status, HTTP attempts, tokens, latency), fallbacks, and the cost
    from the price table (config/llm_prices.yaml or $HEDGEGRAPH_LLM_PRICES)."""
    from service import operations

    data = run_async(with_db(lambda db: operations.llm_calls(db, run_id)))
    if data is None:
        fail(f"no run {run_id}")
    if as_json:
        return print_json(data)
    usage = data["usage"]
    cost = "unknown (no price for " + ", ".join(sorted(set(usage["by_model"]) - set(usage["priced_models"]))) + ")" \
        if usage["cost_usd"] is None else f"${float(usage['cost_usd']):.4f}"
    console.print(f"[bold]{run_id}[/]: {usage['calls']} LLM calls, {usage['requests']} HTTP requests "
                  f"({usage['retries']} retries), {usage['failed']} failed, tokens in {usage['tokens_in']}, "
                  f"out {usage['tokens_out']}, cost {cost}")
    for f in data["fallbacks"]:
        console.print(f"[yellow]fallback:[/] {f['ticker']}: {f['debater']}")
    t = table("LLM calls", ("#", "ticker", "role", "round", "status", "attempts", "tokens in/out", "ms", "response"))
    for c in data["calls"]:
        tokens = f"{c['tokens_in'] if c['tokens_in'] is not None else '?'}/{c['tokens_out'] if c['tokens_out'] is not None else '?'}"
        t.add_row(str(c["id"]), c["ticker"], c["role"], str(c["round"]), c["status"], str(c["attempts"]), tokens,
                  f"{c['latency_ms']:.0f}", (c["response"] or c["error"] or "")[:70])
    console.print(t)
    if full:
        for c in data["calls"]:
            console.rule(f"#{c['id']} {c['ticker']} {c['role']} round {c['round']} — {c['status']}")
            for m in c["messages"]:
                console.print(f"[bold]{m['role']}[/]:", markup=True)
                console.print(m["content"], markup=False, highlight=False)
            console.print("[bold]response[/]:")
            console.print(c["response"] or f"(none: {c['error']})", markup=False, highlight=False)
