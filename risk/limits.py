"""Hard limits (constants in code) and the per-regime risk matrix (validated YAML).

Hard limits are the rules no configuration can loosen: they live here as constants, the risk
matrix has no field for them, and a YAML file that names one (or sets a soft value beyond one)
is rejected by `load_risk_matrix` with a `RiskMatrixError`.

Units: every `*_nlv` value is a fraction of net liquidation value (0.02 = 2% of NLV). Money
limits are `Decimal`; soft analytic limits (Greeks, VaR, correlation) are floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from domain.decision import RegimeName

DEFAULT_RISK_MATRIX_PATH = Path(__file__).resolve().parents[1] / "config" / "risk_matrix.yaml"


@dataclass(frozen=True)
class HardLimits:
    """The non-overridable limits of the SPEC. `HardLimits()` takes no arguments: the values are
    fixed here, and the dataclass is frozen, so no caller or config file can pass looser ones."""

    daily_loss_halt_nlv: Decimal = field(default=Decimal("0.03"), init=False)
    max_position_nlv: Decimal = field(default=Decimal("0.05"), init=False)
    max_position_nlv_crisis: Decimal = field(default=Decimal("0.02"), init=False)
    max_sector_nlv: Decimal = field(default=Decimal("0.15"), init=False)
    min_free_margin_nlv: Decimal = field(default=Decimal("0.20"), init=False)
    max_contracts_without_ack: int = field(default=10, init=False)
    allow_naked_short_options: bool = field(default=False, init=False)

    def position_cap_nlv(self, regime: RegimeName) -> Decimal:
        """Largest max-loss of one ticker's positions, as a fraction of NLV, in this regime."""
        return self.max_position_nlv_crisis if regime == "crisis" else self.max_position_nlv


HARD_LIMITS = HardLimits()

# Keys that would name a hard limit; the matrix must never carry them (see module docstring).
HARD_LIMIT_KEYS = frozenset(
    {
        "hard_limits",
        "daily_loss_halt_nlv",
        "max_daily_loss",
        "max_position_nlv",
        "max_position_nlv_crisis",
        "max_single_position",
        "max_sector_nlv",
        "max_sector",
        "min_free_margin_nlv",
        "min_free_margin",
        "max_contracts_without_ack",
        "max_contracts",
        "allow_naked_short_options",
        "allow_naked_shorts",
    }
)


class RiskMatrixError(ValueError):
    """The risk matrix file is missing, unreadable, malformed, or tries to loosen a hard limit."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SoftLimit(_Model):
    """One soft limit: breaching `limit` produces a warning or a veto, as `action` says."""

    limit: float = Field(gt=0)
    action: Literal["warn", "veto"]

    @field_validator("limit")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("limit must be finite")
        return value


class SoftLimits(_Model):
    """Portfolio limits after a trade. Greeks are position totals in dollars:
    - var_95_1d_nlv: 1-day 95% delta-gamma-normal VaR / NLV.
    - beta_weighted_delta_nlv: |sum(delta_shares * beta * underlying_price)| / NLV (SPX-beta
      weighted dollar delta).
    - short_gamma_1pct_nlv: short dollar gamma per 1% move, -sum(gamma * S^2 * 0.01) / NLV
      (only short gamma counts; long gamma is bounded by the premium paid).
    - vega_nlv: |sum(vega)| / NLV, vega in dollars per vol point.
    - theta_nlv: |sum(theta)| / NLV, theta in dollars per calendar day.
    - strategy_concentration_nlv: max loss of all positions of one structure / NLV.
    - correlation: largest return correlation of the new ticker with a held ticker.
    """

    var_95_1d_nlv: SoftLimit
    beta_weighted_delta_nlv: SoftLimit
    short_gamma_1pct_nlv: SoftLimit
    vega_nlv: SoftLimit
    theta_nlv: SoftLimit
    strategy_concentration_nlv: SoftLimit
    correlation: SoftLimit

    @field_validator("correlation")
    @classmethod
    def _correlation_range(cls, value: SoftLimit) -> SoftLimit:
        if value.limit > 1:
            raise ValueError("correlation limit must be in (0, 1]")
        return value


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name


class SessionHours(_Model):
    """Window in which new trades may be opened, in `timezone` local time, on exchange days."""

    start: time
    end: time
    timezone: str = "America/New_York"

    _check_zone = field_validator("timezone")(_zone)

    @model_validator(mode="after")
    def _ordered(self) -> "SessionHours":
        if self.start >= self.end:
            raise ValueError(f"session start {self.start} must be before end {self.end}")
        return self


class AccountRules(_Model):
    daily_realized_loss_lockout_nlv: Decimal = Field(gt=0)  # realized loss that locks until reset
    cooldown_minutes_after_loss: int = Field(ge=0)
    max_trades_per_day: int = Field(ge=0)
    session: SessionHours
    symbol_blocklist: list[str] = Field(default_factory=list)

    @field_validator("symbol_blocklist")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return sorted({symbol.strip().upper() for symbol in value})

    @field_validator("daily_realized_loss_lockout_nlv")
    @classmethod
    def _below_hard_halt(cls, value: Decimal) -> Decimal:
        if value > HARD_LIMITS.daily_loss_halt_nlv:
            raise ValueError(
                f"daily realized-loss lockout {value} is looser than the hard daily-loss halt "
                f"{HARD_LIMITS.daily_loss_halt_nlv} of NLV"
            )
        return value


class StressTriggers(_Model):
    """Enter this regime when ANY trigger fires. Realized vol is annualized (0.30 = 30%) and
    only tested when known. Term ratio is VIX / VIX3M (above 1 is backwardation)."""

    vix_at_or_above: float = Field(gt=0)
    term_ratio_above: float = Field(gt=0)
    realized_vol_at_or_above: float | None = Field(default=None, gt=0)


class CalmConditions(_Model):
    """Enter low_vol only when ALL conditions hold (realized vol only when known)."""

    vix_below: float = Field(gt=0)
    term_ratio_below: float = Field(gt=0)
    realized_vol_below: float | None = Field(default=None, gt=0)


class RegimeLimits(_Model):
    """What one regime allows: new trades at all, the Kelly cap, soft limits, account rules."""

    allow_new_trades: bool
    kelly_cap_nlv: Decimal = Field(gt=0)  # largest max loss of one trade, fraction of NLV
    soft_limits: SoftLimits
    account_rules: AccountRules


class LowVolRegime(RegimeLimits):
    classify: CalmConditions


class NeutralRegime(RegimeLimits):
    pass  # neutral is whatever no other regime claims


class StressRegime(RegimeLimits):
    classify: StressTriggers


class RegimesTable(_Model):
    low_vol: LowVolRegime
    neutral: NeutralRegime
    high_vol: StressRegime
    crisis: StressRegime

    @model_validator(mode="after")
    def _consistent(self) -> "RegimesTable":
        for name in ("low_vol", "neutral", "high_vol", "crisis"):
            cap = HARD_LIMITS.position_cap_nlv(name)  # type: ignore[arg-type]
            kelly_cap = getattr(self, name).kelly_cap_nlv
            if kelly_cap > cap:
                raise ValueError(
                    f"{name}.kelly_cap_nlv {kelly_cap} is looser than the hard single-position "
                    f"limit {cap} of NLV"
                )
        crisis, high, low = self.crisis.classify, self.high_vol.classify, self.low_vol.classify
        if not crisis.vix_at_or_above > high.vix_at_or_above >= low.vix_below:
            raise ValueError(
                "VIX thresholds must satisfy crisis.vix_at_or_above > high_vol.vix_at_or_above "
                ">= low_vol.vix_below"
            )
        if not crisis.term_ratio_above > high.term_ratio_above >= low.term_ratio_below:
            raise ValueError(
                "term-ratio thresholds must satisfy crisis.term_ratio_above > "
                "high_vol.term_ratio_above >= low_vol.term_ratio_below"
            )
        rv = (crisis.realized_vol_at_or_above, high.realized_vol_at_or_above, low.realized_vol_below)
        if None not in rv and not rv[0] > rv[1] >= rv[2]:
            raise ValueError(
                "realized-vol thresholds must satisfy crisis > high_vol >= low_vol"
            )
        return self


class DailyReset(_Model):
    """When daily counters (realized P&L, trades today, lockout) reset, local time."""

    at: time
    timezone: str = "America/New_York"

    _check_zone = field_validator("timezone")(_zone)


class RiskMatrix(_Model):
    version: Literal[1]
    daily_reset: DailyReset
    regimes: RegimesTable

    def for_regime(self, name: RegimeName) -> RegimeLimits:
        return getattr(self.regimes, name)


def _hard_limit_keys(node: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            if str(key) in HARD_LIMIT_KEYS:
                found.append(here)
            found.extend(_hard_limit_keys(value, here))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_hard_limit_keys(value, f"{path}[{index}]"))
    return found


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "<top level>"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def parse_risk_matrix(raw: Any, source: str = "<dict>") -> RiskMatrix:
    """Validate an already-parsed mapping (e.g. `yaml.safe_load` output) into a RiskMatrix."""
    if not isinstance(raw, dict):
        raise RiskMatrixError(f"{source}: risk matrix must be a mapping, got {type(raw).__name__}")
    named = _hard_limit_keys(raw)
    if named:
        raise RiskMatrixError(
            f"{source}: hard limits cannot be set in the risk matrix ({', '.join(named)}); they "
            "are constants in risk/limits.py"
        )
    try:
        return RiskMatrix.model_validate(raw)
    except ValidationError as exc:
        raise RiskMatrixError(f"{source}: invalid risk matrix:\n{_describe(exc)}") from exc


def load_risk_matrix(path: str | Path | None = None) -> RiskMatrix:
    """Read and validate the risk matrix (default `config/risk_matrix.yaml`).

    Raises RiskMatrixError naming the file and the offending key for a missing file, YAML syntax
    errors, missing/unknown/ill-typed keys, inconsistent thresholds, or any attempt to set or
    loosen a hard limit.
    """
    path = Path(path) if path is not None else DEFAULT_RISK_MATRIX_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RiskMatrixError(f"cannot read risk matrix {path}: {exc.strerror or exc}") from exc
    return _risk_matrix_of_text(text, str(path))


@lru_cache(maxsize=16)
def _risk_matrix_of_text(text: str, source: str) -> RiskMatrix:
    # Every run, approval and housekeeping pass loads the matrix: validate each distinct text once
    # (a RiskMatrix is frozen, so sharing it is safe; errors are raised every time, never cached).
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RiskMatrixError(f"{source}: not valid YAML: {exc}") from exc
    return parse_risk_matrix(raw, source=source)
