"""`hedgegraph doctor`: is the configuration sound, and does every configured component answer?

One check per component, each with a status and one precise sentence:
- ok: configured and answering; not_configured: not chosen by `market`/`broker` (not an error);
  warning: usable, with something worth knowing; error: configured and not working, and why
  (port closed, handshake timed out, login refused, credentials missing, account not managed …).
Secrets are reported only as present or missing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from config.connections import ConfigurationError, Connections, load_connections
from config.settings import Settings, defaults

log = logging.getLogger(__name__)

Status = Literal["ok", "not_configured", "warning", "error"]


@dataclass
class Check:
    component: str
    status: Status
    detail: str
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


async def _timed(component: str, probe) -> Check:
    started = time.perf_counter()
    try:
        check = await probe
    except Exception as exc:  # a probe that breaks is a finding, not a crash of the doctor
        check = Check(component, "error", f"{type(exc).__name__}: {exc}")
    check.seconds = round(time.perf_counter() - started, 3)
    return check


async def check_database(settings: Settings) -> Check:
    from storage.database import DatabaseUnavailable, connect, resolve_url
    from storage.embedded import redact
    from storage.migrate import applied_migrations

    where = f"DATABASE_URL {redact(settings.database_url)}" if settings.database_url else \
        f"embedded PostgreSQL under {settings.pg_dir}"
    try:
        url, server = await asyncio.to_thread(resolve_url, settings)
        db = await connect(url, server, max_size=2)
    except DatabaseUnavailable as exc:
        return Check("database", "error", str(exc))
    except Exception as exc:
        return Check("database", "error", f"{where}: cannot start or reach it: {type(exc).__name__}: {exc}")
    try:
        version = await db.server_version()
        migrations = len(await applied_migrations(db.pool))
    finally:
        await db.close()
    return Check("database", "ok", f"{where}: PostgreSQL {version}, {migrations} migrations applied",
                 {"embedded": not settings.database_url, "server_version": version, "migrations": migrations})


async def check_market(conn: Connections) -> Check:
    if conn.market == "simulated":
        from tools.providers.simulated import SimulatedMarket

        seed = defaults().seed
        snapshot = await asyncio.to_thread(SimulatedMarket(seed=seed).snapshot, ["SPY"], datetime.now(timezone.utc))
        spy = snapshot.tickers["SPY"]
        rows = 0 if spy.chain is None else len(spy.chain.strike)
        return Check("market", "ok", f"simulated market (seed {seed}): SPY at {spy.spot:.2f}, {rows} option quotes",
                     {"market": "simulated", "seed": seed})
    if conn.market == "files":
        if not conn.files.data_dir:
            return Check("market", "warning", "files market without a directory: set files.data_dir "
                                              "(HEDGEGRAPH_DATA_DIR) or give `hedgegraph run --data DIR`",
                         {"market": "files"})
        from tools.providers.files import FilesMarket

        try:
            market = await asyncio.to_thread(FilesMarket, conn.files.data_dir)
            tickers = market.tickers()
            ends = market.latest_as_of(tickers)
        except ValueError as exc:
            return Check("market", "error", f"files market: {exc}", {"market": "files"})
        return Check("market", "ok", f"files market {market.name} in {market.data_dir}: {', '.join(tickers)}; "
                                     f"the data ends {ends:%Y-%m-%d %H:%M %Z}",
                     {"market": "files", "provider": market.name, "tickers": tickers})
    # The broker's own connection check (below) says whether its market data answers.
    return Check("market", "ok", f"market {conn.market}: decision runs prefetch chains, quotes, Greeks and daily bars "
                                 f"from {conn.market} (see the {conn.market} check)", {"market": conn.market})


async def check_broker(conn: Connections) -> Check:
    if conn.broker == "paper":
        return Check("broker", "ok", "paper broker: a simulated venue whose books live in the database",
                     {"broker": "paper"})
    return Check("broker", "ok", f"orders go to {conn.broker}: see the {conn.broker} check", {"broker": conn.broker})


async def check_ibkr(conn: Connections) -> Check:
    if not conn.uses("ibkr"):
        return Check("ibkr", "not_configured", "not configured (set market or broker to ibkr to use it)")
    from brokers.ibkr import probe

    result = await probe(conn.ibkr, market_data=conn.market == "ibkr")
    return Check("ibkr", result["status"], result["detail"], result.get("data", {}))


async def check_tastytrade(conn: Connections) -> Check:
    if not conn.uses("tastytrade"):
        return Check("tastytrade", "not_configured", "not configured (set market or broker to tastytrade to use it)")
    missing = conn.tastytrade.missing_credentials()
    if missing:
        return Check("tastytrade", "error", f"credentials missing: set {' and '.join(missing)} in the environment")
    from brokers.tastytrade import probe

    result = await probe(conn.tastytrade)
    return Check("tastytrade", result["status"], result["detail"], result.get("data", {}))


SOCIAL_STATUS = {"on": "ok", "off": "not_configured", "error": "error"}


def check_social() -> list[Check]:
    """Reddit, Google Trends and FinBERT: on (and, for FinBERT, the model loads), off (the simulated
    feed and the lexicon stand in), or an error saying what is wrong. No credential is shown."""
    from agents.social_feed import social_source_status

    try:
        return [Check(f"social:{row['source']}", SOCIAL_STATUS[row["state"]], row["detail"])
                for row in social_source_status()]
    except Exception as exc:  # a broken social configuration is a finding, not a crash of the doctor
        return [Check("social", "error", f"{type(exc).__name__}: {exc}")]


async def diagnose(environ: Mapping[str, str] | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """Every check, in order; `ok` is False when any check is an error."""
    settings = settings or Settings()
    checks: list[Check] = []
    try:
        conn = load_connections(environ)
    except ConfigurationError as exc:
        conn = None
        checks.append(Check("configuration", "error", str(exc)))
    else:
        checks.append(Check("configuration", "ok", f"market {conn.market}, broker {conn.broker}", conn.public()))
    checks.append(await _timed("database", check_database(settings)))
    if conn is not None:
        for name, probe in (("market", check_market(conn)), ("broker", check_broker(conn)),
                            ("ibkr", check_ibkr(conn)), ("tastytrade", check_tastytrade(conn))):
            checks.append(await _timed(name, probe))
    checks.extend(check_social())
    return {"ok": not any(c.status == "error" for c in checks), "checks": [asdict(c) for c in checks]}
