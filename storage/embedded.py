"""Where the database is: `DATABASE_URL` when set, else an embedded PG16 + pgvector (pgserver).

The embedded server's data lives under `$HEDGEGRAPH_HOME/pg`. pgserver shares one server between
processes using the same directory and stops it when the last one exits.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

APP_DATABASE = "hedgegraph"


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def start_embedded_server(pg_dir: Path):
    """Start (or join) the embedded server in `pg_dir`; returns the pgserver handle."""
    import warnings

    pg_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); pgserver copes.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # imported here: only the embedded path needs it

        return pgserver.get_server(str(pg_dir), cleanup_mode="stop")


def embedded_database_url(pg_dir: Path, database: str = APP_DATABASE) -> tuple[str, object]:
    """Start the embedded server, make sure `database` exists, and return (url, server handle).

    Keep the handle alive as long as the database is in use: dropping it may stop the server.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise ValueError(f"invalid database name {database!r}")
    server = start_embedded_server(pg_dir)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {database};")
    base = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
    parts = urlsplit(base)
    url = urlunsplit(parts._replace(path=f"/{database}"))
    log.info("embedded postgres at %s", pg_dir)
    return url, server
