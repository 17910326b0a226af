"""The approver's web page, served by the API's FastAPI app: server-rendered Jinja2 templates
(`service/templates/`), one stylesheet and one small script (`service/static/`), plots as inline
SVG (`service.charts`, `service.svg`). Nothing is loaded from elsewhere: it works offline.

Sign-in takes an API token and opens a session (`storage.web_sessions`): an httpOnly, SameSite
cookie carries only a random session id. Every form carries the session's CSRF token. Roles are
the API's: a viewer sees, an approver decides, an admin halts and resumes. Every action goes
through the same `service.approvals` / `service.operations` functions as the API.

Pages: `/` the approval queue · `/ui/orders/{id}` an order · `/ui/runs` runs · `/ui/runs/{id}` a
run's trace · `/ui/runs/{id}/steps/{n}` the state at one step · `/ui/positions` positions and P&L ·
`/ui/backtests` backtests · `/ui/backtests/{id}` a backtest's report (from its report.json). A new page is one template plus
one route registered with `page(...)` and, for the navigation bar, one entry in `NAV`.
"""
from __future__ import annotations

import json
import logging
import secrets
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from service import approvals, charts, operations, svg
from service.approvals import ApprovalError, Decision, ServiceContext
from service.security import LoginThrottle, ServiceConfig, client_address
from storage.tokens import Role
from storage.web_sessions import WebSession, WebSessionRepository
from tools.chain import NEW_YORK

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "hg_session"
LOGIN_CSRF_COOKIE = "hg_login_csrf"
# (label, path, minimum role): the navigation bar. A positions page is one more entry here.
NAV: list[tuple[str, str, Role]] = [("Queue", "/", "viewer"), ("Positions", "/ui/positions", "viewer"),
                                    ("Runs", "/ui/runs", "viewer"), ("Backtests", "/ui/backtests", "viewer")]
RUN_STATUSES = ("pending", "running", "awaiting_approval", "completed", "failed")

templates = Jinja2Templates(directory=str(HERE / "templates"))
# Backtest metrics that are fractions (shown as percentages); the others are ratios, counts or dollars.
PERCENT_METRICS = {"total_return", "cagr", "annual_volatility", "max_drawdown", "var_95", "cvar_95", "win_rate",
                   "realized", "mean_predicted"}


def _figure(value: Any, name: str = "") -> str:
    """A report number for a table: — when absent, percentages for fractions, 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if name in PERCENT_METRICS:
        return f"{value:.2%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


templates.env.filters["figure"] = _figure


class _SignIn(Exception):
    """No live session: the page redirects to the sign-in form."""


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def _config(request: Request) -> ServiceConfig:
    return request.app.state.service_config


async def current_session(request: Request) -> WebSession | None:
    return await WebSessionRepository(_ctx(request).db.pool).get(request.cookies.get(SESSION_COOKIE))


async def _session(request: Request) -> WebSession:
    session = await current_session(request)
    if session is None:
        raise _SignIn()
    return session


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form (the body is size-limited before it gets here)."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _is_exit(order: dict[str, Any]) -> bool:
    return str(order.get("structure", "")).startswith("exit:") or bool(order.get("closes_position_id"))


def _seconds_left(expires_at: str, now: datetime) -> int:
    return int((datetime.fromisoformat(expires_at) - now).total_seconds())


def render(request: Request, template: str, session: WebSession | None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    nav = [(label, path) for label, path, role in NAV if session is None or session.principal.has_role(role)]
    return templates.TemplateResponse(request, template, {"session": session, "nav": nav, **context},
                                      status_code=status_code)


def _error_page(request: Request, session: WebSession | None, status_code: int, message: str) -> HTMLResponse:
    return render(request, "error.html", session, status_code=status_code, status_code_=status_code, message=message)


def _forbidden(request: Request, session: WebSession, role: Role) -> HTMLResponse:
    return _error_page(request, session, 403,
                       f"{session.principal.name} has role {session.principal.role}; this needs {role}.")


async def _checked_form(request: Request, session: WebSession) -> dict[str, str] | None:
    form = await _form(request)
    return form if session.csrf_ok(form.get("csrf")) else None


def install(app: FastAPI) -> None:
    """Mount the page's routes and static files on the API app (hidden from the OpenAPI schema)."""
    config: ServiceConfig = app.state.service_config
    app.state.login_throttle = getattr(app.state, "login_throttle", None) or LoginThrottle(
        config.max_login_failures, config.login_window_seconds)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(_SignIn)
    async def sign_in_first(request: Request, exc: _SignIn) -> Response:
        return RedirectResponse("/login", status_code=303)

    def page(path: str, methods: tuple[str, ...] = ("GET",)):
        return app.api_route(path, methods=list(methods), include_in_schema=False, response_class=HTMLResponse)

    # ------------------------------------------------------------------ sign in / out

    @page("/login")
    async def login_form(request: Request) -> Response:
        if await current_session(request) is not None:
            return RedirectResponse("/", status_code=303)
        csrf = secrets.token_urlsafe(24)
        response = render(request, "login.html", None, login_csrf=csrf, error=None)
        response.set_cookie(LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
                            secure=config.cookie_secure, max_age=3600, path="/login")
        return response

    @page("/login", ("POST",))
    async def login(request: Request) -> Response:
        throttle: LoginThrottle = request.app.state.login_throttle
        client = client_address(request)
        form = await _form(request)
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
        if not cookie or form.get("csrf") != cookie:
            return _error_page(request, None, 403, "The sign-in form expired; reload the page and sign in again.")
        wait = throttle.blocked(client)
        if wait:
            response = render(request, "login.html", None, status_code=429, login_csrf=cookie,
                              error=f"Too many failed sign-ins; try again in {int(wait)} seconds.")
            response.headers["Retry-After"] = str(int(wait))
            return response
        opened = await WebSessionRepository(_ctx(request).db.pool).open(
            form.get("token", "").strip(), timedelta(hours=config.session_hours))
        if opened is None:
            throttle.failed(client)
            return render(request, "login.html", None, status_code=401, login_csrf=cookie,
                          error="That token is unknown or revoked.")
        throttle.succeeded(client)
        session_id, _ = opened
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict",
                            secure=config.cookie_secure, max_age=int(config.session_hours * 3600), path="/")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return response

    @page("/logout", ("POST",))
    async def logout(request: Request) -> Response:
        session = await _session(request)
        if await _checked_form(request, session) is None:
            return _error_page(request, session, 403, "Missing or wrong CSRF token.")
        await WebSessionRepository(_ctx(request).db.pool).close(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ the approval queue

    @page("/")
    async def queue(request: Request) -> Response:
        session = await _session(request)
        ctx = _ctx(request)
        now = ctx.clock()
        orders = []
        for summary in await operations.list_orders(ctx.db, state="STAGED", limit=500):
            review = await approvals.order_review(ctx, summary["order_id"])
            orders.append(review | {"is_exit": _is_exit(review),
                                    "seconds_left": _seconds_left(review["expires_at"], now)})
        orders.sort(key=lambda o: o["seconds_left"])
        return render(request, "queue.html", session, orders=orders, risk=await approvals.risk_status(ctx),
                      now=now.isoformat())

    # ------------------------------------------------------------------ an order

    async def order_page(request: Request, session: WebSession, order_id: str, *, status_code: int = 200,
                         message: str | None = None, error: str | None = None) -> Response:
        ctx = _ctx(request)
        try:
            review = await approvals.order_review(ctx, order_id)
        except ApprovalError as exc:
            return _error_page(request, session, exc.status_code, str(exc))
        order = await operations.show_order(ctx.db, order_id)
        plots = await charts.order_charts(ctx.db, review)
        rendered = {name: Markup(svg.render(chart, chart_id=f"plot-{name}")) for name, chart in plots.items()}
        return render(request, "order.html", session, status_code=status_code, order=review,
                      proposal=(order or {}).get("proposal", {}), sizing=(order or {}).get("sizing", {}),
                      is_exit=_is_exit(review),
                      seconds_left=_seconds_left(review["expires_at"], ctx.clock()),
                      plots=rendered, message=message, error=error,
                      can_decide=session.principal.has_role("approver") and review["state"] == "STAGED")

    @page("/ui/orders/{order_id}")
    async def show_order(request: Request, order_id: str) -> Response:
        return await order_page(request, await _session(request), order_id)

    @page("/ui/orders/{order_id}/{action}", ("POST",))
    async def decide(request: Request, order_id: str, action: str) -> Response:
        session = await _session(request)
        if action not in ("approve", "reject", "resize"):
            return _error_page(request, session, 404, f"no action {action!r}")
        form = await _checked_form(request, session)
        if form is None:
            return _error_page(request, session, 403, "Missing or wrong CSRF token: reload the page and try again.")
        if not session.principal.has_role("approver"):
            return _forbidden(request, session, "approver")
        quantity = None
        if action == "resize":
            try:
                quantity = int(form.get("quantity", ""))
            except ValueError:
                return await order_page(request, session, order_id, status_code=422,
                                        error="Resize needs a whole number of contracts.")
        decision = Decision(action=action, approver=session.principal.name, quantity=quantity,
                            reason=(form.get("reason") or "").strip() or None,
                            acknowledge=form.get("acknowledge") == "yes")
        try:
            result = await approvals.decide(_ctx(request), order_id, decision)
        except ApprovalError as exc:
            label = {409: "Conflict", 404: "Not found", 422: "Not allowed", 400: "Cannot execute"}
            return await order_page(request, session, order_id, status_code=exc.status_code,
                                    error=f"{exc.status_code} {label.get(exc.status_code, 'Error')}: {exc}")
        done = {"approve": "Approved", "reject": "Rejected", "resize": f"Approved at {quantity} contracts"}[action]
        note = f" ({result['note']})" if result.get("note") else ""
        return await order_page(request, session, order_id,
                                message=f"{done} by {session.principal.name}: the order is now {result['state']}.{note}")

    # ------------------------------------------------------------------ risk (admin)

    @page("/ui/risk/{action}", ("POST",))
    async def risk(request: Request, action: str) -> Response:
        session = await _session(request)
        form = await _checked_form(request, session)
        if form is None:
            return _error_page(request, session, 403, "Missing or wrong CSRF token.")
        if not session.principal.has_role("admin"):
            return _forbidden(request, session, "admin")
        try:
            if action == "halt":
                await approvals.halt(_ctx(request), session.principal.name, form.get("reason", ""))
            elif action == "resume":
                await approvals.resume_trading(_ctx(request), session.principal.name)
            else:
                return _error_page(request, session, 404, f"no action {action!r}")
        except ApprovalError as exc:
            return _error_page(request, session, exc.status_code, str(exc))
        return RedirectResponse("/", status_code=303)

    # ------------------------------------------------------------------ runs and traces

    @page("/ui/positions")
    async def positions(request: Request) -> Response:
        """Open positions with marks and Greeks, the equity curve and daily P&L of the last 90 days."""
        session = await _session(request)
        ctx = _ctx(request)
        book = await operations.positions(ctx)
        today = ctx.clock().astimezone(NEW_YORK).date()
        pnl = await operations.pnl(ctx, today - timedelta(days=90), today)
        days = [d for d in pnl["days"] if d["net_liquidation"] is not None]
        first = days[0]["day"] if days else today
        x = [float((d["day"] - first).days) for d in days]  # calendar days (the book's days are dates)
        plots = {}
        if len(days) >= 2:  # a curve needs two marked days
            plots["equity"] = Markup(svg.render(svg.Chart(
                title="Equity (NLV at each day's last snapshot)", x_label=f"days since {days[0]['day']}",
                y_label="NLV $", series=[svg.Series("NLV", x, [float(d["net_liquidation"]) for d in days]),
                                         svg.Series("marked day", x, [float(d["net_liquidation"]) for d in days],
                                                    kind="points", css="s2")],
                x_format="{:,.1f}"), chart_id="plot-equity"))
            plots["daily"] = Markup(svg.render(svg.Chart(
                title="Daily P&L (realized + change in unrealized)", x_label=f"days since {days[0]['day']}",
                y_label="P&L $", series=[svg.Series("P&L", x, [float(d["total_pnl"]) for d in days], kind="bars")],
                zero_line=True, x_format="{:,.1f}"), chart_id="plot-daily"))
        return render(request, "positions.html", session, book=book, pnl=pnl, plots=plots)

    @page("/ui/runs")
    async def runs(request: Request) -> Response:
        session = await _session(request)
        status_filter = request.query_params.get("status") or ""
        text = (request.query_params.get("q") or "").strip()[:100]
        rows = await operations.list_runs(_ctx(request).db, 200, text=text or None,
                                          status=status_filter if status_filter in RUN_STATUSES else None)
        return render(request, "runs.html", session, runs=rows, statuses=RUN_STATUSES,
                      status_filter=status_filter, text=text)

    @page("/ui/runs/{run_id}")
    async def run(request: Request, run_id: str) -> Response:
        session = await _session(request)
        db = _ctx(request).db
        detail = await operations.show_run(db, run_id) if len(run_id) <= 200 else None
        if detail is None:
            return _error_page(request, session, 404, f"no run {run_id!r}")
        try:
            steps = await operations.steps(db, run_id)
        except LookupError as exc:
            steps, detail["trace_error"] = [], str(exc)
        return render(request, "run.html", session, detail=detail, steps=steps)

    @page("/ui/runs/{run_id}/steps/{step}")
    async def step(request: Request, run_id: str, step: int) -> Response:
        session = await _session(request)
        try:
            state = await operations.state_at(_ctx(request).db, run_id, step)
        except LookupError as exc:
            return _error_page(request, session, 404, str(exc))
        return render(request, "step.html", session, run_id=run_id, step=step,
                      state_json=json.dumps(state, indent=2, default=str))

    @page("/ui/runs/{run_id}/{action}", ("POST",))
    async def replay_or_fork(request: Request, run_id: str, action: str) -> Response:
        session = await _session(request)
        form = await _checked_form(request, session)
        if form is None:
            return _error_page(request, session, 403, "Missing or wrong CSRF token.")
        if not session.principal.has_role("approver"):
            return _forbidden(request, session, "approver")
        from graph.replay import ReplayError

        db = _ctx(request).db
        try:
            if action == "replay":
                report = await operations.replay(db, run_id)
            elif action == "fork":
                sets = [s.strip() for s in form.get("sets", "").splitlines() if s.strip()]
                report = await operations.fork(db, run_id, form.get("at", ""), sets)
            else:
                return _error_page(request, session, 404, f"no action {action!r}")
        except (ReplayError, LookupError, ValueError) as exc:
            return _error_page(request, session, 422, f"{action} failed: {exc}")
        return render(request, "comparison.html", session, run_id=run_id, action=action, report=report)

    # ------------------------------------------------------------------ backtests

    @page("/ui/backtests")
    async def backtests(request: Request) -> Response:
        session = await _session(request)
        return render(request, "backtests.html", session, backtests=await operations.list_backtests(_ctx(request).db, 200))

    @page("/ui/backtests/{backtest_id}")
    async def backtest(request: Request, backtest_id: str) -> Response:
        """A backtest's report rendered from its report.json (the same numbers as its report.html)."""
        session = await _session(request)
        detail = await operations.show_backtest(_ctx(request).db, backtest_id) if len(backtest_id) <= 200 else None
        if detail is None:
            return _error_page(request, session, 404, f"no backtest {backtest_id!r}")
        report = detail["report"]
        plots, metric_rows = {}, []
        if report is not None:
            plots = {name: Markup(svg.render(chart, chart_id=f"plot-{name}"))
                     for name, chart in charts.backtest_charts(report).items()}
            columns = {"graph": report["metrics"], "spy": report["baselines"]["spy_buy_and_hold"],
                       "condor": report["baselines"]["iron_condor_16d_45dte"]}
            names = sorted({k for m in columns.values() for k in m})
            metric_rows = [{"metric": k} | {c: m.get(k) for c, m in columns.items()} for k in names]
        return render(request, "backtest.html", session, bt=detail, report=report, plots=plots,
                      metric_rows=metric_rows)
