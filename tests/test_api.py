"""The HTTP API against a real (embedded) Postgres: tokens and roles, runs and orders, approvals,
risk halt/resume, health, metrics, the OpenAPI schema, and a schemathesis sweep for server errors.

One decision run (simulated market, seed 7, AMZN/JPM/XLE as of 2026-11-20 15:30 New York, which
stages one AMZN order of more than 10 contracts) is made once into a template database; each test that changes
state gets its own copy (`CREATE DATABASE ... TEMPLATE`), so the tests are independent and fast.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import hypothesis
import pytest
import schemathesis
from typer.testing import CliRunner

from service import operations
from service.api import create_app
from service.approvals import ServiceContext
from service.security import ServiceConfig
from service.cli import app as cli_app
from storage.database import connect
from storage.tokens import Principal, TokenError, TokenRepository
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
TICKERS = ["AMZN", "JPM", "XLE"]
# Approvals happen five minutes after the run: fresh quotes come from the same simulated session,
# whatever the wall clock says when the tests run.
DECISION_TIME = AS_OF + timedelta(minutes=5)
TOKEN_NAMES = {"viewer": "victor", "approver": "alice", "admin": "root"}
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Seeded:
    template: str
    run_id: str
    order_id: str
    quantity: int  # the staged order's contracts (more than 10: approving needs an acknowledgement)
    tokens: dict[str, str]  # role -> plaintext token

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


def _database_url(pg_server, name: str) -> str:
    return urlunsplit(urlsplit(pg_server.get_uri())._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
async def seeded(pg_server):
    name = f"tpl_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    db = await connect(_database_url(pg_server, name), max_size=4)
    try:
        outcome = await operations.run_decision(db, SimulatedMarket(seed=7), watchlist="adhoc", tickers=TICKERS,
                                                as_of=AS_OF, seed=7)
        assert [o.ticker for o in outcome.orders] == ["AMZN"] and outcome.orders[0].quantity > 10
        tokens = {role: await TokenRepository(db.pool).create(person, role) for role, person in TOKEN_NAMES.items()}
    finally:
        await db.close()  # a template database must have no connections when it is copied
    yield Seeded(name, outcome.run.run_id, outcome.orders[0].order_id, outcome.orders[0].quantity, tokens)
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
def seeded_url(pg_server, seeded):
    """A private copy of the seeded database: the run, its STAGED order and the three tokens."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name} TEMPLATE {seeded.template};")
    yield _database_url(pg_server, name)
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


# The test clients' Host headers ("api" from httpx, "testserver" from schemathesis' ASGI client) are trusted;
# the schema is public here so schemathesis can load it (its protection is tested on its own).
TEST_SERVICE = ServiceConfig(allowed_hosts=("api", "testserver"), docs_public=True)


def make_app(url: str, service_config: ServiceConfig = TEST_SERVICE):
    async def open_context() -> ServiceContext:
        return ServiceContext(db=await connect(url, max_size=6), clock=lambda: DECISION_TIME)

    return create_app(open_context, service_config=service_config)


@contextlib.asynccontextmanager
async def serving(url: str):
    """The app with its lifespan running (httpx's ASGI transport does not run lifespans)."""
    app = make_app(url)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            yield client, app.state.ctx


# ---------------------------------------------------------------------------------------------
# Tokens


async def test_tokens_are_shown_once_stored_hashed_and_revocable(db):
    tokens = TokenRepository(db.pool)
    plaintext = await tokens.create("alice", "approver")
    assert len(plaintext) >= 43  # 32 random bytes, URL-safe base64
    row = await db.pool.fetchrow("SELECT * FROM api_tokens WHERE name = 'alice'")
    assert row["token_sha256"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in json.dumps(dict(row), default=str)  # only the hash is kept

    assert await tokens.authenticate(plaintext) == Principal("alice", "approver")
    assert await tokens.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert await tokens.authenticate("") is None and await tokens.authenticate(None) is None
    assert await tokens.authenticate("x" * 10_000) is None  # refused before hashing
    assert await tokens.authenticate("\x00") is None

    with pytest.raises(TokenError, match="already has an active token"):
        await tokens.create("alice", "admin")
    with pytest.raises(TokenError, match="role must be one of"):
        await tokens.create("bob", "superuser")
    with pytest.raises(TokenError, match="token name"):
        await tokens.create(" spaced name", "viewer")

    assert await tokens.revoke("alice") is True
    assert await tokens.authenticate(plaintext) is None
    assert await tokens.revoke("alice") is False  # nothing live left to revoke
    second = await tokens.create("alice", "admin")  # the name is free again
    assert await tokens.authenticate(second) == Principal("alice", "admin")

    listed = await tokens.list()
    assert [(t.name, t.role, t.active) for t in listed] == [("alice", "approver", False), ("alice", "admin", True)]
    assert not any(plaintext in repr(t) or second in repr(t) for t in listed)


def test_roles_are_ordered():
    assert Principal("a", "admin").has_role("approver") and Principal("a", "admin").has_role("viewer")
    assert Principal("a", "approver").has_role("viewer") and not Principal("a", "approver").has_role("admin")
    assert not Principal("a", "viewer").has_role("approver")


def test_token_cli_creates_lists_and_revokes(fresh_database_url, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("HEDGEGRAPH_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    created = runner.invoke(cli_app, ["tokens", "create", "alice", "--role", "approver"], catch_exceptions=False)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[0]
    assert len(token) >= 43

    listed = runner.invoke(cli_app, ["tokens", "list", "--json"], catch_exceptions=False)
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["revoked_at"]) for r in rows] == [("alice", "approver", None)]
    assert token not in listed.output and hashlib.sha256(token.encode()).hexdigest() not in listed.output

    assert runner.invoke(cli_app, ["tokens", "revoke", "alice"]).exit_code == 0
    again = runner.invoke(cli_app, ["tokens", "revoke", "alice"])
    assert again.exit_code == 2 and "no active token named alice" in again.output
    bad = runner.invoke(cli_app, ["tokens", "create", "bob", "--role", "root"])
    assert bad.exit_code == 2 and "role must be one of" in bad.output


# ---------------------------------------------------------------------------------------------
# Reading: runs, orders, review, health, metrics, schema


async def test_reads_need_a_live_token_and_return_the_run_and_its_order(seeded, seeded_url):
    async with serving(seeded_url) as (api, ctx):
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {seeded.tokens['admin']}"}):
            r = await api.get("/runs", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert isinstance(r.json()["detail"], str)

        viewer = seeded.auth("viewer")
        runs = (await api.get("/runs", headers=viewer)).json()
        assert [r["run_id"] for r in runs] == [seeded.run_id]
        assert runs[0]["tickers"] == TICKERS and runs[0]["status"] in ("awaiting_approval", "completed")
        assert datetime.fromisoformat(runs[0]["as_of"]) == AS_OF

        run = (await api.get(f"/runs/{seeded.run_id}", headers=viewer)).json()
        assert len(run["signals"]) == 12 and [d["ticker"] for d in run["debates"]] == ["AMZN"]
        assert [o["order_id"] for o in run["orders"]] == [seeded.order_id]

        staged = (await api.get("/orders", params={"state": "STAGED"}, headers=viewer)).json()
        assert [(o["order_id"], o["ticker"], o["quantity"]) for o in staged] == [(seeded.order_id, "AMZN", seeded.quantity)]
        assert (await api.get("/orders", params={"state": "FILLED"}, headers=viewer)).json() == []
        assert (await api.get("/orders", params={"run_id": "nope"}, headers=viewer)).json() == []
        bad_state = await api.get("/orders", params={"state": "WHATEVER"}, headers=viewer)
        assert bad_state.status_code == 422 and "state" in bad_state.json()["detail"]

        review = (await api.get(f"/orders/{seeded.order_id}", headers=viewer)).json()
        stored = await operations.show_order(ctx.db, seeded.order_id)
        assert review["limit_price"] == stored["limit_price"] and review["legs"] == stored["legs"]
        assert Decimal(review["limit_price"]) == Decimal(stored["proposal"]["net_debit"])
        units = stored["proposal"]["multiplier"] * stored["quantity"]
        assert review["greeks_impact"]["delta"] == pytest.approx(stored["proposal"]["delta"] * units)
        assert Decimal(review["margin_what_if"]["initial_margin_change"]) == Decimal(stored["proposal"]["max_loss"]) * seeded.quantity
        assert {d["stage"] for d in review["risk"]} == {"pre_trade", "post_trade"}
        assert review["debate"]["transcript"] and review["requires_acknowledgement"] is True
        assert datetime.fromisoformat(review["expires_at"]) > datetime.fromisoformat(review["created_at"])
        assert review["decision"] is None and [h["to_state"] for h in review["history"]] == ["DRAFT", "STAGED"]

        for path in ("/orders/ord_00000000000000000000", "/orders/ord%00bad", f"/orders/{'x' * 500}"):
            r = await api.get(path, headers=viewer)
            assert r.status_code == 404 and "no order" in r.json()["detail"], path
        r = await api.get("/runs/no-such-run", headers=viewer)
        assert r.status_code == 404 and "no run" in r.json()["detail"]

        health = await api.get("/health")
        assert health.status_code == 200 and health.json()["ok"] is True and health.json()["database"]["ok"]

        assert (await api.get("/metrics")).status_code == 401
        metrics = await api.get("/metrics", headers=viewer)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert 'hedgegraph_orders{state="STAGED"} 1' in metrics.text
        assert "# TYPE hedgegraph_runs gauge" in metrics.text and "hedgegraph_trading_halted 0" in metrics.text

        # A revoked token stops working at once.
        assert await TokenRepository(ctx.db.pool).revoke(TOKEN_NAMES["viewer"])
        assert (await api.get("/runs", headers=viewer)).status_code == 401


async def test_openapi_schema_is_served_and_precise(seeded_url):
    async with serving(seeded_url) as (api, ctx):
        schema = (await api.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths) == {"/health", "/metrics", "/runs", "/runs/{run_id}", "/orders", "/orders/{order_id}",
                          "/orders/{order_id}/approve", "/orders/{order_id}/reject", "/orders/{order_id}/resize",
                          "/risk", "/risk/halt", "/risk/resume", "/runs/{run_id}/steps", "/runs/{run_id}/steps/{step}",
                          "/runs/{run_id}/replay", "/runs/{run_id}/fork", "/journal", "/positions", "/pnl", "/account",
                          "/backtests", "/backtests/{backtest_id}"}
    assert not any(p == "/" or p.startswith(("/ui", "/login", "/static")) for p in paths)  # the page is not API
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API token from `hedgegraph tokens create NAME --role ROLE`."}
    assert "security" not in paths["/health"]["get"]
    approve = paths["/orders/{order_id}/approve"]["post"]
    assert approve["security"] == [{"bearer": []}]
    assert set(approve["responses"]) == {"200", "400", "401", "403", "404", "409", "422", "429"}
    assert approve["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OrderReviewOut"}
    models = schema["components"]["schemas"]
    assert models["ResizeIn"]["required"] == ["quantity"] and models["ResizeIn"]["additionalProperties"] is False
    assert models["ResizeIn"]["properties"]["quantity"] == {
        "type": "integer", "minimum": 1, "title": "Quantity",
        "description": "New whole-contract quantity, 1 .. original - 1."}
    assert models["OrderSummaryOut"]["properties"]["state"] == {"$ref": "#/components/schemas/OrderState"}


def test_the_order_summary_is_a_view_of_the_one_order_type():
    from dataclasses import fields

    from domain.orders import Order
    from service.api import OrderSummaryOut

    # Every field of the order is in the API's view of it, but the proposal and sizing JSON, which
    # the view summarizes (per-unit figures, Kelly inputs).
    shown = set(OrderSummaryOut.model_fields)
    assert {f.name for f in fields(Order)} - {"proposal", "sizing"} <= shown


# ---------------------------------------------------------------------------------------------
# Deciding


async def test_roles_and_malformed_requests_are_refused_and_change_nothing(seeded, seeded_url):
    order = f"/orders/{seeded.order_id}"
    async with serving(seeded_url) as (api, ctx):
        viewer, approver, admin = seeded.auth("viewer"), seeded.auth("approver"), seeded.auth("admin")
        r = await api.post(f"{order}/approve", json={"acknowledge": True}, headers=viewer)
        assert r.status_code == 403 and "needs approver" in r.json()["detail"]
        assert (await api.post(f"{order}/approve", json={"acknowledge": True})).status_code == 401
        for who in (viewer, approver):
            assert (await api.post("/risk/halt", json={"reason": "test"}, headers=who)).status_code == 403
            assert (await api.post("/risk/resume", headers=who)).status_code == 403

        malformed = [
            ("reject", {}, "reason"),
            ("reject", {"reason": "   "}, "blank"),
            ("resize", {"quantity": "3"}, "quantity"),  # strict: a string is not a quantity
            ("resize", {"quantity": 0}, "quantity"),
            ("resize", {"quantity": 2.5}, "quantity"),
            ("approve", {"acknowlege": True}, "acknowlege"),  # a misspelt flag is an error, not ignored
            ("approve", {"acknowledge": "yes"}, "acknowledge"),
        ]
        for action, body, mentioned in malformed:
            r = await api.post(f"{order}/{action}", json=body, headers=approver)
            assert r.status_code == 422, (action, body, r.text)
            assert mentioned in r.json()["detail"] and r.json()["errors"], (action, body, r.json())
        r = await api.post(f"{order}/approve", content=b"{not json", headers=approver | {"content-type": "application/json"})
        assert r.status_code == 422 and "json" in r.json()["detail"].lower()

        # The service's own refusals: more than 10 contracts need an acknowledgement; resize must shrink.
        r = await api.post(f"{order}/approve", json={}, headers=approver)
        assert r.status_code == 422 and "acknowledge" in r.json()["detail"]
        r = await api.post(f"{order}/resize", json={"quantity": seeded.quantity}, headers=approver)
        assert r.status_code == 422 and f"1 to {seeded.quantity - 1}" in r.json()["detail"]
        r = await api.post("/orders/ord_00000000000000000000/approve", json={"acknowledge": True}, headers=approver)
        assert r.status_code == 404 and "no order" in r.json()["detail"]

        halted = await api.post("/risk/halt", json={"reason": "VIX spike"}, headers=admin)
        assert halted.status_code == 200
        assert halted.json() | {"changed_at": None} == {"halted": True, "reason": "VIX spike", "actor": "root", "changed_at": None}
        r = await api.post(f"{order}/approve", json={"acknowledge": True}, headers=approver)
        assert r.status_code == 409 and "halted" in r.json()["detail"]
        status = (await api.get("/risk", headers=viewer)).json()
        assert status["halted"] is True and status["orders_by_state"] == {"STAGED": 1}
        resumed = await api.post("/risk/resume", headers=admin)
        assert resumed.status_code == 200 and resumed.json()["halted"] is False and resumed.json()["actor"] == "root"

        review = (await api.get(order, headers=viewer)).json()
        assert review["state"] == "STAGED" and review["quantity"] == seeded.quantity and review["decision"] is None


@pytest.mark.parametrize("action, body", [
    ("approve", {"acknowledge": True}),
    ("resize", {"quantity": 5}),
    ("reject", {"reason": "earnings next week"}),
])
async def test_a_decision_is_recorded_under_the_token_name_and_only_once(seeded, seeded_url, action, body):
    order = f"/orders/{seeded.order_id}"
    async with serving(seeded_url) as (api, ctx):
        r = await api.post(f"{order}/{action}", json=body, headers=seeded.auth("approver"))
        assert r.status_code == 200, r.text
        review = r.json()
        decided = review["decision"]
        assert decided["approver"] == "alice" and decided["action"] == action and decided["original_quantity"] == seeded.quantity
        assert decided["seen"]["limit_price"] == review["limit_price"]
        moved_by_alice = [h for h in review["history"] if h["actor"] == "alice"]
        if action == "reject":
            assert review["state"] == "REJECTED" and decided["reason"] == "earnings next week"
            assert [h["to_state"] for h in moved_by_alice] == ["REJECTED"] and review["execution"] is None
        else:
            assert review["quantity"] == (seeded.quantity if action == "approve" else 5)
            assert [h["to_state"] for h in moved_by_alice] == ["APPROVED"]
            # Re-checked against fresh quotes five minutes on, the order goes to the paper broker.
            assert review["state"] in ("SUBMITTED", "PARTIALLY_FILLED", "FILLED"), review["history"]
            assert review["execution"]["outcome"] == "transmitted" and review["execution"]["broker_order_id"]

        again = await api.post(f"{order}/approve", json={"acknowledge": True}, headers=seeded.auth("admin"))
        assert again.status_code == 409 and "not STAGED" in again.json()["detail"]


async def test_two_concurrent_approvals_one_wins_one_conflicts(seeded, seeded_url):
    order = f"/orders/{seeded.order_id}"
    async with serving(seeded_url) as (api, ctx):
        first, second = await asyncio.gather(
            api.post(f"{order}/approve", json={"acknowledge": True}, headers=seeded.auth("approver")),
            api.post(f"{order}/approve", json={"acknowledge": True}, headers=seeded.auth("admin")),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
        winner = first if first.status_code == 200 else second
        pool = ctx.db.pool
        decisions = await pool.fetch("SELECT approver FROM approvals WHERE order_id = $1", seeded.order_id)
        assert [d["approver"] for d in decisions] == [winner.json()["decision"]["approver"]]
        approved = await pool.fetchval("SELECT count(*) FROM order_state_history WHERE order_id = $1 "
                                       "AND to_state = 'APPROVED'", seeded.order_id)
        assert approved == 1
        broker_orders = await pool.fetchval("SELECT count(*) FROM broker_orders WHERE order_id = $1", seeded.order_id)
        assert broker_orders == 1  # sent once


# ---------------------------------------------------------------------------------------------
# Schemathesis: generated requests over every operation, as admin, never get a 5xx


def test_generated_requests_get_no_server_error_and_match_the_schema(seeded, seeded_url):
    """Schemathesis over every operation, valid and invalid inputs, with an admin token: no 5xx,
    and every response conforms to the documented status codes, content types and schemas.

    (Schemathesis' own pytest integration (`from_fixture`) does not run under pytest 9, so the
    operations are driven through hypothesis here.)"""
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from tests.live_server import LiveServer

    headers = seeded.auth("admin")
    # Over real HTTP to uvicorn (its lifespan opens and closes the app's pools), whichever
    # schemathesis version the environment resolved.
    server = LiveServer(seeded_url, DECISION_TIME, ServiceConfig(allowed_hosts=("127.0.0.1",), docs_public=True))
    with server:
        loaded = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
        operations_seen = []
        for result in loaded.get_all_operations():
            operation = result.ok()
            operations_seen.append(f"{operation.method.upper()} {operation.path}")
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis.settings(max_examples=10, deadline=None, derandomize=True, database=None,
                                     suppress_health_check=list(hypothesis.HealthCheck))
                def check(case):
                    case.call_and_validate(headers=headers)

                try:
                    check()
                except hypothesis.errors.Unsatisfiable:
                    # Only an operation that takes no input at all has no invalid request to make.
                    raw = operation.definition.raw
                    assert mode is GenerationMode.NEGATIVE and not raw.get("parameters") and "requestBody" not in raw
        assert len(operations_seen) == 22, operations_seen

        # Then on the real run and order, so the rich responses (run detail, review, decisions)
        # are validated against their schemas too. The service's own 422s (acknowledgement
        # missing, resize not smaller) are legitimate refusals of schema-valid requests here.
        known = {"run_id": seeded.run_id, "order_id": seeded.order_id}
        for result in loaded.get_all_operations():
            operation = result.ok()
            fixed = {k: v for k, v in known.items() if "{" + k + "}" in operation.path}
            if not fixed:
                continue

            @hypothesis.given(case=operation.as_strategy(path_parameters=fixed))
            @hypothesis.settings(max_examples=5, deadline=None, derandomize=True, database=None,
                                 suppress_health_check=list(hypothesis.HealthCheck))
            def check_known(case):
                case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

            check_known()


# ---------------------------------------------------------------------------------------------
# `hedgegraph serve`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_the_api_from_the_environment(fresh_database_url, tmp_path):
    port = _free_port()
    env = os.environ | {"DATABASE_URL": fresh_database_url, "HEDGEGRAPH_HOME": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-c", "from service.cli import app; app()", "serve", "--port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["ok"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/runs", timeout=2).status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=20)


async def test_a_lost_database_is_a_503_not_a_crash(pg_server, seeded, seeded_url):
    async with serving(seeded_url) as (api, ctx):
        assert (await api.get("/health")).status_code == 200
        pg_server.psql(f"DROP DATABASE {urlsplit(seeded_url).path.lstrip('/')} WITH (FORCE);")
        health = await api.get("/health")
        assert health.status_code == 503
        assert health.json()["ok"] is False and health.json()["database"]["ok"] is False
        r = await api.get("/runs", headers=seeded.auth("viewer"))
        assert r.status_code == 503 and r.json() == {"detail": "database unavailable"}, r.text


async def test_the_book_through_the_api_after_an_approval(seeded_url, seeded):
    async with serving(seeded_url) as (client, _):
        decided = await client.post(f"/orders/{seeded.order_id}/approve", headers=seeded.auth("approver"),
                                    json={"acknowledge": True})
        assert decided.status_code == 200 and decided.json()["state"] == "FILLED", decided.text
        review = decided.json()
        assert review["pop_model"] == "svi_density" and 0 < review["probability_of_profit_lognormal"] < 1
        inputs = review["kelly"]["inputs"]  # what sized it, for the approver
        assert inputs["journal_trades"] == 0 and inputs["prior_weight"] == 1.0 and inputs["expected_log_growth"] > 0
        positions = (await client.get("/positions", headers=seeded.auth("viewer"))).json()["positions"]
        assert [p["order_id"] for p in positions] == [seeded.order_id]
        account = await client.get("/account", headers=seeded.auth("viewer"))
        assert account.status_code == 200 and Decimal(account.json()["net_liquidation"]) > 0
        assert account.json()["trades_today"] == 1 and account.json()["open_positions"] == 1
        pnl = await client.get("/pnl", params={"from": "2026-11-20", "days": 1}, headers=seeded.auth("viewer"))
        assert pnl.status_code == 200 and (pnl.json()["from"], pnl.json()["to"]) == ("2026-11-20", "2026-11-20")
        assert [s["structure"] for s in pnl.json()["by_strategy"]] == [positions[0]["structure"]]
        assert (await client.get("/pnl", params={"from": "2026-11-20", "days": 0},
                                 headers=seeded.auth("viewer"))).status_code == 422
        assert (await client.get("/positions")).status_code == 401
