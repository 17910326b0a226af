"""Kelly sizing of one trade proposal on its real payoff distribution, capped by regime and hard limits.

The bet: one unit of the structure returns x = P&L / max loss per unit (x >= -1). Risking a
fraction f of NLV (f * NLV / max loss units) turns wealth W into W (1 + f x), so the log-optimal
fraction maximizes the expected log growth

    G(f) = sum_i p_i log(1 + f x_i)      over f in [0, 1 / max(-x_i)),

over the structure's P&L outcomes x_i with probabilities p_i (the payoff distribution under the
analysts' view, `agents/allocator.py`). G is concave with G'(0) = E[x]: the full-Kelly fraction
is 0 exactly when the expected P&L is not positive (then no fraction has positive growth), and
otherwise the root of G'(f) = 0, found by bisection. A binary bet (+b w.p. p, -1 w.p. 1 - p) gives
back the textbook f* = p - (1 - p) / b; a vertical is not a binary bet, and its whole distribution
is used.

Journal: realized outcomes of closed positions of the same structure in the same regime, known
at the run's as-of time (`ClosedOutcome.closed_at <= as_of`), pull the model's win rate, average
win and average loss (each per unit of max loss) toward what was realized. The model is the prior,
worth `kelly_prior_weight` pseudo-trades (Beta-style shrinkage): win rate
(wins + w p_model) / (n + w); average win (sum of realized wins + w p_model W_model) /
(wins + w p_model), likewise for losses. The distribution is then reweighted to the shrunk win
rate and rescaled to the shrunk average win and loss (losses never beyond -1).

Sizing: dollars at risk = min(f* * kelly_multiplier * NLV, caps), contracts = floor(dollars /
max loss per unit). Money is Decimal; contracts are whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Iterable

import numpy as np

from config.settings import DecisionConfig
from domain.decision import AccountState, ClosedOutcome, KellyInputs, Regime, RegimeName, SizedTrade, TradeProposal
from risk.limits import HARD_LIMITS, RiskMatrix

# A fraction this close to the ruin boundary 1 / max(-x) is as far as the search goes.
_RUIN_MARGIN = 1e-9
_BISECTION_STEPS = 80
CENT = Decimal("0.01")


@dataclass(frozen=True)
class PayoffDistribution:
    """Per-unit P&L outcomes in dollars (`pnl`) with `probabilities` summing to 1, and what they
    came from: `source` (the law), `view_drift` and `view_vol_scale` (the view's tilt)."""

    pnl: np.ndarray
    probabilities: np.ndarray
    source: str
    view_drift: float = 0.0
    view_vol_scale: float = 1.0

    def __post_init__(self):
        pnl = np.asarray(self.pnl, dtype=float)
        prob = np.asarray(self.probabilities, dtype=float)
        if pnl.ndim != 1 or pnl.shape != prob.shape or pnl.size == 0:
            raise ValueError(f"pnl and probabilities must be equal-length 1-D arrays, got {pnl.shape}, {prob.shape}")
        if not (np.all(np.isfinite(pnl)) and np.all(np.isfinite(prob)) and np.all(prob >= 0)):
            raise ValueError("payoff outcomes and probabilities must be finite, probabilities >= 0")
        if abs(prob.sum() - 1.0) > 1e-6:
            raise ValueError(f"probabilities must sum to 1, got {prob.sum()}")
        object.__setattr__(self, "pnl", pnl)
        object.__setattr__(self, "probabilities", prob / prob.sum())

    @property
    def win_rate(self) -> float:
        return float(self.probabilities[self.pnl > 0].sum())

    @property
    def mean(self) -> float:
        return float(np.dot(self.probabilities, self.pnl))

    def quantile(self, q: float) -> float:
        order = np.argsort(self.pnl, kind="stable")
        cum = np.cumsum(self.probabilities[order])
        return float(self.pnl[order][min(int(np.searchsorted(cum, q)), len(order) - 1)])


def returns_on_risk(dist: PayoffDistribution, max_loss: Decimal) -> np.ndarray:
    """x = P&L / max loss per unit, floored at -1 (a loss beyond max loss is round-off)."""
    return np.maximum(dist.pnl / float(max_loss), -1.0)


def expected_log_growth(x: np.ndarray, p: np.ndarray, fraction: float) -> float:
    """G(f) = sum p log(1 + f x); -inf at or past ruin."""
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = 1.0 + fraction * np.asarray(x, dtype=float)
        if np.any(growth[np.asarray(p) > 0] <= 0):
            return -math.inf
        # log1p: an edge of a few parts in 1e16 is not rounded away as log(1.0) would.
        return float(np.dot(p, np.log1p(np.where(growth > 0, fraction * np.asarray(x, dtype=float), 0.0))))


def log_optimal_fraction(x: np.ndarray, p: np.ndarray) -> float:
    """The f >= 0 maximizing G(f) (see module doc): 0 when E[x] <= 0; capped at 1 when no outcome
    loses (all of the fraction may be put at risk, and the caps decide)."""
    x, p = np.asarray(x, dtype=float), np.asarray(p, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):
        raise ValueError("returns and probabilities must be finite")
    live = p > 0
    x, p = x[live], p[live]
    if x.size == 0 or float(np.dot(p, x)) <= 0:
        return 0.0
    worst = float(-x.min())
    if worst <= 0:
        return 1.0
    lo, hi = 0.0, min(1.0 / worst, 1.0 / _RUIN_MARGIN) * (1.0 - _RUIN_MARGIN)

    def slope(f: float) -> float:
        return float(np.dot(p, x / (1.0 + f * x)))

    if slope(hi) >= 0:
        return min(hi, 1.0)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if slope(mid) > 0:
            lo = mid
        else:
            hi = mid
    return min(lo, 1.0)


@dataclass(frozen=True)
class JournalEstimate:
    """Win rate and average win / loss per unit of max loss, the model shrunk toward the journal."""

    trades: int
    wins: int
    prior_weight: float  # share of the prior: w / (n + w)
    journal_weight: float  # n / (n + w)
    win_rate: float
    avg_win: float
    avg_loss: float  # positive, at most 1


def _conditional(x: np.ndarray, p: np.ndarray, mask: np.ndarray, sign: float) -> tuple[float, float]:
    mass = float(p[mask].sum())
    return mass, (float(np.dot(p[mask], sign * x[mask])) / mass if mass > 0 else 0.0)


def journal_estimate(
    outcomes: Iterable[ClosedOutcome], structure: str, regime: RegimeName, as_of: datetime,
    model_x: np.ndarray, model_p: np.ndarray, prior_weight: float,
) -> JournalEstimate:
    """Shrink the model's win rate and average win / loss (per unit of max loss) toward the
    realized outcomes of `structure` in `regime` closed at or before `as_of` (never later: no
    look-ahead), the model worth `prior_weight` pseudo-trades. Pure."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    prior_weight = float(prior_weight)
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
    realized = [max(float(o.pnl / o.max_loss), -1.0) for o in outcomes
                if o.structure == structure and o.regime == regime and o.closed_at <= as_of
                and o.max_loss.is_finite() and o.max_loss > 0]
    x, p = np.asarray(model_x, dtype=float), np.asarray(model_p, dtype=float)
    p_model, w_model = _conditional(x, p, x > 0, 1.0)
    _, l_model = _conditional(x, p, x <= 0, -1.0)
    n = len(realized)
    wins = [r for r in realized if r > 0]
    losses = [-r for r in realized if r <= 0]
    if n == 0:
        prior_weight = 1.0  # nothing realized is known as of the run: the estimate is the model's, whatever its weight
    win_rate = (len(wins) + prior_weight * p_model) / (n + prior_weight)
    win_den = len(wins) + prior_weight * p_model
    loss_den = len(losses) + prior_weight * (1.0 - p_model)
    avg_win = (sum(wins) + prior_weight * p_model * w_model) / win_den if win_den > 0 else w_model
    avg_loss = (sum(losses) + prior_weight * (1.0 - p_model) * l_model) / loss_den if loss_den > 0 else l_model
    return JournalEstimate(
        trades=n, wins=len(wins), prior_weight=prior_weight / (n + prior_weight),
        journal_weight=n / (n + prior_weight), win_rate=float(win_rate),
        avg_win=float(avg_win), avg_loss=float(min(avg_loss, 1.0)),
    )


_MIN_SIDE = 1e-12  # an average win or loss (per unit of max loss) below this is no side at all


def shrunk_distribution(x: np.ndarray, p: np.ndarray, estimate: JournalEstimate) -> tuple[np.ndarray, np.ndarray]:
    """The model's outcomes reweighted to the estimate's win rate and rescaled to its average win
    and loss. With no journal it is the model itself. A side the model lacks (e.g. no losing
    outcome) but the estimate has becomes one outcome at the estimate's average."""
    if estimate.trades == 0:
        return x, p
    win = x > 0
    p_model, w_model = _conditional(x, p, win, 1.0)
    _, l_model = _conditional(x, p, ~win, -1.0)
    xs, ps = [], []
    for mask, sign, mass, model_mass, model_avg, target in (
        (win, 1.0, estimate.win_rate, p_model, w_model, estimate.avg_win),
        (~win, -1.0, 1.0 - estimate.win_rate, 1.0 - p_model, l_model, estimate.avg_loss),
    ):
        if mass <= 0:
            continue
        if model_mass > 0 and model_avg > _MIN_SIDE:  # rescaling a side of ~0 average would overflow
            xs.append(x[mask] * (target / model_avg))
            ps.append(p[mask] * (mass / model_mass))
        else:
            xs.append(np.array([sign * target]))
            ps.append(np.array([mass]))
    x_new = np.maximum(np.concatenate(xs), -1.0)
    p_new = np.concatenate(ps)
    return x_new, p_new / p_new.sum()


def _decimal(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _money(value: float) -> Decimal:
    return _decimal(value).quantize(CENT)


def size_trade(
    proposal: TradeProposal,
    account: AccountState,
    regime: Regime | RegimeName,
    matrix: RiskMatrix,
    config: DecisionConfig,
    distribution: PayoffDistribution | None,
    *,
    as_of: datetime,
    outcomes: Iterable[ClosedOutcome] = (),
    ticker_exposure: Decimal = Decimal("0"),
) -> SizedTrade:
    """Whole contracts for `proposal` by fractional log-optimal Kelly on `distribution`, capped.

    dollars = min(f* * config.kelly_multiplier * NLV,            (fractional Kelly)
                  regime kelly_cap_nlv * NLV,                      "regime_kelly_cap"
                  hard single-position cap * NLV - ticker_exposure, "hard_position_cap" (5%, 2% crisis)
                  NLV * (1 - 20%) - margin_used)                   "free_margin"
    contracts = floor(dollars / proposal.max_loss); capital_at_risk = contracts * max_loss.

    f* is the log-optimal fraction of NLV at risk over the distribution shrunk toward the journal
    (`outcomes`, only those closed at or before `as_of`). `ticker_exposure` is the max loss
    (dollars) already held in this ticker. `caps_applied` lists every cap tighter than the Kelly
    amount, tightest first, plus "no_edge" when expected log growth is not positive,
    "no_distribution" when there is no payoff distribution, "unbounded_max_loss", and
    "below_one_contract". `inputs` carries every number that sized the trade.
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

    def sized(contracts: int, f_star: float, fraction: float, caps: list[str],
              inputs: KellyInputs | None = None) -> SizedTrade:
        win_rate = inputs.win_rate if inputs else 0.0
        payoff_ratio = 0.0
        if inputs is not None and estimate is not None:
            payoff_ratio = math.inf if estimate.avg_loss == 0 else estimate.avg_win / estimate.avg_loss
        return SizedTrade(
            proposal=proposal, contracts=contracts, kelly_fraction=f_star, applied_fraction=fraction,
            win_rate=win_rate, payoff_ratio=payoff_ratio,
            capital_at_risk=max_loss * contracts if contracts else Decimal("0"),
            caps_applied=caps, inputs=inputs,
        )

    estimate = None
    if max_loss.is_infinite():
        return sized(0, 0.0, 0.0, ["unbounded_max_loss"])
    if distribution is None:
        return sized(0, 0.0, 0.0, ["no_distribution"])

    model_x = returns_on_risk(distribution, max_loss)
    estimate = journal_estimate(outcomes, proposal.structure, regime_name, as_of, model_x,
                                distribution.probabilities, config.kelly_prior_weight)
    x, p = shrunk_distribution(model_x, distribution.probabilities, estimate)
    f_star = log_optimal_fraction(x, p)
    growth = expected_log_growth(x, p, f_star)
    if not growth > 0:  # e.g. an edge below float resolution: no growth, no trade
        f_star, growth = 0.0, 0.0
    caps = {
        "regime_kelly_cap": matrix.for_regime(regime_name).kelly_cap_nlv * nlv,
        "hard_position_cap": HARD_LIMITS.position_cap_nlv(regime_name) * nlv - ticker_exposure,
        "free_margin": nlv * (1 - HARD_LIMITS.min_free_margin_nlv) - account.margin_used,
    }
    kelly_dollars = _decimal(f_star * config.kelly_multiplier) * nlv
    dollars = max(Decimal("0"), min([kelly_dollars, *caps.values()])) if f_star > 0 else Decimal("0")
    applied_fraction = float(dollars / nlv)
    if f_star > 0 and applied_fraction > 0 and not expected_log_growth(x, p, applied_fraction) > 0:
        # The caps cut the fraction to where the edge no longer grows wealth (it vanishes in float
        # arithmetic): a trade that does not grow wealth at the size it would have is no trade.
        f_star = growth = applied_fraction = 0.0
        dollars = Decimal("0")
    inputs = KellyInputs(
        distribution=distribution.source, view_drift=distribution.view_drift,
        view_vol_scale=distribution.view_vol_scale, outcomes=int(distribution.pnl.size),
        model_win_rate=distribution.win_rate, model_expected_pnl=_money(distribution.mean),
        pnl_p05=_money(distribution.quantile(0.05)), pnl_p50=_money(distribution.quantile(0.50)),
        pnl_p95=_money(distribution.quantile(0.95)),
        journal_trades=estimate.trades, journal_wins=estimate.wins,
        prior_weight=estimate.prior_weight, journal_weight=estimate.journal_weight,
        win_rate=float(p[x > 0].sum()), expected_return=float(np.dot(p, x)),
        full_fraction=f_star, expected_log_growth=growth,
        multiplier=config.kelly_multiplier, applied_fraction=applied_fraction,
        expected_log_growth_applied=expected_log_growth(x, p, applied_fraction),
        caps={name: amount.quantize(CENT) for name, amount in caps.items()},
    )
    if f_star <= 0.0:
        return sized(0, 0.0, 0.0, ["no_edge"], inputs)
    binding = sorted((amount, name) for name, amount in caps.items() if amount < kelly_dollars)
    contracts = int(dollars // max_loss)  # exact integer part; both are non-negative
    applied = [name for _, name in binding]
    if contracts < 1:
        contracts = 0
        applied.append("below_one_contract")
    return sized(contracts, f_star, applied_fraction, applied, inputs)
