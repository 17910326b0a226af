"""The value types that travel through the decision graph.

Every node reads and writes these; they are checkpointed by LangGraph and stored in Postgres, so
they are plain pydantic models with JSON-safe fields. Money that reaches an order (limit prices,
premiums, capital at risk) is `Decimal`; analytics (Greeks, probabilities) are floats.

Sign conventions:
- `OptionLeg.side` is "buy" or "sell"; `ratio` is a positive whole number of contracts per unit.
- `TradeProposal.net_debit` is per share for one unit of the structure: positive means we pay,
  negative means we receive a credit.
- Greeks on legs and proposals are per share, in trader units: delta per $1 of the underlying,
  gamma per $1 squared, vega per vol point (0.01 of vol), theta per calendar day. Leg Greeks are
  for a long option; a proposal's are per unit of the structure, signed for our side.
- Position Greeks are whole-position totals in dollars: delta and gamma in shares, vega in $ per
  vol point, theta in $ per day.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AnalystName = Literal["vol_surface", "flow", "technical", "social"]
Direction = Literal["bullish", "bearish", "neutral", "rich", "cheap"]
PriceView = Literal["bullish", "bearish", "neutral"]
VolView = Literal["rich", "cheap", "neutral"]
RegimeName = Literal["low_vol", "neutral", "high_vol", "crisis"]
Right = Literal["C", "P", "S"]  # "S": the underlying's shares (`domain.orders.SHARES`)
Side = Literal["buy", "sell"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return value


class Signal(Frozen):
    """What one analyst concluded about one ticker (the SPEC signal schema)."""

    source: AnalystName
    ticker: str
    direction: Direction  # bullish/bearish/neutral for price; rich/cheap for volatility
    conviction: float = Field(ge=0.0, le=1.0)
    edge_type: str  # e.g. "iv_rich_vs_realized", "dealer_short_gamma", "trend", "mention_spike"
    horizon_days: int = Field(ge=0)
    as_of: datetime
    evidence: dict[str, Any] = Field(default_factory=dict)  # the numbers the conviction came from
    data_quality: list[str] = Field(default_factory=list)  # what was missing or rejected

    _check_as_of = field_validator("as_of")(_aware)


class Regime(Frozen):
    name: RegimeName
    vix: float
    vix3m: float
    term_ratio: float  # VIX / VIX3M; above 1 is backwardation (stress)
    realized_vol: float | None = None  # SPY 20-day annualized, when known
    reasons: list[str] = Field(default_factory=list)


class Position(Frozen):
    """An open position, as the risk gate sees it."""

    ticker: str
    sector: str
    structure: str
    quantity: int
    max_loss: Decimal  # dollars at risk for the whole position (positive)
    market_value: Decimal = Decimal("0")
    delta: float = 0.0  # position delta in shares of the underlying
    gamma: float = 0.0
    vega: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    underlying_price: float = 0.0
    has_naked_short: bool = False


class AccountState(Frozen):
    net_liquidation: Decimal
    cash: Decimal
    margin_used: Decimal
    daily_realized_pnl: Decimal = Decimal("0")
    # Mark-to-market change of open positions since the daily reset; the hard 3% daily-loss halt
    # counts realized + unrealized, the realized-loss lockout counts realized only.
    daily_unrealized_pnl: Decimal = Decimal("0")
    last_loss_at: datetime | None = None
    trades_today: int = 0
    halted: bool = False
    halt_reason: str | None = None


class Candidate(Frozen):
    """A ticker whose aggregated signals passed the conviction threshold."""

    ticker: str
    price_view: PriceView
    vol_view: VolView
    conviction: float = Field(ge=0.0, le=1.0)
    score: float  # signed aggregate in [-1, 1]: positive bullish
    vol_score: float  # signed aggregate in [-1, 1]: positive rich
    sources: list[AnalystName]
    reasons: list[str] = Field(default_factory=list)


class DebateTurn(Frozen):
    role: Literal["bull", "bear", "judge"]
    round: int
    text: str
    evidence: list[str] = Field(default_factory=list)


class Verdict(Frozen):
    ticker: str
    price_view: Literal["bullish", "bearish", "neutral", "inconclusive"]
    vol_view: VolView
    confidence: float = Field(ge=0.0, le=1.0)
    rationale: str
    debater: str  # "deterministic" or "llm:<model>"
    rounds: int
    transcript: list[DebateTurn]
    memories_used: list[str] = Field(default_factory=list)
    fallback_reason: str | None = None


class RiskReason(Frozen):
    code: str  # e.g. "daily_loss_halt", "position_size", "naked_short"
    message: str
    hard: bool
    limit: float | None = None
    value: float | None = None


class RiskDecision(Frozen):
    ticker: str
    stage: Literal["pre_trade", "post_trade"]
    approved: bool
    regime: RegimeName
    vetoes: list[RiskReason] = Field(default_factory=list)
    warnings: list[RiskReason] = Field(default_factory=list)
    requires_acknowledgement: bool = False  # e.g. more than 10 contracts


class OptionLeg(Frozen):
    """One priced leg of a proposal: an option, or (right "S", no expiry, no strike, delta 1) the
    underlying's shares, which only an exit of delivered shares trades (`domain.orders` module doc)."""

    expiry: date | None
    strike: Decimal | None
    right: Right
    side: Side
    ratio: int = Field(default=1, ge=1)
    bid: Decimal
    ask: Decimal
    mid: Decimal
    iv: float | None = None
    delta: float | None = None  # per share, for a long option
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    open_interest: float | None = None
    # Against a fitted surface: the leg's value on the fitted smile, the limit (that value clipped
    # to [bid, ask]) and the edge against the fit at the limit, per share (positive: in our
    # favour, buying below or selling above the fitted value).
    fit_value: Decimal | None = None
    limit: Decimal | None = None
    edge_vs_fit: Decimal | None = None

    @model_validator(mode="after")
    def _terms(self) -> "OptionLeg":
        terms = (self.expiry is not None, self.strike is not None)
        if terms != ((False, False) if self.right == "S" else (True, True)):
            raise ValueError("an option leg needs an expiry and a strike; a shares leg (right 'S') has neither")
        return self

    @property
    def sign(self) -> int:
        return 1 if self.side == "buy" else -1


class SmileFit(Frozen):
    """The fitted raw-SVI smile of a proposal's expiry (tools/svi.py): total variance
    w(k) = a + b (rho (k - m) + sqrt((k - m)^2 + sigma^2)) at k = ln(K / forward), t in years.
    Its risk-neutral law (tools/density.py) gives the proposal's probability of profit, and the
    allocator's payoff distribution."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float
    t: float = Field(gt=0)
    forward: float = Field(gt=0)
    discount: float | None = None  # the expiry's discount factor (two-expiry structures need it)


class TradeProposal(Frozen):
    ticker: str
    structure: str  # "bull_put_spread", "bear_call_spread", "bull_call_spread", "iron_condor", ...
    legs: list[OptionLeg]
    underlying_price: float
    net_debit: Decimal  # per share per unit; positive pays, negative receives
    natural_debit: Decimal  # per share per unit at the far side of every leg's quote
    max_profit: Decimal  # dollars per unit (multiplier applied); may be large for long options
    max_loss: Decimal  # dollars per unit, positive
    breakevens: list[float]
    probability_of_profit: float = Field(ge=0.0, le=1.0)
    delta: float  # per unit, per share
    gamma: float
    vega: float
    theta: float
    dte: int
    multiplier: int = 100
    rationale: str = ""
    # Which law `probability_of_profit` is under: "svi_density" (the fitted smile, skew included)
    # or "lognormal_atm" (one ATM vol); the lognormal ATM figure is kept for comparison.
    pop_model: Literal["svi_density", "lognormal_atm"] = "lognormal_atm"
    probability_of_profit_lognormal: float | None = None
    expected_pnl: Decimal | None = None  # dollars per unit at expiry under the smile's law (at mid)
    smile: SmileFit | None = None
    # Calendars and diagonals: the far expiry's smile (the near one is `smile`); their max
    # profit/loss and breakevens are at the near expiry, found numerically (see rationale).
    smile_far: SmileFit | None = None
    vega_by_expiry: dict[str, float] = Field(default_factory=dict)  # ISO expiry -> vega per vol point
    # Short puts the approver's configuration secures with cash (a jade lizard's): the gate admits
    # them only when free cash covers strike x multiplier for every such contract.
    cash_secured_puts: bool = False


class ClosedOutcome(Frozen):
    """The realized result of one closed strategy position, as the Kelly estimator reads it."""

    structure: str
    regime: RegimeName  # the regime the position was opened in
    closed_at: datetime
    pnl: Decimal  # realized dollars for the whole position
    max_loss: Decimal  # dollars the position could lose when opened (positive)

    _check_closed_at = field_validator("closed_at")(_aware)


class KellyInputs(Frozen):
    """What sized a trade, for the approver: the payoff distribution under the view, the journal's
    pull on it, the log-optimal fraction and what cut it down."""

    distribution: str  # "svi_density" or "lognormal_realized_vol" / "lognormal_leg_iv"
    view_drift: float  # annualized log drift tilted in by the verdict
    view_vol_scale: float  # dispersion relative to the smile (realized / implied)
    outcomes: int  # support points of the per-unit P&L distribution
    model_win_rate: float  # P(P&L > 0) under the view
    model_expected_pnl: Decimal  # dollars per unit under the view
    pnl_p05: Decimal  # dollars per unit, 5th / 50th / 95th percentile
    pnl_p50: Decimal
    pnl_p95: Decimal
    journal_trades: int  # closed outcomes of this structure and regime known as of the run
    journal_wins: int
    prior_weight: float  # kelly_prior_weight / (trades + kelly_prior_weight)
    journal_weight: float  # trades / (trades + kelly_prior_weight)
    win_rate: float  # after shrinkage
    expected_return: float  # E[P&L / max loss] after shrinkage
    full_fraction: float  # log-optimal fraction of NLV at risk
    expected_log_growth: float  # at the full fraction, per trade
    multiplier: float  # fractional Kelly
    applied_fraction: float  # after multiplier and caps, before whole contracts
    expected_log_growth_applied: float
    caps: dict[str, Decimal] = Field(default_factory=dict)  # cap name -> dollars allowed


class SizedTrade(Frozen):
    proposal: TradeProposal
    contracts: int = Field(ge=0)
    kelly_fraction: float  # full-Kelly fraction before scaling
    applied_fraction: float  # after the fractional multiplier and caps
    win_rate: float
    payoff_ratio: float
    capital_at_risk: Decimal
    caps_applied: list[str] = Field(default_factory=list)
    inputs: KellyInputs | None = None


class MarketContext(Frozen):
    """What load_context found: the account, the book and the market regime at `as_of`."""

    regime: Regime
    account: AccountState
    positions: list[Position]
    sectors: dict[str, str]
    snapshot_sha256: str
    data_quality: dict[str, list[str]] = Field(default_factory=dict)
    # Realized outcomes of closed strategy positions known at `as_of` (the Kelly journal); the
    # allocator uses those with closed_at <= as_of of the proposal's structure and the regime.
    closed_outcomes: list[ClosedOutcome] = Field(default_factory=list)


class Execution(Frozen):
    """What happened to one approved order: sent, refused by the re-check, or held (halted)."""

    order_id: str
    outcome: str  # "transmitted" | "refused" | "held"
    reasons: list[str] = Field(default_factory=list)
    fresh_mid: float | None = None
    broker_order_id: str | None = None
    filled_quantity: int = 0


class RunInfo(Frozen):
    """Who a decision run is: its schedule slot and the inputs that make it reproducible."""

    run_id: str
    slot_key: str
    watchlist: str
    as_of: datetime
    tickers: list[str]
    seed: int
    provider: str
    mode: str = "live"  # "sandbox" for replays and forks: nothing is staged for real


class NodeTiming(Frozen):
    """How long one node (for one ticker, for the analysts) took in a run."""

    node: str
    ticker: str | None
    started_at: datetime
    duration_ms: float
