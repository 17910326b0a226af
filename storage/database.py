"""One handle on the database: the asyncpg pool for our tables and the psycopg pool the LangGraph
checkpointer (`storage.checkpoints.CheckpointSaver`) writes through. Both point at the same database.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
from pgvector.asyncpg import register_vector
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from config.settings import Settings
from storage.checkpoints import CheckpointSaver
from storage.embedded import embedded_database_url, redact
from storage.migrate import apply_migrations
from storage.serde import checkpoint_serializer


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or went away."""


# What a lost or restarted database looks like from asyncpg and psycopg.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError, psycopg.OperationalError, psycopg.InterfaceError,
)


def is_connection_error(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, CONNECTION_ERRORS):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads, schema="pg_catalog")
    try:
        await register_vector(conn)  # pgvector's binary codec: numpy arrays in, numpy arrays out
    except ValueError as exc:  # the extension is not there yet: connect() recycles after migrating
        if not str(exc).startswith("unknown type"):
            raise


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (run id, slot key)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


_CHECKPOINTER_SETUP_LOCK = advisory_key("langgraph-checkpointer-setup")


# Backend pids of pooled connections that took a session advisory lock. A connection going back to
# the pool gets asyncpg's full reset (which releases every advisory lock, closes cursors, unlistens
# and resets settings) only if it is here: our sessions set nothing but SET LOCAL, open no cursors
# outside transactions and LISTEN to nothing, while the reset is a round trip on every release,
# about half of all the round trips of a backtest day.
_SESSION_LOCKERS: set[int] = set()


def took_session_lock(conn: asyncpg.Connection) -> None:
    """Mark `conn` as (about to be) holding a session advisory lock: it is fully reset on release,
    so a lock left held by a cancelled holder is not handed to the connection's next user."""
    _SESSION_LOCKERS.add(conn.get_server_pid())


async def _reset_connection(conn: asyncpg.Connection) -> None:
    # asyncpg has already rolled back any transaction left open when this runs.
    pid = conn.get_server_pid()
    if pid in _SESSION_LOCKERS:
        _SESSION_LOCKERS.discard(pid)
        await conn.execute(conn.get_reset_query())


class LockBusy(RuntimeError):
    """Another process holds the lock (e.g. is already executing this run)."""


@dataclass
class Database:
    url: str
    pool: asyncpg.Pool
    checkpoint_pool: AsyncConnectionPool
    checkpointer: CheckpointSaver
    _server: Any = field(default=None, repr=False)  # keeps an embedded server alive

    @contextlib.asynccontextmanager
    async def advisory_lock(self, name: str, wait_seconds: float = 0.0) -> AsyncIterator[None]:
        """Hold a session advisory lock for `name`; raise `LockBusy` if someone else holds it
        (after waiting up to `wait_seconds` for them to let go).

        Session locks die with their connection, so a crashed holder frees the lock by itself.
        """
        key = advisory_key(name)
        async with self.pool.acquire() as conn:
            took_session_lock(conn)
            deadline = asyncio.get_running_loop().time() + wait_seconds
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                if asyncio.get_running_loop().time() >= deadline:
                    raise LockBusy(name)
                await asyncio.sleep(0.05)
            try:
                yield
            finally:
                # If the connection died, so did its lock: nothing to release.
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def server_version(self) -> str:
        """The server's version; also a round trip that fails when the database is unreachable."""
        return await self.pool.fetchval("SHOW server_version")

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self.pool.close()
        await self.checkpoint_pool.close()


def postgres_url(dsn: str) -> str:
    """`DATABASE_URL` as a postgresql:// URL (both drivers take one); a keyword/value DSN
    ("host=db dbname=x user=me password=...") is converted. Anything else: `DatabaseUnavailable`
    with one line naming what is wrong (password redacted)."""
    from urllib.parse import quote, urlencode, urlsplit

    if "://" in dsn:
        try:
            scheme = urlsplit(dsn).scheme
        except ValueError as exc:
            raise DatabaseUnavailable(f"DATABASE_URL {redact(dsn)} is not a valid URL: {exc}") from None
        if scheme not in ("postgresql", "postgres"):
            raise DatabaseUnavailable(f"DATABASE_URL must be a postgresql:// URL, got scheme {scheme!r}")
        return dsn
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except psycopg.Error:
        raise DatabaseUnavailable(
            f"DATABASE_URL must be a postgresql://user:password@host:port/database URL or a keyword DSN "
            f"like 'host=... dbname=...', got {redact(dsn)!r}") from None
    if not params:
        raise DatabaseUnavailable("DATABASE_URL is empty")
    user, password = params.pop("user", ""), params.pop("password", None)
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    host = params.get("host", "")
    netloc = "" if host.startswith("/") or not host else quote(params.pop("host"), safe="")
    if netloc and "port" in params:
        netloc += f":{params.pop('port')}"
    database = quote(params.pop("dbname", ""), safe="")
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql://{auth + '@' if auth else ''}{netloc}/{database}{query}"


def resolve_url(settings: Settings) -> tuple[str, Any]:
    if settings.database_url:
        return postgres_url(settings.database_url), None
    return embedded_database_url(settings.pg_dir)


async def connect(url: str, server: Any = None, min_size: int = 1, max_size: int = 10) -> Database:
    """Open pools on `url`, apply migrations and set up the checkpointer's tables."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection,
                                         reset=_reset_connection)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        # InterfaceError: e.g. ClientConfigurationError for a malformed URL
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {type(exc).__name__}: {exc}") from exc
    checkpoint_pool = AsyncConnectionPool(
        url, min_size=1, max_size=max_size, open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await checkpoint_pool.open(wait=True)
    saver = CheckpointSaver(checkpoint_pool, serde=checkpoint_serializer())
    async with pool.acquire() as conn:
        took_session_lock(conn)  # the migration and checkpointer-setup locks
        await apply_migrations(conn)
        # LangGraph's own migrations do not lock: processes connecting to a fresh database at once
        # would insert the same migration row. One at a time, under a session lock — taken by
        # polling, not by a blocking pg_advisory_lock: its CREATE INDEX CONCURRENTLY waits for every
        # running statement to end, a blocked lock call included, so blocking would deadlock.
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _CHECKPOINTER_SETUP_LOCK):
            await asyncio.sleep(0.05)
        try:
            await saver.setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _CHECKPOINTER_SETUP_LOCK)
    # Connections opened before the `vector` type existed lack its codec; reopen them lazily.
    await pool.expire_connections()
    return Database(url=url, pool=pool, checkpoint_pool=checkpoint_pool, checkpointer=saver, _server=server)


@contextlib.asynccontextmanager
async def open_database(settings: Settings | None = None) -> AsyncIterator[Database]:
    settings = settings or Settings()
    url, server = resolve_url(settings)
    db = await connect(url, server)
    try:
        yield db
    finally:
        await db.close()
