"""`hedgegraph db ...`: where the database is, and its migrations."""
from __future__ import annotations

import typer

from service.commands.common import console, run_async, settings, with_db

app = typer.Typer(no_args_is_help=True, help="The database.")


@app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (also done automatically on every connect)."""
    from storage.migrate import applied_migrations

    for row in run_async(with_db(lambda db: applied_migrations(db.pool))):
        console.print(f"{row['version']:04d} {row['name']} applied {row['applied_at']:%Y-%m-%d %H:%M}")


@app.command("url")
def db_url() -> None:
    """Where the database is (password redacted)."""
    from storage.embedded import redact

    s = settings()
    typer.echo(redact(s.database_url) if s.database_url else f"embedded PostgreSQL under {s.pg_dir}")
