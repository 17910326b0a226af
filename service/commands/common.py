"""What every command module shares: the console, one-line errors, JSON output, the database.

Kept light on purpose: a command module imports this and typer at import time, and everything
else (the database driver, the graph, NumPy) inside the command that needs it, so `--help` and
quick commands do not pay for the whole stack.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, NoReturn

import typer
from rich.console import Console

# Wide enough for the order tables when output is not a terminal (make run in CI, pipes).
console = Console(width=None if Console().is_terminal else 150)


class CommandError(Exception):
    """Refuse a command with one line (printed by `fail`); raised from helpers that are not commands."""


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit non-zero."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    """A remark about how the input was understood; on stderr, so `--json` output stays parseable."""
    typer.echo(one_line(message), err=True)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def run_async(coro):
    """Run a command's coroutine; a database that cannot be reached is one line, not a traceback."""
    from storage.database import DatabaseUnavailable

    try:
        return asyncio.run(coro)
    except DatabaseUnavailable as exc:
        fail(str(exc))
    except CommandError as exc:
        fail(str(exc))


def settings():
    from config.settings import settings as load

    return load()


async def with_db(fn):
    from storage.database import open_database

    async with open_database(settings()) as db:
        return await fn(db)


async def with_service(fn):
    from service.approvals import ServiceContext

    ctx = await ServiceContext.open(settings())
    try:
        return await fn(ctx)
    finally:
        await ctx.close()


def approver_name(approver: str | None) -> str:
    import getpass

    return approver or f"cli:{getpass.getuser()}"


def legs_text(legs: list[dict]) -> str:
    """"2026-12-24 +165C -175C": expiry once when all legs share it, signed ratio and strike
    ("-shares" for an order for shares, which has no expiry)."""
    expiries = {l["expiry"] for l in legs if l["expiry"] is not None}
    parts = []
    for l in legs:
        ratio = "" if l["ratio"] == 1 else str(l["ratio"])
        if l["right"] == "S":  # the underlying's shares (the book's exit of delivered shares)
            parts.append(f"{'+' if l['side'] == 'buy' else '-'}shares")
            continue
        text = f"{'+' if l['side'] == 'buy' else '-'}{ratio}{float(l['strike']):g}{l['right']}"
        parts.append(text if len(expiries) == 1 else f"{l['expiry']} {text}")
    return (f"{next(iter(expiries))} " if len(expiries) == 1 else "") + " ".join(parts)


def table(title: str, columns: tuple[str, ...] | list[str], **options):
    from rich.table import Table

    t = Table(title=title, **options)
    for col in columns:
        t.add_column(col)
    return t
