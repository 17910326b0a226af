"""Backtest reports over the API and on the web page, from a small real backtest.

One real backtest (SPY, the first week of January 2022 on the shared history, through the same
`run_backtest` and `finish_backtest` as `hedgegraph backtest`) is made once into a template
database; its report.json and report.html are written by the real report writer into the test's
results folder. Each test gets a copy of the database and its own server on 127.0.0.1.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.backtest import BacktestSpec, finish_backtest, run_backtest
from storage.database import connect
from storage.tokens import TokenRepository
from tests.conftest import SHARED_DATA
from tests.live_server import LiveServer
from tests.test_web import CHROMIUM, DECISION_TIME, _db_url, _in_own_loop, _save, _signed_in, browser  # noqa: F401

HISTORY = SHARED_DATA / "history"
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium: apt-get install chromium")


@dataclass(frozen=True)
class Backtested:
    template: str
    backtest_id: str
    database: str
    results: Path
    viewer: str


@pytest.fixture(scope="module")
def backtested(pg_server, tmp_path_factory):
    name = f"webbt_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name};")
    results = tmp_path_factory.mktemp("backtests")
    # seed 11: a backtest id of this module's own (the id hashes the parameters), so no other test's
    # backtest database is shared.
    spec = BacktestSpec(date(2022, 1, 3), date(2022, 1, 7), ("SPY",), str(HISTORY), seed=11,
                        overrides={"min_agreeing_sources": 1, "conviction_threshold": 0.2})

    async def make() -> Backtested:
        db = await connect(_db_url(pg_server, name), max_size=4)
        try:
            result = await run_backtest(db, spec)
            await finish_backtest(db, result, results)
            viewer = await TokenRepository(db.pool).create("victor", "viewer")
        finally:
            await db.close()
        return Backtested(name, result.backtest_id, result.database, results / result.backtest_id, viewer)

    made = _in_own_loop(make())
    yield made
    pg_server.psql(f"DROP DATABASE IF EXISTS {made.database} WITH (FORCE);")
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


@pytest.fixture
def server(pg_server, backtested):
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"CREATE DATABASE {name} TEMPLATE {backtested.template};")
    with LiveServer(_db_url(pg_server, name), DECISION_TIME) as running:
        yield running
    pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


def _report(backtested: Backtested) -> dict:
    return json.loads((backtested.results / "report.json").read_text())


def test_backtests_api_lists_and_shows_the_report(server, backtested):
    report = _report(backtested)
    auth = {"Authorization": f"Bearer {backtested.viewer}"}
    with httpx.Client(base_url=server.base) as api:
        assert api.get("/backtests").status_code == 401
        listed = api.get("/backtests", headers=auth)
        assert listed.status_code == 200
        [row] = listed.json()
        assert row["backtest_id"] == backtested.backtest_id and row["status"] == "completed"
        assert row["params"]["tickers"] == ["SPY"] and row["summary"]["days"] == 5
        assert row["summary"]["metrics"] == report["metrics"]

        shown = api.get(f"/backtests/{backtested.backtest_id}", headers=auth).json()
        assert shown["results_dir"] == str(backtested.results)
        assert [d["session"] for d in shown["days"]] == ["2022-01-03", "2022-01-04", "2022-01-05", "2022-01-06",
                                                         "2022-01-07"]
        assert shown["report"] == report and shown["report_error"] is None
        assert set(shown["report"]["baselines"]) == {"spy_buy_and_hold", "iron_condor_16d_45dte"}
        assert urlsplit(shown["database_url"]).path == f"/{backtested.database}"
        assert api.get("/backtests/bt_nope", headers=auth).status_code == 404
        assert api.get("/backtests", params={"limit": 0}, headers=auth).status_code == 422

        moved = backtested.results / "report.json.moved"
        (backtested.results / "report.json").rename(moved)
        try:
            gone = api.get(f"/backtests/{backtested.backtest_id}", headers=auth).json()
            assert gone["report"] is None and "missing" in gone["report_error"]
        finally:
            moved.rename(backtested.results / "report.json")


@needs_chromium
def test_backtest_pages_render_the_report(browser, server, backtested, tmp_path):
    report = _report(backtested)
    context, page = _signed_in(browser, server, backtested.viewer)
    refused = []  # anything the Content-Security-Policy blocked
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.get_by_role("link", name="Backtests").click()
    page.wait_for_url("**/ui/backtests")
    page.get_by_role("link", name=backtested.backtest_id).click()
    page.wait_for_url(f"**/ui/backtests/{backtested.backtest_id}")

    main = page.locator("main")
    for title in ("Metrics against both baselines", "P&L by strategy", "P&L by regime", "P&L by analyst agreement",
                  "Greeks P&L attribution", "Calibration (reliability table)", "Assumptions", "Days"):
        assert page.get_by_role("heading", name=title).is_visible(), title
    attribution = page.locator("table", has=page.get_by_role("columnheader", name="Component"))
    assert attribution.locator("tbody tr").count() == len(report["greeks_attribution"]["total"])
    assert "actual" in attribution.inner_text() and "residual" in attribution.inner_text()
    metrics = page.locator("table", has=page.get_by_role("columnheader", name="SPY buy-and-hold"))
    spy_return = report["baselines"]["spy_buy_and_hold"]["total_return"]
    assert metrics.locator("tr", has_text="total_return").inner_text().split("\t")[2] == f"{spy_return:.2%}"
    assert f"{len(report['modelled_chain_days'])} of 5 sessions" in page.locator("#modelled-days").inner_text()
    assert report["assumptions"][0] in main.inner_text()
    assert page.locator("table", has_text="Predicted PoP").locator("tbody tr").count() == len(report["calibration"])
    # Three plots: equity and drawdown with the graph and both baselines, and the calibration.
    for name in ("equity", "drawdown"):
        assert page.locator(f"svg#plot-{name}").is_visible()
        assert page.locator(f"svg#plot-{name} polyline").count() == 3
    assert page.locator("svg#plot-calibration polyline").count() == 1  # the diagonal
    assert page.locator("svg [style]").count() == 0 and refused == []
    _save(page, tmp_path, "backtest-desktop")

    narrow = context.new_page()
    narrow.set_viewport_size({"width": 390, "height": 844})
    narrow.goto(f"{server.base}/ui/backtests/{backtested.backtest_id}")
    assert narrow.locator("svg#plot-equity").is_visible()
    assert narrow.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 1
    _save(narrow, tmp_path, "backtest-390")

    missing = page.goto(f"{server.base}/ui/backtests/bt_000000000000")
    assert missing.status == 404 and "no backtest" in page.locator("main").inner_text()

    moved = backtested.results / "report.json.moved"
    (backtested.results / "report.json").rename(moved)
    try:
        page.goto(f"{server.base}/ui/backtests/{backtested.backtest_id}")
        assert "report file" in page.locator("#report-missing").inner_text()
        assert "missing" in page.locator("#report-missing").inner_text()
        assert page.get_by_role("heading", name="Days").is_visible()  # the index still shows its days
    finally:
        moved.rename(backtested.results / "report.json")
    context.close()
