"""Shared fixtures: where the real market data lives, and one embedded Postgres per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real market data not found at {SHARED_DATA}: ../shared must sit beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_server():
    """One embedded Postgres (PG16 + pgvector) for the whole test session.

    Its data directory is a private mkdtemp, not pytest's shared basetemp: another pytest session
    pruning old basetemps must not pull the directory out from under a running server.
    """
    import shutil
    import tempfile

    from storage.embedded import start_embedded_server

    data_dir = Path(tempfile.mkdtemp(prefix="hedgegraph-test-pg-"))
    server = start_embedded_server(data_dir)
    yield server
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def fresh_database_url(pg_server):
    """A brand-new, empty database on the session's server (isolation per test)."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    parts = urlsplit(pg_server.get_uri())
    yield urlunsplit(parts._replace(path=f"/{name}"))
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
async def db(fresh_database_url):
    """A migrated database with pools and the LangGraph checkpointer, in a fresh database."""
    from storage.database import connect

    database = await connect(fresh_database_url, max_size=6)
    yield database
    await database.close()


@pytest.fixture
def cli_env(fresh_database_url, monkeypatch, tmp_path):
    """A CLI runner on a fresh database, with no LLM endpoint configured (deterministic debate)."""
    from typer.testing import CliRunner

    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("HEDGEGRAPH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return CliRunner()
