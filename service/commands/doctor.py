"""`hedgegraph doctor [--json]`: the configuration and every configured connection, checked.

Registered on the CLI with one line: `app.add_typer(doctor.app)`. Exits 1 when a check is an
error, so a script (or CI) can gate on it.
"""
from __future__ import annotations

import typer

app = typer.Typer()
STYLE = {"ok": "green", "not_configured": "dim", "warning": "yellow", "error": "bold red"}


@app.command("doctor")
def doctor(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Check the configuration and each connection, and say precisely what is wrong."""
    import asyncio
    import json

    from rich.console import Console
    from rich.table import Table

    from service.doctor import diagnose

    report = asyncio.run(diagnose())
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        table = Table(title="hedgegraph doctor")
        for column in ("component", "status", "detail"):
            table.add_column(column)
        for check in report["checks"]:
            status = check["status"]
            table.add_row(check["component"], f"[{STYLE[status]}]{status.replace('_', ' ')}[/]", check["detail"])
        Console().print(table)
    if not report["ok"]:
        raise typer.Exit(1)
