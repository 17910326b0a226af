"""Notifications against a local SMTP server (aiosmtpd) and a local webhook receiver
(pytest-httpserver), on the embedded Postgres: what is announced, retried, deduplicated and
recorded, and that a caller is never blocked or failed by it."""
from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from werkzeug import Response

from service import approvals, notify
from service.approvals import Decision
from service.notify import NotificationConfig
from storage.runs import RunRepository
from tests.test_approvals import AS_OF, stage

ALL = {name: ("webhook", "email") for name in notify.EVENTS}


class Inbox:
    def __init__(self):
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode("utf-8", "replace")))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def channels(monkeypatch, httpserver, smtp):
    """Both channels switched on through the environment, as in production."""
    controller, inbox = smtp
    monkeypatch.setenv("HEDGEGRAPH_WEBHOOK_URL", httpserver.url_for("/hook"))
    monkeypatch.setenv("HEDGEGRAPH_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("HEDGEGRAPH_SMTP_PORT", str(controller.port))
    monkeypatch.setenv("HEDGEGRAPH_SMTP_TO", "desk@example.com,risk@example.com")
    monkeypatch.setenv("HEDGEGRAPH_SMTP_FROM", "hedgegraph@example.com")
    httpserver.expect_request("/hook", method="POST").respond_with_json({"ok": True})
    return httpserver, inbox


def _hooks(httpserver) -> list[dict]:
    return [json.loads(request.data) for request, _ in httpserver.log]


async def _recorded(db, event=None):
    rows = await db.pool.fetch("SELECT event, channel, status, attempts, dedupe_key, error, subject, body "
                               "FROM notifications WHERE ($1::text IS NULL OR event = $1) ORDER BY id", event)
    return [dict(r) for r in rows]


async def test_staged_orders_and_a_rejection_reach_webhook_and_email_and_are_recorded(db, channels):
    httpserver, inbox = channels
    ctx, order, run_id = await stage(db)  # run_decision announces what awaits approval
    await notify.drain()
    staged = await _recorded(db, "orders_awaiting_approval")
    assert {(r["channel"], r["status"], r["dedupe_key"]) for r in staged} == {("webhook", "sent", run_id),
                                                                               ("email", "sent", run_id)}
    assert f"AMZN bull_call_spread × {order.quantity}" in _hooks(httpserver)[0]["text"]

    await approvals.decide(ctx, order.order_id, Decision("reject", "bob", reason="earnings next week"))
    await notify.drain()
    hook = _hooks(httpserver)[-1]
    assert hook["text"].startswith("*Rejected: AMZN") and "earnings next week" in hook["text"]
    assert hook["blocks"][0]["type"] == "section"  # Slack's block kit, alongside the plain text
    recipients, email = inbox.messages[-1]
    assert recipients == ["desk@example.com", "risk@example.com"]
    assert "Subject: [hedgegraph] Rejected: AMZN" in email and "bob rejected" in email and "earnings next week" in email
    rejected = await _recorded(db, "order_rejected")
    assert [(r["channel"], r["status"], r["attempts"]) for r in rejected] == [("webhook", "sent", 1), ("email", "sent", 1)]


async def test_nothing_is_announced_inside_silenced_and_everything_after_it(db, channels):
    httpserver, inbox = channels
    with notify.silenced():
        notify.send(db, "risk_halted", "Trading halted", "a backtest halted its own account")
        await notify.drain()
    assert list(httpserver.log) == [] and inbox.messages == [] and await _recorded(db) == []
    notify.send(db, "risk_halted", "Trading halted", "alice halted trading")
    await notify.drain()
    assert [(r["channel"], r["status"]) for r in await _recorded(db)] == [("webhook", "sent"), ("email", "sent")]
    assert "alice halted trading" in _hooks(httpserver)[0]["text"]


async def test_a_fill_and_a_halt_are_announced_once(db, channels):
    httpserver, _ = channels
    ctx, order, _ = await stage(db)
    result = await approvals.decide(ctx, order.order_id, Decision("approve", "alice", acknowledge=True))
    assert result["state"] == "FILLED"
    await notify.drain()
    notify.sweep(db, ctx.clock())  # the sweep sees the fill already announced
    await notify.drain()
    fills = await _recorded(db, "order_filled")
    assert [(r["channel"], r["dedupe_key"]) for r in fills] == [("webhook", order.order_id)]  # yaml: webhook only
    assert "alice" in fills[0]["body"]

    await approvals.halt(ctx, "root", "VIX spike")
    await notify.drain()
    halts = await _recorded(db, "risk_halted")
    assert len(halts) == 2 and all("root halted trading: VIX spike" in r["body"] for r in halts)


async def test_sweep_warns_before_expiry_reports_failed_runs_and_summarizes_once(db, channels):
    httpserver, inbox = channels
    ctx, order, run_id = await stage(db)
    await notify.drain()
    notify.sweep(db, AS_OF + timedelta(minutes=10))  # 20 minutes left: too early to warn
    await notify.drain()
    assert await _recorded(db, "approval_expiring") == []

    await RunRepository(db.pool).mark_finished(run_id, "failed", "provider timed out")
    for _ in range(2):  # 25 minutes in, 16:00 New York: warn (once), report the failure (once)
        notify.sweep(db, AS_OF + timedelta(minutes=25))
        await notify.drain()
    expiring = await _recorded(db, "approval_expiring")
    assert len(expiring) == 2 and expiring[0]["dedupe_key"] == order.order_id
    assert expiring[0]["subject"].startswith("Expires in 5 min: AMZN")
    failed = await _recorded(db, "run_failed")
    assert len(failed) == 2 and "provider timed out" in failed[0]["body"]
    assert await _recorded(db, "daily_summary") == []  # not before 16:15

    for _ in range(2):
        notify.sweep(db, AS_OF.replace(hour=16, minute=20))
        await notify.drain()
    summary = await _recorded(db, "daily_summary")
    assert len(summary) == 2 and summary[0]["dedupe_key"] == "2026-11-20"
    assert "Orders: STAGED 1" in summary[0]["body"]


async def test_webhook_is_retried_with_backoff_and_failures_are_recorded_not_raised(db, httpserver, smtp):
    controller, _ = smtp
    for status in (500, 503):
        httpserver.expect_oneshot_request("/flaky", method="POST").respond_with_response(Response("down", status))
    httpserver.expect_request("/flaky", method="POST").respond_with_json({"ok": True})
    httpserver.expect_request("/gone", method="POST").respond_with_response(Response("no such hook", 404))
    fast = dict(events=ALL, attempts=4, backoff_seconds=0.05, attempt_timeout_seconds=2, total_timeout_seconds=20)

    config = NotificationConfig(webhook_url=httpserver.url_for("/flaky"), **fast)
    started = time.perf_counter()
    notify.send(db, "run_failed", "Run failed: x", "boom", dedupe_key="x", config=config)
    assert time.perf_counter() - started < 0.05  # the caller does not wait for delivery
    await notify.drain()
    assert [(r["status"], r["attempts"]) for r in await _recorded(db, "run_failed")] == [("sent", 3)]

    notify.send(db, "run_failed", "Run failed: y", "boom", dedupe_key="y",
                config=NotificationConfig(webhook_url=httpserver.url_for("/gone"), **fast))
    closed_port = _free_port()  # nothing listens there: connection refused, every attempt
    from service.notify import SMTPSettings

    notify.send(db, "run_failed", "Run failed: z", "boom", dedupe_key="z",
                config=NotificationConfig(smtp=SMTPSettings("127.0.0.1", closed_port, ("a@example.com",), "h@example.com"),
                                          **fast))
    await notify.drain()
    rows = {r["dedupe_key"]: r for r in await _recorded(db, "run_failed")}
    assert (rows["y"]["status"], rows["y"]["attempts"], rows["y"]["error"]) == ("failed", 1, "webhook answered 404")
    assert (rows["z"]["channel"], rows["z"]["status"], rows["z"]["attempts"]) == ("email", "failed", 4)
    assert "ConnectionRefusedError" in rows["z"]["error"]


def test_configuration_comes_from_yaml_and_secrets_from_the_environment():
    off = NotificationConfig.load(env={})
    assert not off.enabled and off.channels("order_rejected") == []
    on = NotificationConfig.load(env={"HEDGEGRAPH_WEBHOOK_URL": "http://127.0.0.1:9/hook?token=secret"})
    assert on.channels("order_rejected") == ["webhook"] and on.channels("order_filled") == ["webhook"]
    assert "secret" not in repr(on)  # a webhook URL is a credential: never in logs
    mail = NotificationConfig.load(env={"HEDGEGRAPH_SMTP_HOST": "mx", "HEDGEGRAPH_SMTP_TO": "a@x, b@x",
                                        "HEDGEGRAPH_SMTP_PASSWORD": "hunter2"})
    assert mail.smtp.to == ("a@x", "b@x") and mail.smtp.port == 25 and "hunter2" not in repr(mail)
    assert mail.channels("order_filled") == []  # fills go to the webhook only (config/notifications.yaml)


async def test_the_books_exits_pin_risk_and_settlements_are_announced_once(db, channels):
    from service.housekeeping import HousekeepingReport

    httpserver, _ = channels
    report = HousekeepingReport(
        exits_staged=[{"position_id": "pos_1", "rule": "take_profit", "created": True, "order_id": "ord_x", "note": ""},
                      {"position_id": "pos_2", "rule": "dte", "created": False, "order_id": None, "note": "live exit"}],
        pin_risk=[{"position_id": "pos_3", "contract": "SPY 2026-12-18 600P", "expiry": "2026-12-18",
                   "message": "short 600P is 0.4% from spot the session before expiry"}],
        settled=[{"position_id": "pos_4", "ticker": "SPX", "structure": "bull_put_spread", "status": "settled",
                  "realized_pnl": "1000.00"}])
    notify.notify_book(db, report)
    notify.notify_book(db, report)  # the next housekeeping pass reports the same: nothing is sent twice
    await notify.drain()
    events = [(r["event"], r["channel"]) for r in await _recorded(db) if r["status"] == "sent"]
    assert sorted(events) == sorted([("exit_triggered", "webhook"), ("exit_triggered", "email"),
                                     ("pin_risk", "webhook"), ("pin_risk", "email"), ("position_settled", "webhook")])
    texts = " ".join(h["text"] for h in _hooks(httpserver))
    assert "take_profit" in texts and "0.4% from spot" in texts and "settled" in texts and "pos_2" not in texts


@pytest.mark.parametrize("contracts, events", [(8, {"loss_lockout"}), (12, {"loss_lockout", "risk_halted"})])
async def test_the_gates_lockout_and_daily_loss_halt_are_announced_once_per_reset(db, channels, contracts, events):
    """A real realized loss in the book (paper fills through the debit stop): 8 contracts lose about
    2.6% of NLV — past the 2% realized-loss lockout, short of the 3% daily-loss halt; 12 lose about
    3.9%, past both. The next run stages nothing and the stop is announced; a second run before the
    daily reset meets the same stop and announces nothing more; after the reset, nothing at all."""
    from datetime import datetime

    from service.operations import run_decision
    from tests.test_book_gate_walk import TICKERS, realize_a_loss
    from tools.chain import NEW_YORK
    from tools.providers.simulated import SimulatedMarket

    httpserver, inbox = channels
    await realize_a_loss(db, contracts)
    for minute in (30, 45):  # two slots the same afternoon
        as_of = datetime(2026, 11, 20, 15, minute, tzinfo=NEW_YORK)
        stopped = await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=TICKERS, as_of=as_of,
                                     seed=7, now=lambda: as_of)
        assert stopped.orders == []
        await notify.drain()
    rows = [r for r in await _recorded(db) if r["event"] in ("loss_lockout", "risk_halted")]
    assert {r["event"] for r in rows} == events
    assert sorted((r["event"], r["channel"], r["status"]) for r in rows) == sorted(
        (e, c, "sent") for e in events for c in ("webhook", "email"))  # once per channel, not per run
    lockout = next(r for r in rows if r["event"] == "loss_lockout")
    assert lockout["subject"].startswith("Locked out: realized loss 2.") == (contracts == 8)
    assert "locked until the daily reset" in lockout["body"] and "staged nothing" in lockout["body"]
    assert lockout["dedupe_key"] == "daily_loss_lockout|2026-11-20T00:00:00-05:00"
    texts = " ".join(h["text"] for h in _hooks(httpserver))
    assert "Locked out" in texts and ("Trading halted for the day" in texts) == ("risk_halted" in events)
    assert any("Locked out" in message for _, message in inbox.messages)

    monday = datetime(2026, 11, 23, 15, 30, tzinfo=NEW_YORK)  # after the reset the loss is yesterday's
    await run_decision(db, SimulatedMarket(7), watchlist="core", tickers=TICKERS, as_of=monday, seed=7,
                       now=lambda: monday)
    await notify.drain()
    assert len([r for r in await _recorded(db) if r["event"] in ("loss_lockout", "risk_halted")]) == len(rows)
