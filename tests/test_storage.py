"""Storage against the real embedded Postgres: migrations, locks, redaction, a database that is gone."""
from __future__ import annotations

import pytest

from storage.database import DatabaseUnavailable, LockBusy, connect
from storage.embedded import redact
from storage.migrate import MigrationError, apply_migrations, discover


async def test_migrations_are_recorded_and_applied_once(db):
    async with db.pool.acquire() as conn:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [m.version for m in discover()]
        assert await apply_migrations(conn) == []  # second run: nothing pending
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"runs", "signals", "debates", "risk_decisions", "orders", "order_state_history", "checkpoints"} <= tables


async def test_an_edited_applied_migration_is_refused(db, tmp_path):
    for m in discover():
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql + "\n-- edited\n")
    async with db.pool.acquire() as conn:
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, tmp_path)


def test_migration_names_are_checked(tmp_path):
    (tmp_path / "first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0001_name.sql"):
        discover(tmp_path)


async def test_advisory_lock_admits_one_holder(db):
    async with db.advisory_lock("run-x"):
        with pytest.raises(LockBusy):
            async with db.advisory_lock("run-x"):
                pass
    async with db.advisory_lock("run-x"):  # released: can be taken again
        pass


async def test_a_session_lock_left_held_is_released_when_its_connection_returns_to_the_pool(db):
    """Pooled connections are fully reset only after a session advisory lock was taken on them;
    such a lock left held (a holder cancelled before its unlock) does not outlive the borrowing."""
    from storage.database import advisory_key, took_session_lock

    key = advisory_key("left-held")
    async with db.pool.acquire() as conn:
        took_session_lock(conn)
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        holder = conn.get_server_pid()
    held = await db.pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", holder)
    assert held == 0
    async with db.advisory_lock("left-held-by-name"):
        pass


async def test_a_transaction_left_open_is_rolled_back_on_release(db):
    async with db.pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("CREATE TABLE left_open_probe (x int)")
    assert await db.pool.fetchval("SELECT to_regclass('left_open_probe')") is None


async def test_unreachable_database_is_a_clear_error(tmp_path):
    url = f"postgresql://hg:secret@/nowhere?host={tmp_path}&port=1"
    with pytest.raises(DatabaseUnavailable) as info:
        await connect(url)
    assert "secret" not in str(info.value)


def test_redact_hides_passwords():
    assert redact("postgresql://u:hunter2@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"
