"""The terminal-price distribution implied by one fitted SVI smile (Breeden–Litzenberger), a view
tilt of it, and what a structure's expiry P&L looks like under either.

Breeden–Litzenberger says the risk-neutral law of S_T is the second strike-derivative of the
undiscounted call price. On an SVI slice that derivative is available in closed form, so nothing
here differentiates numerically. With k = ln(K/F), w = w(k), d2 = -k/sqrt(w) - sqrt(w)/2 and the
undiscounted Black call C(K) = F N(d1) - K N(d2), the first derivative gives the survival function

    P(S_T > K) = -dC/dK = N(d2) - phi(d2) * w'(k) / (2 sqrt(w)),

exact for any smile (the second term is the skew's contribution: a steep put skew, w' < 0, makes
low prices more likely than a flat smile at the same ATM vol). Probabilities of intervals are
differences of it, so a probability of profit over a piecewise-linear payoff is exact.

A discrete distribution (for expected values and Kelly) is the partition of (0, inf) at a grid of
log-moneyness points (+-GRID_SD ATM standard deviations, plus any strikes given): each cell gets
its exact probability and its exact conditional mean price,

    E[S 1{a < S <= b}] = C(a) - C(b) + a P(S > a) - b P(S > b),

so the grid's mean is F exactly and the expected payoff of a structure whose strikes are grid
points is exact (the payoff is linear inside each cell).

The view tilt (`View`): the analysts' world differs from the market's by a drift and a dispersion.
S_view = F e^{mu t} (S/F)^s / E[(S/F)^s]: the log-return is scaled by s (realized over implied vol,
say) around the smile's own shape, keeping its skew, and the mean is moved to F e^{mu t}. With
s = 1 it is S e^{mu t} exactly; with mu = 0 and s = 1 the market's distribution itself. The map is
increasing, so the tilted law's probabilities are the smile's, evaluated at mapped prices.

A flat smile (b = 0, w = sigma^2 t) reproduces Black–Scholes: the survival is N(d2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import ndtr

from tools.structures import LegLike, breakevens, payoff_at_expiry, profit_intervals
from tools.svi import SVIParams

# Grid half-width in ATM standard deviations of ln S_T, and the number of uniform cells on it.
GRID_SD = 8.0
GRID_CELLS = 600
# A view's dispersion scale is clipped to this range (realized vol a quarter of implied, or 4x).
VIEW_SCALE_RANGE = (0.25, 4.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class View:
    """How the analysts' world differs from the market's: an annualized log drift `drift` and a
    scale `vol_scale` on the dispersion of ln S_T (1.0: the smile's own)."""

    drift: float = 0.0
    vol_scale: float = 1.0

    def __post_init__(self):
        if not math.isfinite(self.drift):
            raise ValueError(f"view drift must be finite, got {self.drift}")
        lo, hi = VIEW_SCALE_RANGE
        if not (math.isfinite(self.vol_scale) and lo <= self.vol_scale <= hi):
            raise ValueError(f"view vol_scale must be in [{lo}, {hi}], got {self.vol_scale}")

    @property
    def is_market(self) -> bool:
        return self.drift == 0.0 and self.vol_scale == 1.0


@dataclass(frozen=True)
class SmileDensity:
    """The risk-neutral law of S_T implied by one SVI slice: expiry `t` years, forward `forward`."""

    params: SVIParams
    t: float
    forward: float

    def __post_init__(self):
        if not (math.isfinite(self.t) and self.t > 0):
            raise ValueError(f"t must be positive years, got {self.t}")
        if not (math.isfinite(self.forward) and self.forward > 0):
            raise ValueError(f"forward must be positive, got {self.forward}")
        if not self.params.total_variance(0.0) > 0:
            raise ValueError("the smile has no positive ATM total variance")

    @classmethod
    def flat(cls, vol: float, t: float, forward: float) -> "SmileDensity":
        """A flat smile at `vol` (Black–Scholes lognormal)."""
        if not (math.isfinite(vol) and vol > 0):
            raise ValueError(f"vol must be positive, got {vol}")
        return cls(SVIParams(a=vol * vol * t, b=0.0, rho=0.0, m=0.0, sigma=1.0), t, forward)

    @property
    def atm_sd(self) -> float:
        """Standard deviation of ln S_T at the money, sqrt(w(0))."""
        return float(math.sqrt(self.params.total_variance(0.0)))

    @property
    def atm_vol(self) -> float:
        return self.atm_sd / math.sqrt(self.t)

    def _pieces(self, strikes: np.ndarray):
        k = np.log(strikes / self.forward)
        w, dw, _ = self.params.derivatives(k)
        sqrt_w = np.sqrt(np.maximum(w, 1e-300))
        d1 = -k / sqrt_w + 0.5 * sqrt_w
        d2 = d1 - sqrt_w
        return k, w, dw, sqrt_w, d1, d2

    def survival(self, strikes) -> np.ndarray:
        """P(S_T > K) for K > 0 (any shape); 1 at K = 0, 0 at K = inf."""
        strikes = np.asarray(strikes, dtype=float)
        out = np.where(strikes <= 0, 1.0, 0.0)
        live = (strikes > 0) & np.isfinite(strikes)
        if live.any():
            _, _, dw, sqrt_w, _, d2 = self._pieces(strikes[live])
            phi = np.exp(-0.5 * d2 * d2) / _SQRT_2PI
            out[live] = np.clip(ndtr(d2) - phi * dw / (2.0 * sqrt_w), 0.0, 1.0)
        return out

    def call_price(self, strikes) -> np.ndarray:
        """Undiscounted E[(S_T - K)+] (the forward Black price at the smile's vol); F at K = 0."""
        strikes = np.asarray(strikes, dtype=float)
        out = np.where(strikes <= 0, self.forward - np.minimum(strikes, 0.0), 0.0)
        live = (strikes > 0) & np.isfinite(strikes)
        if live.any():
            s = strikes[live]
            _, _, _, _, d1, d2 = self._pieces(s)
            out[live] = np.maximum(self.forward * ndtr(d1) - s * ndtr(d2), 0.0)
        return out

    def pdf(self, strikes) -> np.ndarray:
        """Density of S_T per unit of price (Gatheral's g(k) form), for plots and checks."""
        strikes = np.asarray(strikes, dtype=float)
        k, w, dw, sqrt_w, _, d2 = self._pieces(strikes)
        d2w = self.params.derivatives(k)[2]
        g = (1.0 - k * dw / (2.0 * w)) ** 2 - 0.25 * dw * dw * (1.0 / w + 0.25) + 0.5 * d2w
        return g / (sqrt_w * _SQRT_2PI) * np.exp(-0.5 * d2 * d2) / strikes


@dataclass(frozen=True)
class TerminalDistribution:
    """A discrete law of S_T: `prices` (ascending conditional means of the cells) with
    `probabilities` summing to 1; `forward` its mean."""

    prices: np.ndarray
    probabilities: np.ndarray
    forward: float

    def expectation(self, values: np.ndarray) -> float:
        return float(np.dot(self.probabilities, values))


def _survival_monotone(density: SmileDensity, edges: np.ndarray) -> np.ndarray:
    """Survival at ascending edges, forced non-increasing (a fitted wing far outside its quotes
    may carry a sliver of butterfly arbitrage; its negative mass is dropped, not kept)."""
    return np.minimum.accumulate(density.survival(edges))


def market_distribution(density: SmileDensity, strikes: Sequence[float] = (),
                        cells: int = GRID_CELLS) -> TerminalDistribution:
    """The smile's risk-neutral law of S_T on a grid (see module docstring); `strikes` become
    cell edges so that expected payoffs of structures on them are exact."""
    sd = density.atm_sd
    k_edges = np.linspace(-GRID_SD * sd, GRID_SD * sd, cells + 1)
    edges = np.unique(np.concatenate([density.forward * np.exp(k_edges),
                                      np.asarray([float(s) for s in strikes if float(s) > 0], dtype=float)]))
    surv = _survival_monotone(density, edges)
    calls = density.call_price(edges)
    # Cells: (0, e0], (e0, e1], ..., (e_last, inf).
    surv_lo = np.concatenate([[1.0], surv])
    surv_hi = np.concatenate([surv, [0.0]])
    call_lo = np.concatenate([[density.forward], calls])
    call_hi = np.concatenate([calls, [0.0]])
    edge_lo = np.concatenate([[0.0], edges])
    edge_hi_times_surv = np.concatenate([edges * surv, [0.0]])
    prob = np.maximum(surv_lo - surv_hi, 0.0)
    first_moment = np.maximum(call_lo - call_hi + edge_lo * surv_lo - edge_hi_times_surv, 0.0)
    keep = prob > 1e-15
    prob, first_moment = prob[keep], first_moment[keep]
    prices = first_moment / prob
    # Clip each mean into its own cell (round-off where a cell's mass is tiny).
    lo, hi = edge_lo[keep], np.concatenate([edges, [np.inf]])[keep]
    prices = np.clip(prices, lo, hi)
    prob = prob / prob.sum()
    return TerminalDistribution(prices, prob, density.forward)


def tilt(dist: TerminalDistribution, view: View, t: float) -> TerminalDistribution:
    """The same probabilities at the view's prices F e^{mu t} (S/F)^s / E[(S/F)^s]."""
    if view.is_market:
        return dist
    growth = math.exp(view.drift * t)
    if view.vol_scale == 1.0:
        return TerminalDistribution(dist.prices * growth, dist.probabilities, dist.forward * growth)
    powered = (np.maximum(dist.prices, 1e-300) / dist.forward) ** view.vol_scale
    norm = float(np.dot(dist.probabilities, powered))
    return TerminalDistribution(dist.forward * growth * powered / norm, dist.probabilities, dist.forward * growth)


def _view_to_market(price: float, density: SmileDensity, view: View, norm: float) -> float:
    """The market price whose image under the view's map is `price` (the map is increasing)."""
    if price <= 0 or math.isinf(price):
        return price
    growth = math.exp(view.drift * density.t)
    ratio = price / (density.forward * growth) * norm
    return density.forward * ratio ** (1.0 / view.vol_scale)


def view_norm(density: SmileDensity, view: View) -> float:
    """E[(S/F)^s] under the smile (1 for s = 1), on the standard grid."""
    if view.vol_scale == 1.0:
        return 1.0
    dist = market_distribution(density)
    return float(np.dot(dist.probabilities, (np.maximum(dist.prices, 1e-300) / dist.forward) ** view.vol_scale))


def probability_of_profit(legs: Sequence[LegLike], net_debit, density: SmileDensity,
                          view: View | None = None) -> float:
    """P(expiry P&L > 0) under the smile's law (or the view's tilt of it), exact over the
    structure's profit intervals (no grid for the market law; the view's normalizer for a
    dispersion scale != 1 comes from the grid)."""
    view = view or View()
    norm = view_norm(density, view)
    total = 0.0
    for lo, hi in profit_intervals(legs, net_debit):
        a = _view_to_market(lo, density, view, norm)
        b = _view_to_market(hi, density, view, norm)
        total += float(density.survival(a)) - float(density.survival(b)) if math.isfinite(b) else float(density.survival(a))
    return float(min(max(total, 0.0), 1.0))


@dataclass(frozen=True)
class PnLDistribution:
    """Expiry P&L per share per unit at each outcome of a terminal distribution."""

    pnl: np.ndarray
    probabilities: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.dot(self.probabilities, self.pnl))

    @property
    def probability_of_profit(self) -> float:
        return float(self.probabilities[self.pnl > 0].sum())

    def quantile(self, q: float) -> float:
        order = np.argsort(self.pnl, kind="stable")
        cum = np.cumsum(self.probabilities[order])
        return float(self.pnl[order][min(int(np.searchsorted(cum, q)), len(order) - 1)])


def pnl_distribution(legs: Sequence[LegLike], net_debit, density: SmileDensity,
                     view: View | None = None, cells: int = GRID_CELLS) -> PnLDistribution:
    """The structure's expiry P&L (per share per unit, premium included) under the smile's law
    or its view tilt. Strikes and breakevens are grid edges, so under the market law the mean and
    the probability of profit are exact; under a view they are as fine as the grid."""
    view = view or View()
    edges = [float(leg.strike) for leg in legs] + breakevens(legs, net_debit)
    if not view.is_market:  # the view's strikes and breakevens, mapped back to market prices
        norm = view_norm(density, view)
        edges = [_view_to_market(x, density, view, norm) for x in edges]
    dist = tilt(market_distribution(density, edges, cells), view, density.t)
    pnl = payoff_at_expiry(legs, dist.prices) - float(net_debit)
    return PnLDistribution(pnl, dist.probabilities)
