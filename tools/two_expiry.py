"""Calendars and diagonals: P&L at the near expiry with the far legs valued on the fitted surface.

A two-expiry structure has no expiry payoff: when the near legs expire the far legs still have
time value, which is a model question. The model here is the fitted surface itself:

* Term-structure interpolation: total implied variance is linear in time at fixed log-moneyness
  k = ln(K / F_T) between the two fitted SVI slices (the usual, calendar-arbitrage-free way of
  reading a surface between its expiries). So the variance a far leg still carries once the
  near expiry has passed is the forward variance w_far(k) - w_near(k), at k measured against the
  far expiry's forward at that time (sticky moneyness: the smile moves with the underlying).
  Where the surface has calendar arbitrage (w_far < w_near) the remainder is floored at
  MIN_FORWARD_VOL^2 * (t_far - t_near).
* With the underlying at S at the near expiry, the far forward is S * F_far / F_near (the carry
  implied by the two parity forwards), and a far leg is worth its Black-76 value with that
  forward, the forward vol sqrt(remainder / (t_far - t_near)) and the discount D_far / D_near.

P&L at the near expiry = sum of sign * ratio * (near intrinsic | far model value) - net debit,
per share per unit. It is smooth and not piecewise linear, so its extremes and breakevens are
found numerically (a dense grid in log-price over +-GRID_SD near-expiry standard deviations
plus the strikes, refined by bounded scalar search and Brent's method) over that range, and
are stated as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Sequence

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from tools.density import SmileDensity
from tools.pricing import black76_price
from tools.structures import LegLike
from tools.svi import SVIParams

MIN_FORWARD_VOL = 0.01
GRID_SD = 8.0
GRID_POINTS = 4001


@dataclass(frozen=True)
class FarSmile:
    """The far expiry's fitted smile, forward, discount factor and year fraction."""

    params: SVIParams
    t: float
    forward: float
    discount: float


@dataclass(frozen=True)
class TwoExpiryModel:
    """What values a two-expiry structure at the near expiry: the near smile (its law is the law
    of S at the near expiry), its discount factor, and the far smile."""

    near: SmileDensity
    near_discount: float
    far: FarSmile

    def __post_init__(self):
        if not self.far.t > self.near.t:
            raise ValueError(f"the far expiry ({self.far.t:.4f}y) must come after the near one ({self.near.t:.4f}y)")

    @property
    def tau(self) -> float:
        return self.far.t - self.near.t

    def forward_vol(self, strike: float, prices: np.ndarray) -> np.ndarray:
        """The far leg's vol over (t_near, t_far] at each underlying price S at the near expiry."""
        far_forward = prices * (self.far.forward / self.near.forward)
        k = np.log(strike / far_forward)
        remainder = self.far.params.total_variance(k) - self.near.params.total_variance(k)
        floor = MIN_FORWARD_VOL ** 2 * self.tau
        return np.sqrt(np.maximum(remainder, floor) / self.tau)

    def far_value(self, strike: float, is_call: bool, prices: np.ndarray) -> np.ndarray:
        """Value per share of a far option at the near expiry, for underlying prices S > 0."""
        prices = np.asarray(prices, dtype=float)
        far_forward = prices * (self.far.forward / self.near.forward)
        rate = -math.log(self.far.discount / self.near_discount) / self.tau
        vol = self.forward_vol(strike, prices)
        return np.asarray(black76_price(far_forward, strike, self.tau, rate, vol, is_call), dtype=float)


def _split(legs: Sequence[LegLike]) -> tuple[date, date]:
    expiries = sorted({leg.expiry for leg in legs})
    if len(expiries) != 2 or any(e is None for e in expiries):
        raise ValueError(f"a two-expiry structure needs legs in exactly two expiries, got {expiries}")
    return expiries[0], expiries[1]


def pnl_at_near_expiry(legs: Sequence[LegLike], net_debit, prices, model: TwoExpiryModel) -> np.ndarray:
    """P&L per share per unit at the near expiry for underlying prices S > 0 (module doc)."""
    near_expiry, _ = _split(legs)
    s = np.maximum(np.asarray(prices, dtype=float), 1e-12)
    total = np.zeros_like(s)
    for leg in legs:
        k, is_call = float(leg.strike), leg.right == "C"
        q = (1 if leg.side == "buy" else -1) * int(leg.ratio)
        if leg.expiry == near_expiry:
            value = np.maximum(s - k, 0.0) if is_call else np.maximum(k - s, 0.0)
        else:
            value = model.far_value(k, is_call, s)
        total += q * value
    return total - float(net_debit)


@dataclass(frozen=True)
class NumericExtremes:
    """Max profit and max loss (positive) per share per unit over S at the near expiry within
    +-GRID_SD near-expiry standard deviations of the near forward, where they were found, and the
    breakevens in that range — all found numerically. Beyond that range the P&L of a calendar is
    not flat: a far leg's carry (dividends over the gap, F_far / F_near < 1) makes it drift
    linearly in S, so an "extreme" there would only measure how far one looked."""

    max_profit: float
    max_loss: float
    profit_at: float
    loss_at: float
    breakevens: list[float]


def numeric_extremes(legs: Sequence[LegLike], net_debit, model: TwoExpiryModel) -> NumericExtremes:
    near = model.near
    sd = near.atm_sd
    grid = near.forward * np.exp(np.linspace(-GRID_SD * sd, GRID_SD * sd, GRID_POINTS))
    grid = np.unique(np.concatenate([grid, [float(leg.strike) for leg in legs]]))

    def pnl(x: float) -> float:
        return float(pnl_at_near_expiry(legs, net_debit, [x], model)[0])

    values = pnl_at_near_expiry(legs, net_debit, grid, model)

    def refine(index: int, sign: float) -> tuple[float, float]:
        lo, hi = grid[max(index - 1, 0)], grid[min(index + 1, len(grid) - 1)]
        if hi <= lo:
            return float(grid[index]), float(values[index])
        found = minimize_scalar(lambda x: -sign * pnl(x), bounds=(lo, hi), method="bounded",
                                options={"xatol": 1e-6 * max(hi, 1.0)})
        x = float(found.x)
        v = pnl(x)
        return (x, v) if sign * v > sign * values[index] else (float(grid[index]), float(values[index]))

    profit_at, max_profit = refine(int(np.argmax(values)), 1.0)
    loss_at, min_pnl = refine(int(np.argmin(values)), -1.0)
    roots = []
    sign = np.sign(values)
    for i in np.flatnonzero(sign[:-1] * sign[1:] < 0):
        roots.append(float(brentq(pnl, grid[i], grid[i + 1], xtol=1e-9 * grid[i + 1])))
    roots.extend(float(grid[i]) for i in np.flatnonzero(values == 0))
    return NumericExtremes(max_profit, -min_pnl, profit_at, loss_at, sorted(set(roots)))


def probability_of_profit(legs: Sequence[LegLike], net_debit, model: TwoExpiryModel) -> float:
    """P(P&L at the near expiry > 0) under the near smile's risk-neutral law, over the intervals
    between the numerically found breakevens."""
    extremes = numeric_extremes(legs, net_debit, model)
    points = [0.0] + extremes.breakevens + [math.inf]
    total = 0.0
    for lo, hi in zip(points, points[1:]):
        probe = lo * 1.5 + 1.0 if math.isinf(hi) else (lo + hi) / 2 if lo > 0 else hi / 2
        if pnl_at_near_expiry(legs, net_debit, [probe], model)[0] > 0:
            upper = 0.0 if math.isinf(hi) else float(model.near.survival(hi))
            total += float(model.near.survival(lo)) - upper
    return float(min(max(total, 0.0), 1.0))
