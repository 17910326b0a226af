"""Where the database is: `DATABASE_URL` when set, else an embedded PG16 + pgvector (pgserver).

The embedded server's data lives under `$HEDGEGRAPH_HOME/pg`. pgserver shares one server between
processes using the same directory and stops it when the last one exits.
"""
from __future__ import annotations

import atexit
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tools.processes import process_alive

log = logging.getLogger(__name__)

APP_DATABASE = "hedgegraph"


# `password=secret`, `password = 'it''s'` in a keyword/value DSN ("host=db user=me password=...").
_KEYWORD_PASSWORD = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.|'')*'|[^\s&]+)""", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL or keyword DSN with any password replaced, for logs and error messages."""
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parseable as a URL: keep nothing after the scheme that could be secret
        return url.split("://", 1)[0] + "://***"
    redacted = url
    if password:
        netloc = parts.netloc.replace(f":{password}@", ":***@")
        redacted = urlunsplit(parts._replace(netloc=netloc))
    return _KEYWORD_PASSWORD.sub(r"\1***", redacted)  # ?password=... in the query string


def start_embedded_server(pg_dir: Path):
    """Start (or join) the embedded server in `pg_dir`; returns the pgserver handle."""
    import warnings

    pg_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); pgserver copes.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver  # imported here: only the embedded path needs it

        _forget_dead_handles(pg_dir)
        server = pgserver.get_server(str(pg_dir), cleanup_mode="stop")
    # Registered after pgserver's own exit hook, so it runs first (atexit is LIFO): a process killed
    # since we joined must not keep the server alive after the last live user leaves.
    atexit.register(_forget_dead_handles, pg_dir)
    return server


def _forget_dead_handles(pg_dir: Path) -> None:
    """Drop the pids of dead processes from pgserver's list of processes using the server.

    pgserver stops the server when the last process on that list exits; a process killed with
    SIGKILL never takes itself off, and the server would then run forever."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(pg_dir / ".handle_pids.json")
    with PostgresServer._lock:  # pgserver's own inter-process lock over that list
        try:
            pids = handles.get()
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if process_alive(pid)]
        if alive != pids:
            log.info("embedded postgres: forgetting dead users %s", sorted(set(pids) - set(alive)))
            handles.put(alive)


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
