"""Builders of accounts, positions, legs and proposals for the risk tests (not a test module)."""
from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import yaml

from domain.decision import AccountState, OptionLeg, Position, Regime, SizedTrade, TradeProposal
from risk.limits import DEFAULT_RISK_MATRIX_PATH, RiskMatrix, parse_risk_matrix

NY = ZoneInfo("America/New_York")
EXPIRY = date(2024, 4, 19)
# Tuesday 2024-03-05, 11:00 New York: an ordinary NYSE session.
IN_SESSION = datetime(2024, 3, 5, 11, 0, tzinfo=NY)


def raw_matrix() -> dict:
    return yaml.safe_load(DEFAULT_RISK_MATRIX_PATH.read_text(encoding="utf-8"))


def permissive_matrix() -> RiskMatrix:
    """The packaged matrix with every soft rule out of the way (huge soft limits as warnings, no
    lockout worth the name, no cooldown, unlimited trades, all regimes open), so only the hard
    limits can veto."""
    raw = copy.deepcopy(raw_matrix())
    for block in raw["regimes"].values():
        block["allow_new_trades"] = True
        for name, limit in block["soft_limits"].items():
            limit["limit"] = 1.0 if name == "correlation" else 1e9
            limit["action"] = "warn"
        rules = block["account_rules"]
        rules["daily_realized_loss_lockout_nlv"] = 0.03
        rules["cooldown_minutes_after_loss"] = 0
        rules["max_trades_per_day"] = 10**6
        rules["session"] = {"start": "00:00", "end": "23:59:59", "timezone": "America/New_York"}
    return parse_risk_matrix(raw)


def regime(name: str = "neutral", vix: float = 18.0) -> Regime:
    return Regime(name=name, vix=vix, vix3m=vix * 1.05, term_ratio=1 / 1.05, reasons=[f"test {name}"])


def account(
    nlv: str | Decimal = "100000",
    margin_used: str | Decimal = "0",
    realized: str | Decimal = "0",
    unrealized: str | Decimal = "0",
    **kw,
) -> AccountState:
    nlv = Decimal(nlv)
    return AccountState(
        net_liquidation=nlv,
        cash=nlv,
        margin_used=Decimal(margin_used),
        daily_realized_pnl=Decimal(realized),
        daily_unrealized_pnl=Decimal(unrealized),
        **kw,
    )


def position(ticker="SPY", sector="index", structure="bull_put_spread", max_loss="1000", **kw) -> Position:
    return Position(ticker=ticker, sector=sector, structure=structure, quantity=1,
                    max_loss=Decimal(max_loss), **kw)


def leg(strike, right: str, side: str, ratio: int = 1, expiry: date = EXPIRY) -> OptionLeg:
    price = Decimal("1.00")
    return OptionLeg(expiry=expiry, strike=Decimal(str(strike)), right=right, side=side, ratio=ratio,
                     bid=price - Decimal("0.05"), ask=price + Decimal("0.05"), mid=price)


def proposal(
    ticker: str = "SPY",
    structure: str = "bull_put_spread",
    legs: list[OptionLeg] | None = None,
    max_loss: str | Decimal = "350",
    max_profit: str | Decimal = "150",
    pop: float = 0.7,
    delta: float = 0.10,
    gamma: float = -0.01,
    vega: float = -0.05,
    theta: float = 0.02,
    underlying_price: float = 450.0,
) -> TradeProposal:
    """Defaults: a $5-wide SPY 440/435 bull put spread for a $1.50 credit (per unit: max loss
    $350, max profit $150), Greeks per share per unit."""
    legs = legs if legs is not None else [leg(440, "P", "sell"), leg(435, "P", "buy")]
    return TradeProposal(
        ticker=ticker, structure=structure, legs=legs, underlying_price=underlying_price,
        net_debit=Decimal("-1.50"), natural_debit=Decimal("-1.40"), max_profit=Decimal(max_profit),
        max_loss=Decimal(max_loss), breakevens=[438.5], probability_of_profit=pop, delta=delta,
        gamma=gamma, vega=vega, theta=theta, dte=45,
    )


def sized(prop: TradeProposal, contracts: int) -> SizedTrade:
    return SizedTrade(proposal=prop, contracts=contracts, kelly_fraction=0.1, applied_fraction=0.01,
                      win_rate=0.6, payoff_ratio=float(prop.max_profit / prop.max_loss),
                      capital_at_risk=prop.max_loss * contracts)
