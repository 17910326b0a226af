"""`hedgegraph risk ...`: the kill switch."""
from __future__ import annotations

from typing import Optional

import typer

from service.commands.common import approver_name, console, fail, print_json, run_async, with_service

app = typer.Typer(no_args_is_help=True, help="The kill switch.")


@app.command("status")
def risk_status_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The kill switch and the order book by state."""
    from service import approvals

    data = run_async(with_service(approvals.risk_status))
    if as_json:
        return print_json(data)
    console.print(f"trading {'[red]HALTED[/]: ' + str(data['reason']) if data['halted'] else '[green]active[/]'}")
    console.print(f"orders by state: {data['orders_by_state']}")


@app.command("halt")
def risk_halt(reason: str = typer.Option(..., help="Why (recorded)."), actor: Optional[str] = None) -> None:
    """Kill switch: nothing new is staged or sent until `risk resume`."""
    from service import approvals

    try:
        data = run_async(with_service(lambda ctx: approvals.halt(ctx, approver_name(actor), reason)))
    except approvals.ApprovalError as exc:
        fail(str(exc))
    console.print(f"[red]halted[/] by {data['actor']}: {data['reason']}")


@app.command("resume")
def risk_resume(actor: Optional[str] = None) -> None:
    """Lift the kill switch."""
    from service import approvals

    data = run_async(with_service(lambda ctx: approvals.resume_trading(ctx, approver_name(actor))))
    console.print(f"[green]trading resumed[/] by {data['actor']}")
