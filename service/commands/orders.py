"""`hedgegraph orders ...`: list, show and decide staged orders; flatten short options."""
from __future__ import annotations

from typing import Optional

import typer

from service.commands.common import approver_name, console, fail, legs_text, print_json, run_async, table, with_db, \
    with_service

app = typer.Typer(no_args_is_help=True, help="Staged orders.")


def _order_state(value: Optional[str]) -> Optional[str]:
    """`--state`: one of the order states (any case); anything else is refused, not an empty list."""
    if value is None:
        return None
    from domain.order_state import OrderState

    names = [s.value for s in OrderState]
    if value.upper() not in names:
        raise typer.BadParameter(f"{value!r} is not an order state (one of {', '.join(names)})")
    return value.upper()


@app.command("list")
def orders_list(state: Optional[str] = typer.Option(None, callback=_order_state, help="Only orders in this state."),
                run_id: Optional[str] = typer.Option(None, "--run"),
                limit: int = typer.Option(100, min=1, max=10_000, help="At most this many orders."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Orders, newest first (filter by --state STAGED, --run RUN_ID)."""
    from service import operations

    rows = run_async(with_db(lambda db: operations.list_orders(db, state=state, run_id=run_id, limit=limit)))
    if as_json:
        return print_json(rows)
    t = table("Orders", ("order", "run", "ticker", "structure", "qty", "limit", "state", "ack"))
    for o in rows:
        t.add_row(o["order_id"], o["run_id"], o["ticker"], o["structure"], str(o["quantity"]), o["limit_price"],
                  o["state"], "yes" if o["requires_acknowledgement"] else "")
    console.print(t)


@app.command("show")
def orders_show(order_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One order with its legs, sizing and state history."""
    from service import operations

    data = run_async(with_db(lambda db: operations.show_order(db, order_id)))
    if data is None:
        fail(f"no order {order_id}")
    if as_json:
        return print_json(data)
    console.print(f"[bold]{data['order_id']}[/] {data['ticker']} {data['structure']} ×{data['quantity']} "
                  f"limit {data['limit_price']} [{data['state']}]")
    legs = table("Legs", ("side", "ratio", "expiry", "strike", "right", "bid", "ask", "iv", "delta"))
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
    hist = table("State history", ("at", "from", "to", "actor", "reason"))
    for h in data["history"]:
        hist.add_row(str(h["at"]), h["from_state"] or "", h["to_state"], h["actor"], h["reason"] or "")
    console.print(hist)


def _decide(order_id: str, decision, as_json: bool) -> None:
    from service import approvals

    try:
        result = run_async(with_service(lambda ctx: approvals.decide(ctx, order_id, decision)))
    except approvals.ApprovalError as exc:
        fail(str(exc))
    if as_json:
        return print_json(result)
    execution = result.get("execution") or {}
    console.print(f"[bold]{order_id}[/] is now [bold]{result['state']}[/] (decided by {decision.approver})")
    if execution:
        console.print(f"execution: {execution['outcome']}"
                      + (f" — {'; '.join(execution['reasons'])}" if execution["reasons"] else ""))


@app.command("approve")
def orders_approve(order_id: str, acknowledge: bool = typer.Option(False, help="Acknowledge more than 10 contracts."),
                   approver: Optional[str] = typer.Option(None, help="Recorded as the approver (default: cli:<user>)."),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Approve a staged order: it is re-checked against a fresh quote and sent to the paper broker."""
    from service.approvals import Decision

    _decide(order_id, Decision("approve", approver_name(approver), acknowledge=acknowledge), as_json)


@app.command("reject")
def orders_reject(order_id: str, reason: str = typer.Option(..., help="Why (recorded)."),
                  approver: Optional[str] = typer.Option(None), as_json: bool = typer.Option(False, "--json")) -> None:
    """Reject a staged order with a reason."""
    from service.approvals import Decision

    _decide(order_id, Decision("reject", approver_name(approver), reason=reason), as_json)


@app.command("resize")
def orders_resize(order_id: str, quantity: int = typer.Option(..., min=1, help="Fewer contracts than staged."),
                  acknowledge: bool = typer.Option(False), approver: Optional[str] = typer.Option(None),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Approve a staged order for a smaller quantity."""
    from service.approvals import Decision

    _decide(order_id, Decision("resize", approver_name(approver), quantity=quantity, acknowledge=acknowledge), as_json)


@app.command("flatten")
def orders_flatten(with_protection: bool = typer.Option(False, help="Close each short with its protecting long."),
                   actor: Optional[str] = None, as_json: bool = typer.Option(False, "--json")) -> None:
    """Stage buy-to-close orders for every short option position; they wait for approval."""
    from service import approvals

    staged = run_async(with_service(lambda ctx: approvals.stage_flatten(ctx, approver_name(actor),
                                                                          with_protection=with_protection)))
    if as_json:
        return print_json(staged)
    if not staged:
        console.print("no short option positions: nothing to flatten")
    for o in staged:
        console.print(f"staged {o['order_id']} {o['ticker']} {legs_text(o['legs'])} ×{o['quantity']} limit {o['limit_price']}")
