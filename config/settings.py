"""Typed configuration: process settings from the environment, decision parameters from YAML.

`Settings` says where things live (database, home directory); `DecisionConfig` holds the knobs a
run is made with. A run records its `DecisionConfig`, so a replay uses the same values and a fork
changes them explicitly (`--set key=value`).
"""
from __future__ import annotations

import copy
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent


def load_yaml(name: str) -> dict[str, Any]:
    """A config file's mapping (a fresh copy: callers may change it)."""
    return copy.deepcopy(parse_yaml_text((CONFIG_DIR / name).read_text(encoding="utf-8")) or {})


@lru_cache(maxsize=64)
def parse_yaml_text(text: str) -> Any:
    """`yaml.safe_load` of a file's text, parsed once per distinct text: config files are read on
    every run, approval and broker connection, and parsing costs far more than reading. Keyed by
    the text itself (not the file's mtime, whose granularity can hide a quick rewrite). Callers
    must not mutate the result; `load_yaml` hands out copies."""
    return yaml.safe_load(text)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEDGEGRAPH_", extra="ignore")

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    home: Path = Field(default=Path.home() / ".hedgegraph")
    openai_api_key: str | None = Field(default=None, validation_alias="OPENAI_API_KEY", repr=False)
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")

    @property
    def pg_dir(self) -> Path:
        return self.home / "pg"


class DecisionConfig(BaseModel):
    """Parameters of one decision run. Frozen: a run's configuration never changes under it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    conviction_threshold: float = Field(0.35, ge=0, le=1)
    min_agreeing_sources: int = Field(2, ge=1, le=4)
    debate_rounds: int = Field(1, ge=1, le=5)
    kelly_multiplier: float = Field(0.5, gt=0, le=1)
    # Pseudo-trades the model's payoff distribution counts for against the journal's outcomes.
    kelly_prior_weight: float = Field(20, ge=0)
    target_dte: int = Field(35, ge=1)
    short_delta: float = Field(0.25, gt=0, lt=0.5)
    long_delta: float = Field(0.40, gt=0, lt=1)
    wing_width_steps: int = Field(2, ge=1)  # without a fitted smile; flies always
    # Against a fitted smile, a vertical's wing width as a fraction of the expected move F*vol*sqrt(t).
    wing_width_expected_move: float = Field(0.15, gt=0, le=2)
    # A jade lizard's short put is uncovered: "cash_secured" builds it (its max loss, strike less
    # credit, held as cash), "refuse" never proposes one. The risk gate's naked-short rule applies.
    jade_lizard_short_put: Literal["refuse", "cash_secured"] = "refuse"
    # An iron condor's own selection, chosen on 2011-2019 SPY history and checked on 2020-2025
    # (README, "What the backtest revealed"): far shorts and wide wings so that commissions and
    # spreads do not eat the credit, 45 DTE closed at 21. The verticals keep the settings above.
    condor_short_delta: float = Field(0.10, gt=0, lt=0.5)
    condor_wing_width_expected_move: float = Field(1.0, gt=0, le=2)
    condor_target_dte: int = Field(45, ge=1)
    max_spread_pct: float = Field(0.25, gt=0)
    min_open_interest: float = Field(10, ge=0)
    # The vol-surface analyst: 30-day ATM implied over 20-day realized vol at or above `rich_iv_rv`
    # is rich premium, at or below `cheap_iv_rv` cheap; between them fair (README: the 2011-2019 study).
    rich_iv_rv: float = Field(1.0, gt=0)
    cheap_iv_rv: float = Field(0.6, gt=0)
    approval_ttl_market_minutes: float = Field(30, gt=0)  # staged orders expire after this much market time
    stale_price_tolerance: float = Field(0.10, gt=0)  # re-check: |fresh mid - limit| / |limit| allowed
    stale_price_floor: float = Field(0.05, ge=0)  # ... but never less than this many dollars per share

    @model_validator(mode="before")
    @classmethod
    def _drop_retired_keys(cls, data: Any) -> Any:
        # Runs recorded before Kelly sized on the payoff distribution carry a configured prior win
        # rate; the prior is now the distribution itself, so the key is read and dropped.
        if isinstance(data, dict) and "kelly_prior_win_rate" in data:
            data = {k: v for k, v in data.items() if k != "kelly_prior_win_rate"}
        return data

    @model_validator(mode="after")
    def _cheap_below_rich(self) -> "DecisionConfig":
        if self.cheap_iv_rv >= self.rich_iv_rv:
            raise ValueError(f"cheap_iv_rv ({self.cheap_iv_rv}) must be below rich_iv_rv ({self.rich_iv_rv})")
        return self

    def for_structure(self, structure: str) -> "DecisionConfig":
        """The settings `structure` is selected with: an iron condor's own delta, wings and DTE."""
        if structure != "iron_condor":
            return self
        return self.model_copy(update={"short_delta": self.condor_short_delta,
                                       "wing_width_expected_move": self.condor_wing_width_expected_move,
                                       "target_dte": self.condor_target_dte})

    def with_overrides(self, overrides: dict[str, Any]) -> "DecisionConfig":
        unknown = set(overrides) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown decision settings: {sorted(unknown)}")
        return type(self).model_validate({**self.model_dump(), **overrides})


class LLMConfig(BaseModel):
    """The LLM the debate uses when an OpenAI-compatible endpoint is configured.

    The endpoint and key come from the environment (`Settings`), never from here or from a run's
    records. `timeout_s` bounds one HTTP request; with `max_retries` retries a call is bounded by
    `call_deadline_s`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "gpt-4o-mini"
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(800, ge=16)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=5)

    @property
    def call_deadline_s(self) -> float:
        """Wall-clock cap for one call including retries (the client backs off at most ~8 s)."""
        return self.timeout_s * (self.max_retries + 1) + 8.0 * self.max_retries + 1.0


class BookConfig(BaseModel):
    """Exit rules and expiry warnings of the book (`brokers.book`), checked at every slot.

    Fractions of the position's own numbers per unit: take profit when the open profit reaches
    `take_profit_fraction` of max profit; close at `close_at_dte` days to expiry or fewer; on a
    credit structure stop when the loss reaches `credit_stop_multiple` x the credit received; on a
    debit structure stop when the loss reaches `debit_stop_fraction` of the debit paid. Pin risk:
    short strikes within `pin_risk_distance` (fraction of spot) the session before expiry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    take_profit_fraction: float = Field(0.5, gt=0, le=1)
    close_at_dte: int = Field(21, ge=0)
    credit_stop_multiple: float = Field(2.0, gt=0)
    debit_stop_fraction: float = Field(0.5, gt=0, le=1)
    pin_risk_distance: float = Field(0.01, gt=0, lt=1)


class Defaults(BaseModel):
    watchlist: list[str]
    seed: int
    provider: str
    decision: DecisionConfig
    account: dict[str, Decimal]
    llm: LLMConfig = LLMConfig()
    book: BookConfig = BookConfig()


class ModelPrice(BaseModel):
    """Dollars per million tokens of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)

    def cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        """Dollars for these token counts (exact: no rounding until shown)."""
        return (self.input * tokens_in + self.output * tokens_out) / Decimal(1_000_000)


def llm_prices(path: str | Path | None = None) -> dict[str, ModelPrice]:
    """The price table: `path`, else $HEDGEGRAPH_LLM_PRICES, else config/llm_prices.yaml."""
    import os

    path = Path(path or os.environ.get("HEDGEGRAPH_LLM_PRICES") or CONFIG_DIR / "llm_prices.yaml")
    with open(path, encoding="utf-8") as fh:
        table = yaml.safe_load(fh) or {}
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected `model: {{input: ..., output: ...}}` entries")
    return {str(model): ModelPrice.model_validate(price) for model, price in table.items()}


@lru_cache(maxsize=1)
def defaults() -> Defaults:
    return Defaults.model_validate(load_yaml("defaults.yaml"))


def settings() -> Settings:
    return Settings()
