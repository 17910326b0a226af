"""The HTTP API (FastAPI): runs, orders and approvals, the book, backtests, risk halt/resume, health and metrics.

Authentication: `Authorization: Bearer <token>`, tokens made with `hedgegraph tokens create NAME
--role viewer|approver|admin` and stored only as SHA-256 (`storage.tokens`). Roles are ordered,
each including the ones before it:

- viewer   — read runs, orders (with the full approval review), the book, backtests, risk status and /metrics;
- approver — also approve, reject and resize orders (recorded as approved by the token's name);
- admin    — also halt and resume trading.

The approver's web page (`service.web`) is served by the same app at `/` (sign in with a token).

`/health` needs no token (load balancers and orchestrators probe it). `/metrics` needs a viewer
token: it exposes order and approval counts, which are business data; Prometheus sends one with
`authorization: {type: Bearer, credentials_file: ...}` in its scrape config.

Hardening: a Host header outside `allowed_hosts` is answered 400; a request body beyond
`max_body_bytes` 413 before it is read; every response carries a Content-Security-Policy,
X-Content-Type-Options: nosniff and X-Frame-Options: DENY; `/docs` and `/openapi.json` need a
viewer token unless `docs_public` (all in `config/service.yaml`); too many failed tokens from one
address in a window are answered 429 until it passes.

Errors are JSON `{"detail": "<message>"}`: 400 an order that cannot be executed as recorded, 401
missing/invalid/revoked token (with `WWW-Authenticate: Bearer`), 403 role too low, 404 unknown run
or order, 409 the order is no longer STAGED or trading is halted, 422 a malformed request (bad or
unknown field or query parameter; `errors` then lists the fields at fault) or a decision the order
does not allow, 503 database unavailable.

Every operation is a function of `service.operations` or `service.approvals`; this module only
authenticates, validates and shapes JSON, so the CLI and the API never disagree.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path as PathLib
from typing import Annotated, Any, Literal

import asyncpg
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.order_state import OrderState
from domain.decision import DebateTurn, OptionLeg, RiskReason
from service import approvals, notify, operations
from service.approvals import ApprovalError, Decision, ServiceContext
from service.security import HardeningMiddleware, LoginThrottle, ServiceConfig, client_address, docs_csp
from storage.database import DatabaseUnavailable
from storage.tokens import Principal, Role, TokenRepository

log = logging.getLogger(__name__)

ContextFactory = Callable[[], Awaitable[ServiceContext]]
# The database went away or cannot be reached (connection lost or refused, server shutting down,
# database dropped): the request is answered 503, the caller may retry.
_DATABASE_LOST: tuple[type[Exception], ...] = (
    DatabaseUnavailable, ConnectionError, asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InvalidCatalogNameError,
    psycopg.OperationalError,
)
# Identifiers longer than this, or holding a NUL (which PostgreSQL text cannot store), name
# nothing that exists: answered 404 without asking the database.
_MAX_ID_CHARS = 200
# Swagger UI's files (JS, CSS, icon), packaged by fastapi-offline.
DOCS_ASSETS = "/docs-assets"


# ---------------------------------------------------------------------------------------------
# Response and request models. Decimal fields are exact and travel as JSON strings ("2.2600").


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, for a person.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="For malformed requests: each field at fault (loc, msg, type).")


class RunOut(BaseModel):
    run_id: str
    slot_key: str
    watchlist: str
    as_of: datetime = Field(description="The decision time the run saw the market at (timezone-aware).")
    tickers: list[str]
    seed: int
    provider: str
    config: dict[str, Any] = Field(description="The DecisionConfig the run was made with.")
    mode: Literal["live", "sandbox"]
    parent_run_id: str | None
    status: Literal["pending", "running", "awaiting_approval", "completed", "failed"]
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SignalOut(BaseModel):
    id: int
    run_id: str
    ticker: str
    source: str
    direction: str
    conviction: float = Field(ge=0, le=1)
    edge_type: str
    horizon_days: int
    as_of: datetime
    evidence: dict[str, Any] = Field(description="The numbers the conviction came from.")
    data_quality: list[str] = Field(description="What was missing or rejected.")


class DebateOut(BaseModel):
    id: int
    run_id: str
    ticker: str
    debater: str
    price_view: str
    vol_view: str
    confidence: float
    rationale: str
    rounds: int
    transcript: list[DebateTurn]
    memories_used: list[Any]
    fallback_reason: str | None


class RiskDecisionOut(BaseModel):
    id: int
    run_id: str
    ticker: str
    stage: Literal["pre_trade", "post_trade"]
    approved: bool
    regime: str
    vetoes: list[RiskReason]
    warnings: list[RiskReason]
    requires_acknowledgement: bool


class NodeTimingOut(BaseModel):
    node: str
    ticker: str | None
    duration_ms: float


class KellyOut(BaseModel):
    kelly_fraction: float | None = Field(description="Full-Kelly fraction of capital f*.")
    applied_fraction: float | None = Field(description="Fraction actually applied after multiplier and caps.")
    win_rate: float | None
    payoff_ratio: float | None
    capital_at_risk: Decimal | None = Field(description="Dollars: quantity × max loss per unit.")
    caps_applied: list[str] | None
    inputs: dict[str, Any] | None = Field(None, description=(
        "What sized the trade: the payoff distribution under the view, the journal's pull on it "
        "(trades, wins, prior and journal weights), full and applied fraction, expected log growth, caps."))


class OrderSummaryOut(BaseModel):
    """The API's view of one `domain.orders.Order` (`operations.order_summary`): every field of the
    order, its legs shown priced (as the approver saw them, from its proposal), and in place of the
    proposal and sizing JSON the per-unit figures and Kelly inputs an approver reads."""

    order_id: str
    idempotency_key: str
    run_id: str
    ticker: str
    sector: str
    structure: str
    quantity: int = Field(gt=0, description="Whole contracts (combo units).")
    limit_price: Decimal = Field(description="Per share per combo unit, signed: + pay (debit) / - receive (credit).")
    state: OrderState
    requires_acknowledgement: bool = Field(description="Over 10 contracts: approving needs acknowledge=true.")
    created_at: datetime
    updated_at: datetime
    time_in_force: Literal["DAY", "GTC"] = Field("DAY", description="How long the broker keeps it working.")
    multiplier: int = Field(100, gt=0, description="Shares per contract.")
    closes_position_id: str | None = Field(
        default=None, description="Set on an exit order: the strategy position it closes.")
    exit_rule: str | None = Field(None, description="On an exit order: the rule that staged it.")
    legs: list[OptionLeg]
    max_loss_per_unit: Decimal | None = Field(description="Dollars per combo unit.")
    max_profit_per_unit: Decimal | None = Field(description="Dollars per combo unit; null when unlimited.")
    breakevens: list[float] | None = Field(description="Underlying prices.")
    probability_of_profit: float | None
    pop_model: str | None = Field(None, description="The law of probability_of_profit: 'svi_density' (the "
                                  "fitted smile, skew included) or 'lognormal_atm'.")
    probability_of_profit_lognormal: float | None = Field(None, description="The one-ATM-vol figure, for comparison.")
    expected_pnl_per_unit: Decimal | None = Field(None, description="Dollars per unit at expiry under the smile's law.")
    kelly: KellyOut


class RunDetailOut(BaseModel):
    run: RunOut
    signals: list[SignalOut]
    debates: list[DebateOut]
    risk_decisions: list[RiskDecisionOut]
    orders: list[OrderSummaryOut]
    node_timings: list[NodeTimingOut]


class HistoryEntryOut(BaseModel):
    from_state: OrderState | None
    to_state: OrderState
    actor: str = Field(description="Who moved the order: 'graph', an approver's token name, a broker.")
    reason: str | None
    at: datetime


class GreeksImpactOut(BaseModel):
    """What the order adds to the book at its quantity: per-share Greeks × multiplier × quantity."""

    delta: float = Field(description="Shares of the underlying.")
    gamma: float = Field(description="Shares per $1 move of the underlying.")
    vega: float = Field(description="Dollars per vol point.")
    theta: float = Field(description="Dollars per calendar day.")


class MarginWhatIfOut(BaseModel):
    initial_margin_change: Decimal = Field(description="Dollars.")
    basis: str


class BrokerPreviewOut(BaseModel):
    """What the configured broker says the order would do (nothing is placed), and the book's Greeks
    before and after it. `available` false: the broker could not answer, and `reason` says why."""

    available: bool
    broker: str | None = None
    reason: str | None = None
    method: str | None = Field(None, description="ibkr_what_if, tastytrade_dry_run, or the paper rule used.")
    initial_margin_change: Decimal | None = Field(None, description="Dollars.")
    maintenance_margin_change: Decimal | None = Field(None, description="Dollars.")
    margin_before: Decimal | None = Field(None, description="Dollars.")
    margin_after: Decimal | None = Field(None, description="Dollars.")
    buying_power_change: Decimal | None = Field(None, description="Dollars; negative uses buying power.")
    commission: Decimal | None = Field(None, description="Dollars.")
    cash_change: Decimal | None = Field(None, description="Dollars.")
    warnings: list[str] = Field(default_factory=list)
    book_greeks_before: dict[str, Any] | None = None
    book_greeks_after: dict[str, Any] | None = None


class DecisionRecordOut(BaseModel):
    """The one decision recorded on an order: who, when, and what they saw."""

    order_id: str
    action: Literal["approve", "reject", "resize", "expire"]
    approver: str
    quantity: int | None = Field(description="Contracts approved; null for a rejection.")
    original_quantity: int
    reason: str | None
    acknowledged: bool
    seen: dict[str, Any] = Field(description="What the approver saw: limit, quantity, legs, risk, deadline.")
    decided_at: datetime


class ExecutionOut(BaseModel):
    """Outcome of the pre-transmission re-check against fresh quotes, and of transmission."""

    order_id: str
    run_id: str
    outcome: Literal["transmitted", "refused", "held"]
    reasons: list[Any]
    fresh_mid: Decimal | None = Field(description="Per share per combo unit, signed like the limit.")
    broker_order_id: str | None
    at: datetime


class OrderReviewOut(OrderSummaryOut):
    """Everything an approver needs to decide one order, and what became of it."""

    rationale: str | None
    natural_price: Decimal | None = Field(description="Per share per combo unit at the far side of each leg.")
    underlying_price: float | None
    greeks_impact: GreeksImpactOut
    margin_what_if: MarginWhatIfOut
    broker_preview: BrokerPreviewOut | None = Field(
        None, description="The broker's own margin/buying-power/commission preview while the order is undecided.")
    risk: list[RiskDecisionOut] = Field(description="The risk gate's pre- and post-trade decisions.")
    debate: DebateOut | None = Field(description="The bull/bear debate and its transcript.")
    expires_at: datetime = Field(description="After this the order can no longer be approved.")
    decision: DecisionRecordOut | None
    execution: ExecutionOut | None
    history: list[HistoryEntryOut]
    terminal_reason: str | None = Field(None, description="Why a terminal order ended where it did.")


class PositionOut(BaseModel):
    """One open strategy position of the book, with its latest mark."""

    position_id: str
    order_id: str
    run_id: str
    ticker: str
    structure: str
    expiry: date
    units: int
    multiplier: int
    entry_price: Decimal = Field(description="Per share per unit, signed: + paid, − received.")
    legs: list[dict[str, Any]]
    opened_at: datetime
    thesis: str
    max_profit: Decimal | None
    max_loss: Decimal | None
    realized_pnl: Decimal
    mark: Decimal | None
    marked_at: datetime | None
    value: Decimal | None
    unrealized_pnl: Decimal | None
    greeks: dict[str, float | None] | None
    missing: list[str]
    exit_orders: list[dict[str, Any]]


class PositionsOut(BaseModel):
    as_of: datetime
    positions: list[PositionOut]


class PnlDayOut(BaseModel):
    day: date
    realized_pnl: Decimal
    unrealized_pnl: Decimal | None
    unrealized_change: Decimal | None
    total_pnl: Decimal
    net_liquidation: Decimal | None


class PnlStrategyOut(BaseModel):
    structure: str
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    positions: int
    open_positions: int


class PnlOut(BaseModel):
    from_: date = Field(alias="from")
    to: date
    days: list[PnlDayOut]
    by_strategy: list[PnlStrategyOut]
    realized_pnl: Decimal
    unrealized_pnl: Decimal | None


class AccountOut(BaseModel):
    """The account as the risk gate reads it from the book."""

    as_of: datetime
    net_liquidation: Decimal
    cash: Decimal
    margin_used: Decimal
    daily_realized_pnl: Decimal
    daily_unrealized_pnl: Decimal
    realized_pnl: Decimal
    last_loss_at: datetime | None
    trades_today: int
    open_positions: int
    halted: bool
    daily_reset: datetime
    last_snapshot: dict[str, Any] | None


class HaltStateOut(BaseModel):
    halted: bool
    reason: str | None
    actor: str | None
    changed_at: datetime


class RiskStatusOut(HaltStateOut):
    orders_by_state: dict[str, int]


class DatabaseHealthOut(BaseModel):
    ok: bool
    error: str | None = None


class SchedulerHealthOut(BaseModel):
    ok: bool
    last_slot_claimed_at: datetime | None = None
    slots: int | None = None


class BrokerHealthOut(BaseModel):
    ok: bool
    name: str | None = None


class HealthOut(BaseModel):
    ok: bool
    database: DatabaseHealthOut
    scheduler: SchedulerHealthOut
    broker: BrokerHealthOut


class StepOut(BaseModel):
    step: int = Field(description="LangGraph's step number of the checkpoint the step's writes went into.")
    nodes: list[str]
    tasks: int
    status: str = Field(description="done | interrupted | failed | pending | update")
    started_at: str
    duration_ms: float | None
    node_ms: dict[str, float]
    writes: list[str] = Field(description="Per channel written: 'signals +12' (appended), 'verdicts 3' (replaced).")
    checkpoint_id: str
    errors: list[str]


class StateAtStepOut(BaseModel):
    run_id: str
    step: int
    checkpoint_id: str
    created_at: str
    next: list[str]
    values: dict[str, Any] = Field(description="The graph state after the step, JSON-safe.")


class NodeComparisonOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    node: str
    matched: bool
    diff: str
    rerun: bool


class ReplayOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    replay_run_id: str
    debater: str
    llm_calls_served: int
    nodes: list[NodeComparisonOut]
    matched: bool
    differing_nodes: list[str]


class ForkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    at: str = Field(min_length=1, max_length=100, description="The node to re-run from, e.g. debate, risk_gate.")
    set: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50, description="DecisionConfig settings to change, each key=value.")


class ForkOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_id: str
    fork_run_id: str
    at_node: str
    overrides: dict[str, Any]
    config: dict[str, Any]
    nodes: list[NodeComparisonOut]
    staged: list[dict[str, Any]]
    original_staged: list[dict[str, Any]]
    differing_nodes: list[str]


class JournalEntryOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    order_id: str
    run_id: str | None
    ticker: str
    approver: str | None
    filled_at: datetime


class BacktestOut(BaseModel):
    """A backtest as the main database's index records it."""

    backtest_id: str
    created_at: datetime
    finished_at: datetime | None
    status: Literal["running", "completed", "failed"]
    params: dict[str, Any] = Field(description="from, to, tickers, slots, approve, overrides, seed, data folders.")
    database: str = Field(description="The database of its own its runs, orders and book live in.")
    account_id: str
    results_dir: str | None = Field(description="Folder of report.json and report.html (server-side path).")
    summary: dict[str, Any] | None = Field(description="Metrics, both baselines' metrics, days, modelled-chain days.")
    error: str | None


class BacktestDayOut(BaseModel):
    backtest_id: str
    session: date
    run_ids: list[str] = Field(description="Runs of the day, in the backtest's own database.")
    orders_staged: int
    orders_filled: int
    net_liquidation: Decimal | None


class BacktestDetailOut(BacktestOut):
    database_url: str = Field(description="DATABASE_URL (password redacted) under which its runs can be opened.")
    days: list[BacktestDayOut]
    report: dict[str, Any] | None = Field(description=(
        "report.json: metrics, baselines, P&L by strategy and regime, calibration, equity curves, "
        "assumptions, modelled-chain days; null when it cannot be read (see report_error)."))
    report_error: str | None = Field(description="Why the report is missing, if it is.")


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    acknowledge: StrictBool = Field(
        default=False, description="Required true to approve an order of more than 10 contracts.")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("reason must not be blank")
    return value.strip()


# A recorded reason: 1..2000 characters, not only whitespace, stored stripped.
Reason = Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_not_blank)]


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason = Field(description="Why the order is rejected (recorded).")


class ResizeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    quantity: int = Field(ge=1, description="New whole-contract quantity, 1 .. original - 1.")
    acknowledge: StrictBool = Field(
        default=False, description="Required true when the new quantity is more than 10 contracts.")

    @field_validator("quantity", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # JSON Schema's "integer" includes 5.0; a string, a bool or 2.5 is not a number of contracts.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("quantity must be a whole number of contracts")
        return value


class HaltIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Reason


# ---------------------------------------------------------------------------------------------
# Authentication and roles

_bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                     description="An API token from `hedgegraph tokens create NAME --role ROLE`.")


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


def context(request: Request) -> ServiceContext:
    return request.app.state.ctx


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    throttle: LoginThrottle = request.app.state.login_throttle
    client = client_address(request)
    wait = throttle.blocked(client)
    if wait:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many failed tokens from this address; retry in {int(wait)} s",
                            headers={"Retry-After": str(int(wait))})
    principal = await TokenRepository(context(request).db.pool).authenticate(credentials.credentials)
    if principal is None:
        throttle.failed(client)
        raise _unauthorized("invalid or revoked token")
    return principal


def _declared_query(route: APIRoute) -> frozenset[str]:
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(p.alias for p in dependant.query_params)
        pending.extend(dependant.dependencies)
    return frozenset(names)


def _refuse_unknown_query(request: Request) -> None:
    """A misspelt filter (`?stat=STAGED`) must not silently list everything: refuse it."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        unknown = sorted(set(request.query_params) - _declared_query(route))
        if unknown:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"unknown query parameter(s): {', '.join(map(repr, unknown))}")


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """Dependency: an authenticated principal with at least `role` (then the query is checked, so
    an unauthenticated caller learns nothing about parameters)."""

    async def dependency(request: Request, principal: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not principal.has_role(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"token {principal.name!r} has role {principal.role}; this needs {role}")
        _refuse_unknown_query(request)
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


Viewer = Annotated[Principal, Depends(require("viewer"))]
Approver = Annotated[Principal, Depends(require("approver"))]
Admin = Annotated[Principal, Depends(require("admin"))]
Ctx = Annotated[ServiceContext, Depends(context)]


def _plausible_id(value: str) -> bool:
    return len(value) <= _MAX_ID_CHARS and "\x00" not in value


def _errors(*codes: int, media: str | None = None) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The order cannot be executed as recorded (e.g. its run's market cannot be re-quoted).",
        401: "No bearer token, or an invalid or revoked one.",
        403: "The token's role does not allow this.",
        404: "No such run, order or backtest.",
        409: "The order is no longer STAGED (already decided or expired), or trading is halted.",
        422: "Malformed request, or a decision this order does not allow.",
        429: "Too many failed tokens from this address: retry after Retry-After seconds.",
        503: "The database is unavailable.",
    }
    if 401 in codes:
        codes = (*codes, 429)
    if media is None:
        return {code: {"model": ErrorOut, "description": descriptions[code]} for code in codes}
    # Routes whose success is not JSON still answer errors in JSON: say so explicitly.
    schema = {"$ref": "#/components/schemas/ErrorOut"}
    return {code: {"description": descriptions[code], "content": {media: {"schema": schema}}} for code in codes}


# ---------------------------------------------------------------------------------------------


def _default_factory() -> Awaitable[ServiceContext]:
    from config.settings import settings

    return ServiceContext.open(settings())


def create_app(ctx_factory: ContextFactory | None = None, *, service_config: ServiceConfig | None = None) -> FastAPI:
    """The API app and the web page. Its lifespan opens the `ServiceContext` from `ctx_factory`
    (default: from the environment's settings) and closes it at shutdown; `service_config`
    (default: `config/service.yaml` and the environment) sets hosts, limits and docs access."""
    from service import web

    factory = ctx_factory or _default_factory
    config = service_config or ServiceConfig.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ctx = await factory()
        sweeping = asyncio.create_task(_sweep_notifications(app.state.ctx))
        try:
            yield
        finally:
            sweeping.cancel()
            await notify.drain(timeout=5)
            await app.state.ctx.close()

    app = FastAPI(
        title="hedgegraph", version="0.1.0", lifespan=lifespan,
        description=(__doc__ or "").split("\n\n", 1)[1],
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind a token unless public
    )
    app.state.service_config = config
    app.state.login_throttle = LoginThrottle(config.max_login_failures, config.login_window_seconds)
    _install_error_handlers(app)
    _docs_routes(app, config)
    _routes(app)
    web.install(app)
    app.add_middleware(HardeningMiddleware, config=config)
    return app


async def _sweep_notifications(ctx: ServiceContext, every_seconds: float = 30) -> None:
    """While serving, look for time-driven notifications (see `service.notify.sweep`)."""
    while True:
        notify.sweep(ctx.db, ctx.clock())
        await asyncio.sleep(every_seconds)


def _docs_routes(app: FastAPI, config: ServiceConfig) -> None:
    async def may_read_docs(request: Request) -> None:
        if config.docs_public:
            return
        from service.web import current_session

        if await current_session(request) is not None:  # a signed-in browser (Swagger UI's fetch)
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        credentials = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if \
            scheme.lower() == "bearer" and token else None
        await authenticated(request, credentials)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(request: Request) -> JSONResponse:
        await may_read_docs(request)
        return JSONResponse(app.openapi())

    # Swagger UI 5 (it reads OpenAPI 3.1, which FastAPI writes) from the files the `fastapi-offline`
    # package ships, served here: the docs work offline. FastAPI's page starts Swagger UI with one
    # inline script; the page's own CSP allows exactly that script (by its hash), nothing else inline.
    import fastapi_offline

    swagger_ui_files = PathLib(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_files)), name="docs-assets")
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="hedgegraph API",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})  # no call to validator.swagger.io
    csp = docs_csp(page.body.decode())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        await may_read_docs(request)
        return HTMLResponse(page.body, headers={"content-security-policy": csp})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApprovalError)
    async def approval_error(request: Request, exc: ApprovalError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        message = "; ".join(
            f"{'.'.join(str(p) for p in issue.get('loc', ()))}: {issue.get('msg', 'invalid')}" for issue in issues)
        return JSONResponse({"detail": f"invalid request: {message}", "errors": issues},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 for a body it cannot even decode (not UTF-8); to a client that is one
        # more malformed request, so it gets the same 422 as invalid JSON.
        code = status.HTTP_422_UNPROCESSABLE_CONTENT if exc.status_code == 400 else exc.status_code
        detail = f"invalid request: {exc.detail}" if exc.status_code == 400 else exc.detail
        return JSONResponse({"detail": detail}, status_code=code, headers=exc.headers)

    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("database unavailable serving %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    for lost in _DATABASE_LOST:
        app.add_exception_handler(lost, database_unavailable)


def _routes(app: FastAPI) -> None:
    @app.get("/health", tags=["service"], response_model=HealthOut, summary="Readiness (no token)",
             responses={503: {"model": HealthOut, "description": "A component is down."}})
    async def health(ctx: Ctx, response: Response) -> dict[str, Any]:
        report = operations.jsonable(await approvals.health(ctx))
        response.status_code = status.HTTP_200_OK if report.get("ok") else status.HTTP_503_SERVICE_UNAVAILABLE
        return report

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse,
             summary="Prometheus text exposition (viewer token)", responses=_errors(401, 403, media="application/json"))
    async def metrics(ctx: Ctx, _: Viewer) -> PlainTextResponse:
        return PlainTextResponse(await approvals.metrics_text(ctx),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/runs", tags=["runs"], response_model=list[RunOut], responses=_errors(401, 403, 422),
             summary="Recent decision runs, newest first")
    async def list_runs(
        ctx: Ctx, _: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 50,
        status: Annotated[Literal["pending", "running", "awaiting_approval", "completed", "failed"] | None,
                          Query(description="Only runs in this status")] = None,
        q: Annotated[str | None, Query(max_length=100, description="Run id, watchlist or ticker contains this")] = None,
    ) -> list[dict[str, Any]]:
        return await operations.list_runs(ctx.db, limit, status=status, text=q)

    @app.get("/runs/{run_id}", tags=["runs"], response_model=RunDetailOut, responses=_errors(401, 403, 404, 422),
             summary="One run: signals, debates, risk decisions, orders, node timings")
    async def show_run(ctx: Ctx, _: Viewer, run_id: Annotated[str, Path()]) -> dict[str, Any]:
        data = await operations.show_run(ctx.db, run_id) if _plausible_id(run_id) else None
        if data is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        return data

    @app.get("/orders", tags=["orders"], response_model=list[OrderSummaryOut], responses=_errors(401, 403, 422),
             summary="Orders, newest first, optionally by state and run")
    async def list_orders(
        ctx: Ctx, _: Viewer,
        state: Annotated[OrderState | None, Query(description="e.g. STAGED for the approval queue")] = None,
        run_id: Annotated[str | None, Query(max_length=_MAX_ID_CHARS)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> list[dict[str, Any]]:
        if run_id is not None and not _plausible_id(run_id):
            return []
        return await operations.list_orders(ctx.db, state=state.value if state else None, run_id=run_id, limit=limit)

    @app.get("/orders/{order_id}", tags=["orders"], response_model=OrderReviewOut, responses=_errors(401, 403, 404, 422),
             summary="Everything an approver needs to decide one order")
    async def review_order(ctx: Ctx, _: Viewer, order_id: Annotated[str, Path()]) -> dict[str, Any]:
        _check_order_id(order_id)
        return operations.jsonable(await approvals.order_review(ctx, order_id))

    async def decide(ctx: ServiceContext, order_id: str, decision: Decision) -> dict[str, Any]:
        _check_order_id(order_id)
        return operations.jsonable(await approvals.decide(ctx, order_id, decision))

    decision_errors = _errors(400, 401, 403, 404, 409, 422)

    @app.post("/orders/{order_id}/approve", tags=["approvals"], response_model=OrderReviewOut,
              responses=decision_errors,
              summary="Approve a STAGED order: re-checked against fresh quotes, then transmitted")
    async def approve(ctx: Ctx, who: Approver, order_id: Annotated[str, Path()],
                      body: ApproveIn | None = None) -> dict[str, Any]:
        body = body or ApproveIn()
        return await decide(ctx, order_id, Decision(action="approve", approver=who.name, quantity=None,
                                                    reason=None, acknowledge=body.acknowledge))

    @app.post("/orders/{order_id}/reject", tags=["approvals"], response_model=OrderReviewOut,
              responses=decision_errors,
              summary="Reject a STAGED order, with a reason")
    async def reject(ctx: Ctx, who: Approver, order_id: Annotated[str, Path()], body: RejectIn) -> dict[str, Any]:
        return await decide(ctx, order_id, Decision(action="reject", approver=who.name, quantity=None,
                                                    reason=body.reason))

    @app.post("/orders/{order_id}/resize", tags=["approvals"], response_model=OrderReviewOut,
              responses=decision_errors,
              summary="Approve a STAGED order at a smaller whole-contract quantity")
    async def resize(ctx: Ctx, who: Approver, order_id: Annotated[str, Path()], body: ResizeIn) -> dict[str, Any]:
        return await decide(ctx, order_id, Decision(action="resize", approver=who.name, quantity=body.quantity,
                                                    reason=None, acknowledge=body.acknowledge))

    @app.get("/positions", tags=["book"], response_model=PositionsOut, responses=_errors(401, 403),
             summary="Open strategy positions with their latest marks, Greeks and exit orders")
    async def positions(ctx: Ctx, _: Viewer) -> dict[str, Any]:
        return await operations.positions(ctx)

    @app.get("/pnl", tags=["book"], response_model=PnlOut, response_model_by_alias=True,
             responses=_errors(401, 403, 422), summary="Daily P&L and P&L by strategy between two New York days")
    async def pnl(ctx: Ctx, _: Viewer, start: Annotated[date, Query(alias="from", description="First New York day.")],
                  days: Annotated[int, Query(ge=1, le=3660, description="Number of days from `from`.")] = 30,
                  ) -> dict[str, Any]:
        end = date.max if (date.max - start).days < days else start + timedelta(days=days - 1)
        return await operations.pnl(ctx, start, end)

    @app.get("/account", tags=["book"], response_model=AccountOut, responses=_errors(401, 403),
             summary="The account the risk gate reads: NLV, cash, margin, daily P&L, last loss, trades today")
    async def account(ctx: Ctx, _: Viewer) -> dict[str, Any]:
        return await operations.account(ctx)

    @app.get("/runs/{run_id}/steps", tags=["runs"], response_model=list[StepOut], responses=_errors(401, 403, 404, 422),
             summary="A run's trace: every step, its nodes, timings and what it wrote")
    async def run_steps(ctx: Ctx, _: Viewer, run_id: Annotated[str, Path()]) -> list[dict[str, Any]]:
        from graph.trace import TraceError

        if not _plausible_id(run_id) or await operations.show_run_record(ctx.db, run_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        try:
            return operations.jsonable(await operations.steps(ctx.db, run_id))
        except TraceError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None

    @app.get("/runs/{run_id}/steps/{step}", tags=["runs"], response_model=StateAtStepOut,
             responses=_errors(401, 403, 404, 422), summary="The full graph state after one step")
    async def run_state_at(ctx: Ctx, _: Viewer, run_id: Annotated[str, Path()],
                           step: Annotated[int, Path(ge=-1, le=100_000)]) -> dict[str, Any]:
        from graph.trace import TraceError

        if not _plausible_id(run_id) or await operations.show_run_record(ctx.db, run_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        try:
            return operations.jsonable(await operations.state_at(ctx.db, run_id, step))
        except TraceError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None

    @app.post("/runs/{run_id}/replay", tags=["runs"], response_model=ReplayOut, responses=_errors(401, 403, 404, 422),
              summary="Re-execute a run in a sandbox from its recordings and compare node by node (approver)")
    async def replay(ctx: Ctx, _: Approver, run_id: Annotated[str, Path()]) -> dict[str, Any]:
        from graph.replay import ReplayError

        if not _plausible_id(run_id) or await operations.show_run_record(ctx.db, run_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        try:
            return await operations.replay(ctx.db, run_id)
        except ReplayError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

    @app.post("/runs/{run_id}/fork", tags=["runs"], response_model=ForkOut, responses=_errors(401, 403, 404, 422),
              summary="Run a run again from before one node with changed settings, in a sandbox (approver)")
    async def fork(ctx: Ctx, _: Approver, run_id: Annotated[str, Path()], body: ForkIn) -> dict[str, Any]:
        from graph.replay import ReplayError

        if not _plausible_id(run_id) or await operations.show_run_record(ctx.db, run_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id!r}")
        try:
            return await operations.fork(ctx.db, run_id, body.at, body.set)
        except (ReplayError, LookupError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

    @app.get("/journal", tags=["orders"], response_model=list[JournalEntryOut], responses=_errors(401, 403, 422),
             summary="Fills with their market context, approver and run, newest first")
    async def journal(ctx: Ctx, _: Viewer,
                      ticker: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Za-z0-9.^-]+$")] = None,
                      run_id: Annotated[str | None, Query(max_length=_MAX_ID_CHARS)] = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[dict[str, Any]]:
        if run_id is not None and not _plausible_id(run_id):
            return []
        return await operations.journal_entries(ctx.db, ticker=ticker, run_id=run_id, limit=limit)

    @app.get("/backtests", tags=["backtests"], response_model=list[BacktestOut], responses=_errors(401, 403, 422),
             summary="Backtests, newest first: parameters, status, summary metrics")
    async def list_backtests(ctx: Ctx, _: Viewer,
                             limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return await operations.list_backtests(ctx.db, limit)

    @app.get("/backtests/{backtest_id}", tags=["backtests"], response_model=BacktestDetailOut,
             responses=_errors(401, 403, 404, 422),
             summary="One backtest: parameters, summary, days, results folder and its report")
    async def show_backtest(ctx: Ctx, _: Viewer, backtest_id: Annotated[str, Path()]) -> dict[str, Any]:
        data = await operations.show_backtest(ctx.db, backtest_id) if _plausible_id(backtest_id) else None
        if data is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no backtest {backtest_id!r}")
        return data

    @app.get("/risk", tags=["risk"], response_model=RiskStatusOut, responses=_errors(401, 403), summary="Kill-switch state and order counts by state")
    async def risk(ctx: Ctx, _: Viewer) -> dict[str, Any]:
        return operations.jsonable(await approvals.risk_status(ctx))

    @app.post("/risk/halt", tags=["risk"], response_model=HaltStateOut, responses=_errors(401, 403, 422),
              summary="Halt trading: no approval transmits until resumed (admin)")
    async def halt(ctx: Ctx, who: Admin, body: HaltIn) -> dict[str, Any]:
        return operations.jsonable(await approvals.halt(ctx, who.name, body.reason))

    @app.post("/risk/resume", tags=["risk"], response_model=HaltStateOut, responses=_errors(401, 403),
              summary="Resume trading after a halt (admin)")
    async def resume(ctx: Ctx, who: Admin) -> dict[str, Any]:
        return operations.jsonable(await approvals.resume_trading(ctx, who.name))


def _check_order_id(order_id: str) -> None:
    if not _plausible_id(order_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no order {order_id!r}")
