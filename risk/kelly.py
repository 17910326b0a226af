"""Fractional Kelly sizing of one trade proposal, capped by regime and hard limits.

Win rate: the journal's wins/trades for the strategy, shrunk toward a prior (Bayesian: the
prior counts as `kelly_prior_weight` pseudo-trades). The prior itself combines the proposal's
model probability of profit with the configured prior win rate, half and half: PoP is
risk-neutral, so on its own it prices the payoff fairly and leaves no edge, while the
configured prior is a belief with no knowledge of this structure; averaging them is the same as
shrinking PoP toward the configured prior with equal pseudo-weight.

Sizing: dollars at risk = min(fractional Kelly * NLV, caps), contracts = floor(dollars at risk /
max loss per unit). Money is Decimal throughout; contracts are whole.
"""
from __future__ import annotations

import math
from decimal import Decimal

from config.settings import DecisionConfig
from graph.schema import AccountState, Regime, RegimeName, SizedTrade, TradeProposal
from risk.limits import HARD_LIMITS, RiskMatrix


def _probability(name: str, value: float) -> float:
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return value


def kelly_fraction(win_rate: float, payoff_ratio: float) -> float:
    """Full-Kelly fraction of capital to risk on a binary bet: f* = p - (1 - p) / b, floored at 0.

    `win_rate` p in [0, 1]; `payoff_ratio` b = win / loss per unit risked, >= 0 (b = 0 or an
    infinite b are allowed: no edge, and f* = p). NaN or negative inputs raise ValueError.
    """
    p = _probability("win_rate", win_rate)
    b = float(payoff_ratio)
    if math.isnan(b) or b < 0:
        raise ValueError(f"payoff_ratio must be >= 0, got {b}")
    if b == 0.0:
        return 0.0
    return max(0.0, p - (1.0 - p) / b)


def shrunk_win_rate(wins: int, trades: int, prior_rate: float, prior_weight: float) -> float:
    """Posterior mean win rate with a Beta prior worth `prior_weight` pseudo-trades at
    `prior_rate`: (wins + prior_rate * prior_weight) / (trades + prior_weight)."""
    if isinstance(wins, bool) or isinstance(trades, bool) or int(wins) != wins or int(trades) != trades:
        raise ValueError(f"wins and trades must be whole numbers, got {wins}, {trades}")
    if not 0 <= wins <= trades:
        raise ValueError(f"need 0 <= wins <= trades, got wins={wins}, trades={trades}")
    prior_rate = _probability("prior_rate", prior_rate)
    prior_weight = float(prior_weight)
    if math.isnan(prior_weight) or prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
    if trades + prior_weight == 0:
        raise ValueError("no trades and zero prior weight: the win rate is undefined")
    return (wins + prior_rate * prior_weight) / (trades + prior_weight)


def payoff_ratio_for(proposal: TradeProposal) -> float:
    """max_profit / max_loss of one unit (both dollars). Infinite when the profit is unbounded;
    0 when the proposal cannot make money. A non-positive max loss raises ValueError."""
    if not proposal.max_loss.is_finite() or proposal.max_loss <= 0:
        raise ValueError(
            f"{proposal.ticker} {proposal.structure}: max_loss must be a positive finite dollar "
            f"amount to compute a payoff ratio, got {proposal.max_loss}"
        )
    if proposal.max_profit.is_nan():
        raise ValueError(f"{proposal.ticker} {proposal.structure}: max_profit is NaN")
    if proposal.max_profit <= 0:
        return 0.0
    if proposal.max_profit.is_infinite():
        return math.inf
    return float(proposal.max_profit / proposal.max_loss)


def prior_win_rate(proposal: TradeProposal, config: DecisionConfig) -> float:
    """Prior win rate for a proposal with no journal: the mean of its probability of profit and
    `config.kelly_prior_win_rate` (PoP shrunk halfway toward the configured prior)."""
    return 0.5 * (float(proposal.probability_of_profit) + config.kelly_prior_win_rate)


def estimate_win_rate(
    proposal: TradeProposal, config: DecisionConfig, wins: int = 0, trades: int = 0
) -> float:
    """Journal win rate of this strategy (wins of trades) shrunk toward `prior_win_rate` with
    `config.kelly_prior_weight` pseudo-trades; with no journal it is the prior itself."""
    prior = prior_win_rate(proposal, config)
    if trades == 0 and config.kelly_prior_weight == 0:
        return prior
    return shrunk_win_rate(wins, trades, prior, config.kelly_prior_weight)


def _decimal(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def size_trade(
    proposal: TradeProposal,
    account: AccountState,
    regime: Regime | RegimeName,
    matrix: RiskMatrix,
    config: DecisionConfig,
    win_rate: float,
    payoff_ratio: float,
    *,
    ticker_exposure: Decimal = Decimal("0"),
) -> SizedTrade:
    """Whole contracts for `proposal` by fractional Kelly, capped.

    dollars = min(f* * config.kelly_multiplier * NLV,            (fractional Kelly)
                  regime kelly_cap_nlv * NLV,                      "regime_kelly_cap"
                  hard single-position cap * NLV - ticker_exposure, "hard_position_cap" (5%, 2% crisis)
                  NLV * (1 - 20%) - margin_used)                   "free_margin"
    contracts = floor(dollars / proposal.max_loss); capital_at_risk = contracts * max_loss.

    `ticker_exposure` is the max loss (dollars) already held in this ticker, which uses up the
    single-position cap. `caps_applied` lists every cap tighter than the Kelly amount, tightest
    first, plus "no_edge" when f* = 0, "unbounded_max_loss" when max loss is infinite, and
    "below_one_contract" when the allowance buys less than one unit. `kelly_fraction` is full
    Kelly f*; `applied_fraction` is the fraction of NLV allowed after multiplier and caps, before
    rounding to whole contracts.
    """
    regime_name: RegimeName = regime.name if isinstance(regime, Regime) else regime
    nlv = account.net_liquidation
    if not nlv.is_finite() or nlv <= 0:
        raise ValueError(f"net liquidation must be positive to size a trade, got {nlv}")
    if ticker_exposure.is_nan() or ticker_exposure < 0:
        raise ValueError(f"ticker_exposure must be >= 0 dollars, got {ticker_exposure}")
    max_loss = proposal.max_loss
    if max_loss.is_nan() or max_loss <= 0:
        raise ValueError(
            f"{proposal.ticker} {proposal.structure}: max_loss must be positive dollars per unit, "
            f"got {max_loss}"
        )

    f_star = kelly_fraction(win_rate, payoff_ratio)

    def sized(contracts: int, fraction: float, caps: list[str]) -> SizedTrade:
        return SizedTrade(
            proposal=proposal,
            contracts=contracts,
            kelly_fraction=f_star,
            applied_fraction=fraction,
            win_rate=float(win_rate),
            payoff_ratio=float(payoff_ratio),
            capital_at_risk=max_loss * contracts if contracts else Decimal("0"),
            caps_applied=caps,
        )

    if max_loss.is_infinite():
        return sized(0, 0.0, ["unbounded_max_loss"])
    if f_star <= 0.0:
        return sized(0, 0.0, ["no_edge"])

    kelly_dollars = _decimal(f_star * config.kelly_multiplier) * nlv
    caps = {
        "regime_kelly_cap": matrix.for_regime(regime_name).kelly_cap_nlv * nlv,
        "hard_position_cap": HARD_LIMITS.position_cap_nlv(regime_name) * nlv - ticker_exposure,
        "free_margin": nlv * (1 - HARD_LIMITS.min_free_margin_nlv) - account.margin_used,
    }
    binding = sorted((amount, name) for name, amount in caps.items() if amount < kelly_dollars)
    dollars = max(Decimal("0"), min([kelly_dollars, *caps.values()]))
    contracts = int(dollars // max_loss)  # exact integer part; both are non-negative
    applied = [name for _, name in binding]
    if contracts < 1:
        contracts = 0
        applied.append("below_one_contract")
    return sized(contracts, float(dollars / nlv), applied)
