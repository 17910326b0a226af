"""The approver's web page in a real browser: the system Chromium driven by Playwright, against
`hedgegraph serve`'s app under uvicorn on 127.0.0.1, on the embedded Postgres.

One decision run (simulated market, seed 7, AMZN/JPM/XLE as of 2026-11-20 15:30 New York, which
stages one AMZN bull call spread of more than 10 contracts) is made once into a template database; each test
gets its own copy and its own server, whose clock reads five minutes after the run.

Screenshots of the queue and the order page (390 px and desktop) are saved under the test's
tmp folder; `HEDGEGRAPH_SCREENSHOTS=docs/screenshots` copies them there for the README.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from service import operations
from service.api import create_app
from service.approvals import ServiceContext
from service.security import ServiceConfig
from tests.live_server import LiveServer
from storage.database import connect
from storage.tokens import TokenRepository
from tools.chain import NEW_YORK
from tools.providers.simulated import SimulatedMarket

AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=NEW_YORK)
DECISION_TIME = AS_OF + timedelta(minutes=5)
CHROMIUM = Path("/usr/bin/chromium")
PEOPLE = {"viewer": "victor", "approver": "alice", "approver2": "bob", "admin": "root"}
ROLE_OF = {"viewer": "viewer", "approver": "approver", "approver2": "approver", "admin": "admin"}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium: apt-get install chromium")


@dataclass(frozen=True)
class Seeded:
    template: str
    run_id: str
    order_id: str
    tokens: dict[str, str]
    quantity: int  # Kelly-sized; more than 10, so approving needs the acknowledgement


def _db_url(pg_server, name: str) -> str:
    return urlunsplit(urlsplit(pg_server.get_uri())._replace(path=f"/{name}"))


def _in_own_loop(coroutine):
    """Run a coroutine on a fresh event loop in a worker thread: Playwright's sync API owns the
    test thread's loop while a browser is open."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(asyncio.run(coroutine)))
    worker.start()
    worker.join()
    if not result:
        raise RuntimeError("seeding failed (see the worker thread's traceback above)")
    return result[0]


@pytest.fixture(scope="module")
def seeded(pg_server):
    name = f"web_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")

    async def seed() -> Seeded:
        db = await connect(_db_url(pg_server, name), max_size=4)
        try:
            outcome = await operations.run_decision(db, SimulatedMarket(seed=7), watchlist="core",
                                                    tickers=["AMZN", "JPM", "XLE"], as_of=AS_OF, seed=7,
                                                    now=lambda: AS_OF)
            assert [o.ticker for o in outcome.orders] == ["AMZN"] and outcome.orders[0].quantity > 10  # needs acknowledgement
            tokens = {key: await TokenRepository(db.pool).create(person, ROLE_OF[key])
                      for key, person in PEOPLE.items()}
        finally:
            await db.close()
        return Seeded(name, outcome.run.run_id, outcome.orders[0].order_id, tokens, outcome.orders[0].quantity)

    yield _in_own_loop(seed())
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def database(pg_server, seeded):
    """A private copy of the seeded database."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name} TEMPLATE {seeded.template};")
    yield _db_url(pg_server, name)
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
def server(database):
    with LiveServer(database, DECISION_TIME) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _signed_in(browser, server: LiveServer, token: str, width: int = 1280, height: int = 900):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(server.base + "/")
    assert page.url.endswith("/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(server.base + "/")
    return context, page


def _save(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=name.startswith(("order", "backtest")))
    assert path.stat().st_size > 10_000
    target = os.environ.get("HEDGEGRAPH_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _open_order(page, seeded: Seeded) -> None:
    page.get_by_role("link", name=f"Review AMZN order {seeded.order_id}").click()
    page.wait_for_url(f"**/ui/orders/{seeded.order_id}")


def _plots_rendered(page) -> None:
    for name in ("payoff", "smile", "gex"):
        chart = page.locator(f"svg#plot-{name}")
        assert chart.is_visible()
        drawn = chart.locator("polyline, circle, rect.pos, rect.neg").count()
        assert drawn > 0, f"{name} plot has no data drawn"
    assert page.locator("svg#plot-payoff polyline").count() == 2  # at expiry and today
    assert page.locator("svg#plot-smile circle").count() >= 5  # market vols
    assert page.locator("svg#plot-smile polyline").count() == 1  # the SVI fit
    assert page.locator("svg#plot-smile .m-strike").count() >= 2  # the chosen strikes
    assert page.locator("svg#plot-gex text", has_text="zero gamma").count() == 1
    assert page.locator("svg#plot-gex text", has_text="spot").count() == 1


def test_queue_order_page_plots_and_approve(browser, server, seeded, tmp_path):
    context, page = _signed_in(browser, server, seeded.tokens["approver"])
    refused = []  # anything the Content-Security-Policy blocked (inline styles or scripts, other hosts)
    page.on("console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None)
    queue = page.locator("ul.queue > li")
    assert queue.count() == 1
    card = queue.first
    assert "AMZN bull_call_spread" in card.inner_text()
    assert card.locator(".badge.ack").is_visible()  # more than 10 contracts need an acknowledgement
    assert card.locator(".badge.exit").count() == 0
    countdown = card.locator(".countdown")
    assert countdown.get_attribute("data-seconds-left") == str(25 * 60)  # 30 market minutes, 5 gone
    assert "m " in countdown.inner_text()
    _save(page, tmp_path, "queue-desktop")

    _open_order(page, seeded)
    _plots_rendered(page)
    text = page.locator("main").inner_text()
    for expected in ("Sizing (Kelly)", "Win rate", "Payoff ratio", "Risk gate", "pre-trade", "post-trade",
                     "P(profit), one ATM vol", "skew included",
                     "Debate", "Memories used", "Margin change", "Legs"):
        assert expected in text, expected
    _save(page, tmp_path, "order-desktop")

    # Approving them without the acknowledgement is refused, plainly, and changes nothing.
    page.get_by_role("button", name=f"Approve {seeded.quantity}").click()
    assert "more than 10 needs acknowledge" in page.locator("#decision-error").inner_text()
    page.get_by_label(f"I acknowledge this is {seeded.quantity} contracts").check()
    page.get_by_role("button", name=f"Approve {seeded.quantity}").click()
    message = page.locator("#decision-message").inner_text()
    assert "Approved by alice" in message and "FILLED" in message
    assert page.locator(".badge.state").inner_text() == "FILLED"
    assert page.locator("#approve-form").count() == 0  # nothing left to decide
    assert refused == []
    context.close()


def test_resize_and_keyboard_only(browser, server, seeded):
    context, page = _signed_in(browser, server, seeded.tokens["approver"])
    _open_order(page, seeded)
    # Keyboard only: focus the quantity field by its label, type, submit with Enter.
    page.get_by_label("Approve fewer contracts").focus()
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    assert "Approved at 5 contracts by alice" in page.locator("#decision-message").inner_text()
    assert page.locator("#order-quantity").inner_text() == "5 contracts"
    context.close()


def test_reject_with_reason(browser, server, seeded):
    context, page = _signed_in(browser, server, seeded.tokens["approver"])
    _open_order(page, seeded)
    page.get_by_label("Reason for rejecting").fill("earnings next week")
    page.get_by_role("button", name="Reject").click()
    assert "Rejected by alice" in page.locator("#decision-message").inner_text()
    assert page.locator(".badge.state").inner_text() == "REJECTED"
    assert "earnings next week" in page.locator(".history").inner_text()
    page.goto(server.base + "/")
    assert page.locator("ul.queue > li").count() == 0
    context.close()


def test_second_approver_sees_409(browser, server, seeded):
    first, alice = _signed_in(browser, server, seeded.tokens["approver"])
    second, bob = _signed_in(browser, server, seeded.tokens["approver2"])
    _open_order(alice, seeded)
    _open_order(bob, seeded)  # both see the order STAGED
    alice.get_by_label("Reason for rejecting").fill("too much vega")
    alice.get_by_role("button", name="Reject").click()
    assert "Rejected by alice" in alice.locator("#decision-message").inner_text()
    bob.get_by_label(f"I acknowledge this is {seeded.quantity} contracts").check()
    with bob.expect_response(lambda r: r.request.method == "POST") as response:
        bob.get_by_role("button", name=f"Approve {seeded.quantity}").click()
    assert response.value.status == 409
    error = bob.locator("#decision-error").inner_text()
    assert error.startswith("409 Conflict") and "already decided" in error
    first.close()
    second.close()


def test_viewer_cannot_decide(browser, server, seeded):
    context, page = _signed_in(browser, server, seeded.tokens["viewer"])
    _open_order(page, seeded)
    assert page.locator("#view-only").is_visible()
    assert page.locator("form.decision").count() == 0
    # Even a hand-made POST with the viewer's own CSRF token is refused, and nothing changes.
    csrf = page.locator("form.signout input[name=csrf]").get_attribute("value")
    response = page.request.post(f"{server.base}/ui/orders/{seeded.order_id}/approve",
                                 form={"csrf": csrf, "acknowledge": "yes"})
    assert response.status == 403 and "needs approver" in response.text()
    page.reload()
    assert page.locator(".badge.state").inner_text() == "STAGED"
    context.close()


def test_phone_width_and_csrf(browser, server, seeded, tmp_path):
    context, page = _signed_in(browser, server, seeded.tokens["approver"], width=390, height=844)
    _save(page, tmp_path, "queue-390")
    _open_order(page, seeded)
    _plots_rendered(page)
    # Nothing is wider than the screen (tables scroll inside their own box).
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _save(page, tmp_path, "order-390")
    # A form posted without the session's CSRF token is refused.
    response = page.request.post(f"{server.base}/ui/orders/{seeded.order_id}/reject",
                                 form={"reason": "forged", "csrf": "wrong"})
    assert response.status == 403
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["hg_session"]["httpOnly"] and cookies["hg_session"]["sameSite"] == "Strict"
    context.close()


def test_runs_list_trace_and_step(browser, server, seeded):
    context, page = _signed_in(browser, server, seeded.tokens["viewer"])
    page.get_by_role("link", name="Runs").click()
    page.get_by_label("Status").select_option("awaiting_approval")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_role("link", name=seeded.run_id).is_visible()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    assert "No runs match" in page.locator("main").inner_text()
    page.goto(f"{server.base}/ui/runs/{seeded.run_id}")
    trace = page.locator("text=Trace, step by step")
    assert trace.is_visible()
    nodes = page.locator("main table").last.inner_text()
    for node in ("load_context", "debate", "risk_gate", "stage_orders"):
        assert node in page.locator("main").inner_text(), node
    assert "interrupted" in nodes  # waiting at await_approval
    page.locator("main table a").first.click()
    assert '"run_id"' in page.locator("pre.state").inner_text()
    context.close()


def test_signin_refuses_bad_tokens_and_throttles(server):
    with httpx.Client(base_url=server.base) as client:
        form = client.get("/login")
        csrf = form.cookies["hg_login_csrf"]
        codes = [client.post("/login", data={"csrf": csrf, "token": f"wrong-{i}"}).status_code for i in range(6)]
        assert codes == [401] * 5 + [429]
        assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_an_exit_is_marked_as_an_exit(browser, database, seeded):
    async def make_exit() -> None:
        db = await connect(database, max_size=1)
        try:
            await db.pool.execute("UPDATE orders SET structure = 'exit:' || structure WHERE order_id = $1",
                                  seeded.order_id)
        finally:
            await db.close()

    _in_own_loop(make_exit())
    with LiveServer(database, DECISION_TIME) as server:
        context, page = _signed_in(browser, server, seeded.tokens["viewer"])
        assert page.locator("ul.queue > li .badge.exit").inner_text() == "EXIT"
        _open_order(page, seeded)
        assert page.locator("h1 .badge.exit").is_visible()
        context.close()


def test_positions_page_shows_the_filled_position_equity_and_daily_pnl(browser, server, seeded, tmp_path):
    context, page = _signed_in(browser, server, seeded.tokens["approver"])
    _open_order(page, seeded)
    page.get_by_label(f"I acknowledge this is {seeded.quantity} contracts").check()
    page.get_by_role("button", name=f"Approve {seeded.quantity}").click()
    assert "FILLED" in page.locator("#decision-message").inner_text()
    page.get_by_role("link", name="Positions").click()
    page.wait_for_url("**/ui/positions")
    assert "marked on two days" in page.locator("main").inner_text()  # one snapshot so far: no curve yet

    async def next_day_housekeeping():
        from service.housekeeping import housekeeping

        db = await connect(server.url, max_size=4)
        try:
            return await housekeeping(ServiceContext(db=db, clock=lambda: server.now), mark=True)
        finally:
            await db.close()

    server.now = DECISION_TIME + timedelta(days=3)  # Monday's slot
    assert _in_own_loop(next_day_housekeeping()).marked == 1
    page.reload()
    row = page.locator("table tbody tr", has_text="AMZN")
    assert row.count() == 1 and "bull_call_spread" in row.inner_text() and str(seeded.quantity) in row.inner_text()
    for name in ("equity", "daily"):
        assert page.locator(f"svg#plot-{name}").is_visible()
    assert page.locator("svg#plot-equity polyline").count() == 1
    _save(page, tmp_path, "positions-desktop")
    narrow = context.new_page()
    narrow.set_viewport_size({"width": 390, "height": 844})
    narrow.goto(server.base + "/ui/positions")
    overflow = narrow.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1  # usable on a phone: tables scroll inside their wrapper, the page does not
    context.close()


def test_docs_render_offline_in_the_browser(browser, server, seeded):
    """Swagger UI at /docs renders every operation with no request beyond 127.0.0.1 (anything else is
    blocked and recorded), and its Content-Security-Policy refuses nothing it needs."""
    context, page = _signed_in(browser, server, seeded.tokens["viewer"])  # the session opens the docs
    elsewhere, refused = [], []

    def only_local(route):
        if route.request.url.startswith(server.base + "/"):
            return route.continue_()
        elsewhere.append(route.request.url)
        return route.abort()

    context.route("**/*", only_local)
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.base + "/docs")
    page.locator(".opblock").first.wait_for(timeout=20_000)
    assert page.locator(".opblock").count() >= 20  # runs, orders, approvals, book, backtests, risk...
    assert page.locator(".opblock-summary-path", has_text="/orders/{order_id}/approve").count() == 1
    assert page.locator(".opblock-summary-path", has_text="/backtests/{backtest_id}").count() == 1
    assert elsewhere == [] and refused == []
    context.close()
