"""Notifications: a Slack-compatible webhook and SMTP email, on the events an approver must hear
about — orders awaiting approval, approvals about to expire, fills, rejections with their reason,
risk halts (the kill switch, and the gate's daily-loss halt), the realized-loss lockout, exits
triggered, failed runs and a daily summary.

Delivery never blocks or fails the caller: every `notify_*` call schedules a background task and
returns at once; the task retries each channel with exponential backoff under its own timeout,
and records every notification and its outcome in Postgres (`storage.notifications`). Which event
goes to which channel is in `config/notifications.yaml`; addresses and secrets come from the
environment (see that file). With no channel configured nothing is sent or recorded.

Event-driven calls sit where the events happen (`service.operations.run_decision`: staged orders
and the risk gate's account stops; `service.approvals.decide` and `halt`); `sweep` finds the time-driven ones (approvals about to
expire, fills that happened later, failed runs, the daily summary) and is run by the scheduler's
tick and by `hedgegraph serve`. Each notification carries a key — order, run or date — so one
event is announced once per channel, however many processes sweep.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import smtplib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from email.message import EmailMessage
from typing import Any

import httpx

from config.settings import load_yaml
from storage.database import Database
from storage.notifications import NotificationRepository
from tools.chain import NEW_YORK
from tools.market_hours import add_market_minutes, day_start

log = logging.getLogger(__name__)

EVENTS = ("orders_awaiting_approval", "approval_expiring", "order_filled", "order_rejected", "risk_halted",
          "loss_lockout", "run_failed", "daily_summary", "exit_triggered", "pin_risk", "position_settled")
# Risk-gate vetoes that stop all new trading until the daily reset, and the event each is announced
# as: the hard daily-loss halt is a halt like the kill switch; the realized-loss lockout its own event.
ACCOUNT_STOPS = {"daily_loss_halt": "risk_halted", "daily_loss_lockout": "loss_lockout"}
_pending: set[asyncio.Task] = set()


@dataclass(frozen=True)
class SMTPSettings:
    host: str
    port: int
    to: tuple[str, ...]
    sender: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False


@dataclass(frozen=True)
class NotificationConfig:
    events: dict[str, tuple[str, ...]]
    webhook_url: str | None = field(default=None, repr=False)  # a Slack webhook URL is a secret
    smtp: SMTPSettings | None = None
    expiry_warning_minutes: float = 10
    daily_summary_after: time = time(16, 15)
    attempt_timeout_seconds: float = 10
    attempts: int = 4
    backoff_seconds: float = 1.0
    total_timeout_seconds: float = 60

    @classmethod
    def load(cls, env: dict[str, str] | None = None) -> "NotificationConfig":
        env = os.environ if env is None else env
        raw = load_yaml("notifications.yaml")
        events = {name: tuple(raw.get("events", {}).get(name) or ()) for name in EVENTS}
        smtp = None
        if env.get("HEDGEGRAPH_SMTP_HOST") and env.get("HEDGEGRAPH_SMTP_TO"):
            smtp = SMTPSettings(
                host=env["HEDGEGRAPH_SMTP_HOST"], port=int(env.get("HEDGEGRAPH_SMTP_PORT") or 25),
                to=tuple(a.strip() for a in env["HEDGEGRAPH_SMTP_TO"].split(",") if a.strip()),
                sender=env.get("HEDGEGRAPH_SMTP_FROM") or "hedgegraph@localhost",
                user=env.get("HEDGEGRAPH_SMTP_USER") or None, password=env.get("HEDGEGRAPH_SMTP_PASSWORD") or None,
                starttls=(env.get("HEDGEGRAPH_SMTP_STARTTLS") or "").lower() in ("1", "true", "yes"))
        hh, mm = str(raw.get("daily_summary_after", "16:15")).split(":")
        return cls(events=events, webhook_url=env.get("HEDGEGRAPH_WEBHOOK_URL") or None, smtp=smtp,
                   expiry_warning_minutes=float(raw.get("expiry_warning_minutes", 10)),
                   daily_summary_after=time(int(hh), int(mm)),
                   attempt_timeout_seconds=float(raw.get("attempt_timeout_seconds", 10)),
                   attempts=max(1, int(raw.get("attempts", 4))),
                   backoff_seconds=float(raw.get("backoff_seconds", 1.0)),
                   total_timeout_seconds=float(raw.get("total_timeout_seconds", 60)))

    def channels(self, event: str) -> list[str]:
        configured = {"webhook": self.webhook_url is not None, "email": self.smtp is not None}
        return [c for c in self.events.get(event, ()) if configured.get(c)]

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.smtp is not None


class PermanentFailure(Exception):
    """Retrying cannot help (e.g. the webhook answered 404, the SMTP server refused the login)."""


# ------------------------------------------------------------------------------- delivery

async def _post_webhook(config: NotificationConfig, subject: str, body: str) -> None:
    payload = {"text": f"*{subject}*\n{body}",
               "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{subject}*\n{body}"}}]}
    async with httpx.AsyncClient(timeout=config.attempt_timeout_seconds) as client:
        response = await client.post(config.webhook_url, json=payload)
    if response.status_code >= 500 or response.status_code == 429:
        raise RuntimeError(f"webhook answered {response.status_code}")
    if response.status_code >= 400:
        raise PermanentFailure(f"webhook answered {response.status_code}")


def _send_email(config: NotificationConfig, subject: str, body: str) -> None:
    smtp = config.smtp
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = f"[hedgegraph] {subject}", smtp.sender, ", ".join(smtp.to)
    message.set_content(body)
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=config.attempt_timeout_seconds) as client:
            if smtp.starttls:
                client.starttls()
            if smtp.user:
                client.login(smtp.user, smtp.password or "")
            client.send_message(message)
    except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        raise PermanentFailure(f"{type(exc).__name__}: {exc}") from None


async def _attempts(config: NotificationConfig, send: Callable[[], Awaitable[None]]) -> tuple[bool, int, str | None]:
    error = None
    for attempt in range(1, config.attempts + 1):
        try:
            await asyncio.wait_for(send(), timeout=config.attempt_timeout_seconds)
            return True, attempt, None
        except PermanentFailure as exc:
            return False, attempt, str(exc)
        except Exception as exc:  # network trouble, timeouts, 5xx: worth another try
            error = f"{type(exc).__name__}: {exc}"[:500]
        if attempt < config.attempts:
            await asyncio.sleep(config.backoff_seconds * 2 ** (attempt - 1))
    return False, config.attempts, error


async def _deliver(db: Database, config: NotificationConfig, event: str, subject: str, body: str,
                   payload: dict[str, Any], dedupe_key: str | None) -> None:
    repo = NotificationRepository(db.pool)
    for channel in config.channels(event):
        notification_id = await repo.begin(event=event, channel=channel, subject=subject, body=body,
                                           payload=payload, dedupe_key=dedupe_key)
        if notification_id is None:
            continue  # announced already
        if channel == "webhook":
            sent, tries, error = await _attempts(config, lambda: _post_webhook(config, subject, body))
        else:
            sent, tries, error = await _attempts(config, lambda: asyncio.to_thread(_send_email, config, subject, body))
        await repo.finish(notification_id, sent=sent, attempts=tries, error=error)
        if not sent:
            log.warning("notification %s (%s via %s) failed after %d attempts: %s", notification_id, event,
                        channel, tries, error)


def _spawn(coroutine: Awaitable[None], timeout: float, what: str) -> None:
    async def guarded() -> None:
        try:
            await asyncio.wait_for(coroutine, timeout=timeout)
        except Exception:  # a notification never fails its caller
            log.exception("notification task %s failed", what)

    try:
        task = asyncio.get_running_loop().create_task(guarded())
    except RuntimeError:  # no running loop: nothing to attach to (never raise into the caller)
        coroutine.close()
        return
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_silenced: contextvars.ContextVar[bool] = contextvars.ContextVar("hedgegraph_notifications_silenced", default=False)


@contextlib.contextmanager
def silenced():
    """Nothing is announced inside this block, nor by tasks started in it: a backtest's simulated
    runs, fills, exits and settlements are nobody's news, and must never reach the channels the
    live desk configured (a year of history would be thousands of messages)."""
    token = _silenced.set(True)
    try:
        yield
    finally:
        _silenced.reset(token)


def send(db: Database, event: str, subject: str, body: str, payload: dict[str, Any] | None = None, *,
         dedupe_key: str | None = None, config: NotificationConfig | None = None) -> None:
    """Announce `event` on its configured channels, in the background. Returns at once. Inside
    `silenced()`, nothing."""
    if _silenced.get():
        return
    try:
        config = config or NotificationConfig.load()
        if not config.channels(event):
            return
        _spawn(_deliver(db, config, event, subject, body, payload or {}, dedupe_key),
               config.total_timeout_seconds, event)
    except Exception:
        log.exception("could not schedule notification %s", event)


async def drain(timeout: float = 30) -> None:
    """Wait for the notifications in flight (at shutdown, and in tests)."""
    if _pending:
        await asyncio.wait(set(_pending), timeout=timeout)


# ------------------------------------------------------------------------------- events

def notify_run(db: Database, outcome: Any) -> None:
    """After a decision run: its staged orders await approval; or the risk gate stopped it for the
    day (daily-loss halt, realized-loss lockout)."""
    try:
        _announce_staged(db, outcome)
        _announce_account_stops(db, outcome)
    except Exception:
        log.exception("notify_run")


def _announce_staged(db: Database, outcome: Any) -> None:
    orders = list(getattr(outcome, "orders", None) or [])
    run = outcome.run
    if not orders or run.status != "awaiting_approval":
        return
    lines = [f"• {o.ticker} {o.structure} × {o.quantity} at {o.limit_price}"
             + (" (needs acknowledgement)" if o.requires_acknowledgement else "") for o in orders]
    send(db, "orders_awaiting_approval", f"{len(orders)} order(s) await approval ({run.run_id})",
         "\n".join(lines), {"run_id": run.run_id, "order_ids": [o.order_id for o in orders]},
         dedupe_key=run.run_id)


def _announce_account_stops(db: Database, outcome: Any) -> None:
    """A daily-loss halt or realized-loss lockout in the run's risk decisions, announced once per
    daily-reset period (every run until the reset meets the same stop)."""
    from brokers.book import last_daily_reset
    from risk.limits import load_risk_matrix

    state, run = getattr(outcome, "state", None) or {}, outcome.run
    decisions = [*state.get("pre_trade", []), *state.get("post_trade", [])]
    stops: dict[str, tuple[Any, set[str]]] = {}
    for decision in decisions:
        for veto in decision.vetoes:
            if veto.code in ACCOUNT_STOPS:
                stops.setdefault(veto.code, (veto, set()))[1].add(decision.ticker)
    if not stops:
        return
    reset = load_risk_matrix().daily_reset
    period = last_daily_reset(run.as_of, reset.at, reset.timezone)
    for code, (veto, tickers) in stops.items():
        subject = (f"Trading halted for the day: daily loss {veto.value:.2%} of NLV" if code == "daily_loss_halt"
                   else f"Locked out: realized loss {veto.value:.2%} of NLV")
        staged = len(getattr(outcome, "orders", None) or [])
        body = (f"{veto.message}. Run {run.run_id} ({', '.join(sorted(tickers))}) "
                + ("staged nothing." if not staged else f"staged {staged} order(s) for other tickers."))
        send(db, ACCOUNT_STOPS[code], subject, body,
             {"run_id": run.run_id, "code": code, "value": veto.value, "limit": veto.limit,
              "tickers": sorted(tickers), "since_reset": period.isoformat()},
             dedupe_key=f"{code}|{period.isoformat()}")


def notify_decision(db: Database, review: dict[str, Any]) -> None:
    """After a decision: a rejection with its reason, or the fill it led to."""
    try:
        state, order_id = review.get("state"), review["order_id"]
        what = f"{review['ticker']} {review['structure']} × {review['quantity']}"
        decision = review.get("decision") or {}
        if state == "REJECTED" and decision.get("action") == "reject":
            send(db, "order_rejected", f"Rejected: {what}",
                 f"{decision.get('approver')} rejected {order_id}: {decision.get('reason')}",
                 {"order_id": order_id, "approver": decision.get("approver"), "reason": decision.get("reason")},
                 dedupe_key=order_id)
        elif state == "FILLED":
            send(db, "order_filled", f"Filled: {what}",
                 f"{order_id} approved by {decision.get('approver')} filled.",
                 {"order_id": order_id, "approver": decision.get("approver")}, dedupe_key=order_id)
    except Exception:
        log.exception("notify_decision")


def notify_halt(db: Database, state: dict[str, Any]) -> None:
    try:
        if state.get("halted"):
            send(db, "risk_halted", "Trading halted", f"{state.get('actor')} halted trading: {state.get('reason')}",
                 {"actor": state.get("actor"), "reason": state.get("reason"), "at": str(state.get("changed_at"))})
    except Exception:
        log.exception("notify_halt")


def notify_book(db: Database, report: Any) -> None:
    """After housekeeping: exits staged for approval, short strikes pinned near the money the
    session before expiry, and positions settled or assigned at expiry."""
    try:
        for e in report.exits_staged:
            if e.get("created"):
                send(db, "exit_triggered", f"Exit staged: {e['rule']}",
                     f"position {e['position_id']}: exit rule {e['rule']} staged {e['order_id']} for approval. {e.get('note') or ''}",
                     e, dedupe_key=e["order_id"])
        for p in report.pin_risk:
            send(db, "pin_risk", f"Pin risk: {p.get('contract')}", str(p.get("message")), p,
                 dedupe_key=f"{p.get('position_id')}|{p.get('contract')}|{p.get('expiry')}")
        for s_ in report.settled:
            send(db, "position_settled", f"{str(s_.get('status')).capitalize()}: {s_.get('ticker')} {s_.get('structure')}",
                 f"position {s_.get('position_id')} {s_.get('status')} at expiry; realized {s_.get('realized_pnl')}",
                 s_, dedupe_key=str(s_.get("position_id")))
    except Exception:
        log.exception("notify_book")


def sweep(db: Database, now: datetime, config: NotificationConfig | None = None) -> None:
    """Look for time-driven events (in the background): approvals about to expire, fills not yet
    announced, failed runs, and the daily summary once `daily_summary_after` has passed."""
    try:
        config = config or NotificationConfig.load()
        if config.enabled:
            _spawn(_sweep(db, now, config), config.total_timeout_seconds, "sweep")
    except Exception:
        log.exception("could not schedule the notification sweep")


async def _sweep(db: Database, now: datetime, config: NotificationConfig) -> None:
    repo = NotificationRepository(db.pool)
    jobs = []
    if config.channels("approval_expiring"):
        for o in await repo.unannounced_staged():
            deadline = add_market_minutes(o["created_at"], (o["config"] or {}).get("approval_ttl_market_minutes", 30))
            left = (deadline - now).total_seconds() / 60
            if 0 < left <= config.expiry_warning_minutes:
                jobs.append(_deliver(db, config, "approval_expiring",
                                     f"Expires in {left:.0f} min: {o['ticker']} {o['structure']} × {o['quantity']}",
                                     f"{o['order_id']} must be decided by {deadline.astimezone(NEW_YORK):%H:%M %Z}.",
                                     {"order_id": o["order_id"], "expires_at": deadline.isoformat()}, o["order_id"]))
    if config.channels("order_filled"):
        for o in await repo.unannounced_fills():
            jobs.append(_deliver(db, config, "order_filled", f"Filled: {o['ticker']} {o['structure']} × {o['quantity']}",
                                 f"{o['order_id']} approved by {o['approver']} filled at {o['price']}.",
                                 {"order_id": o["order_id"], "price": o["price"]}, o["order_id"]))
    if config.channels("run_failed"):
        for r in await repo.unannounced_failed_runs():
            jobs.append(_deliver(db, config, "run_failed", f"Run failed: {r['run_id']}",
                                 f"{r['watchlist']} ({' '.join(r['tickers'])}) failed after {r['attempts']} "
                                 f"attempt(s): {r['error']}", {"run_id": r["run_id"]}, r["run_id"]))
    local = now.astimezone(NEW_YORK)
    if config.channels("daily_summary") and local.time() >= config.daily_summary_after:
        start = day_start(local)
        counts = await repo.daily_counts(start, start + timedelta(days=1))
        runs = ", ".join(f"{k} {v}" for k, v in sorted(counts["runs"].items())) or "none"
        orders = ", ".join(f"{k} {v}" for k, v in sorted(counts["orders"].items())) or "none"
        jobs.append(_deliver(db, config, "daily_summary", f"Daily summary {local:%Y-%m-%d}",
                             f"Runs: {runs}\nOrders: {orders}\nFills: {counts['fills']}", counts,
                             f"{local:%Y-%m-%d}"))
    await asyncio.gather(*jobs)
