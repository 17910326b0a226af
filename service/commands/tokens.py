"""`hedgegraph tokens ...`: bearer tokens of the HTTP API."""
from __future__ import annotations

import typer

from service.commands.common import console, fail, print_json, run_async, table, with_db

app = typer.Typer(no_args_is_help=True, help="Bearer tokens of the HTTP API.")


@app.command("create")
def tokens_create(name: str, role: str = typer.Option(..., help="viewer, approver or admin.")) -> None:
    """Create a token for NAME (recorded as the approver); it is printed once and stored only hashed."""
    from storage.tokens import TokenError, TokenRepository

    try:
        token = run_async(with_db(lambda db: TokenRepository(db.pool).create(name, role)))
    except TokenError as exc:
        fail(str(exc))
    typer.echo(token)
    typer.echo(f"token for {name} ({role}): shown only now — store it safely", err=True)


@app.command("list")
def tokens_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Token names, roles and dates (never the tokens themselves)."""
    from service.operations import jsonable
    from storage.tokens import TokenRepository

    rows = run_async(with_db(lambda db: TokenRepository(db.pool).list()))
    if as_json:
        return print_json(jsonable([r.__dict__ for r in rows]))
    t = table("API tokens", ("name", "role", "created", "revoked"))
    for r in rows:
        t.add_row(r.name, r.role, f"{r.created_at:%Y-%m-%d %H:%M}",
                  f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
    console.print(t)


@app.command("revoke")
def tokens_revoke(name: str) -> None:
    """Revoke NAME's active token: it stops working immediately."""
    from storage.tokens import TokenRepository

    if not run_async(with_db(lambda db: TokenRepository(db.pool).revoke(name))):
        fail(f"no active token named {name}")
    console.print(f"revoked the token of {name}")
