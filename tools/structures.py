"""Expiry payoff, P&L extremes, breakevens, probability of profit and net Greeks of multi-leg
option structures (verticals, condors, flies, long or short single options, any ratio).

A structure is a list of legs, each with `strike`, `right` ("C"/"P"), `side` ("buy"/"sell"),
`ratio` (whole contracts per unit) and `expiry` (a date, or None). `LegSpec` below is the
minimal leg; `domain.decision.OptionLeg` has the same attributes and is accepted as is.

Units and sign conventions
--------------------------
* Everything is per share for ONE unit of the structure (multiply by the contract multiplier,
  usually 100, for dollars per unit).
* `net_debit` is what one unit costs to open: positive = we pay, negative = we receive a credit.
* Payoff at expiry = sum over legs of sign * ratio * intrinsic value (sign +1 buy, -1 sell),
  premium excluded; P&L at expiry = payoff - net_debit.
* All legs must share one expiry: the expiry payoff of a calendar or diagonal depends on the
  value of the longer-dated leg, which is a model question, not a payoff, so such a list is
  rejected with ValueError.

Exactness: at expiry the P&L is piecewise linear in the terminal price S with kinks only at the
strikes, so its extremes over S in [0, inf) lie at S = 0, at a strike, or on the ray beyond
the highest strike (unbounded when the net call ratio there is non-zero). `max_profit_loss`
and `breakevens` evaluate exactly those points in Decimal arithmetic, so verticals, condors,
flies and single options get exact answers with no sampling grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal, Protocol, Sequence

import numpy as np
from scipy.special import ndtr

INFINITY = Decimal("Infinity")


class LegLike(Protocol):
    strike: float | Decimal
    right: str
    side: str
    ratio: int
    expiry: date | None


@dataclass(frozen=True)
class LegSpec:
    """One leg's contract terms; no prices. `ratio` is a positive whole number of contracts."""

    strike: float | Decimal
    right: Literal["C", "P"]
    side: Literal["buy", "sell"]
    ratio: int = 1
    expiry: date | None = None


@dataclass(frozen=True)
class ProfitLoss:
    """P&L extremes at expiry, per share per unit, including the premium.

    `max_profit` is the largest P&L over S in [0, inf); it is zero or negative when the structure
    cannot make money (e.g. a debit at or above the spread width). `max_loss` is the NEGATED
    smallest P&L, so a possible loss is a positive number. An unbounded side is
    `Decimal("Infinity")` and its flag is true: profit for a net long call ratio beyond the top
    strike, loss for a net short one (a naked short call). A naked short put's loss is bounded
    (by strike - credit) and is reported exactly.
    """

    max_profit: Decimal
    max_loss: Decimal
    profit_unbounded: bool
    loss_unbounded: bool

    def dollars(self, multiplier: int) -> "ProfitLoss":
        """The same extremes in dollars per unit (an unbounded side stays infinite)."""
        m = Decimal(int(multiplier))
        return ProfitLoss(self.max_profit * m, self.max_loss * m, self.profit_unbounded, self.loss_unbounded)


@dataclass(frozen=True)
class NetGreeks:
    """Sum of sign * ratio * leg Greek, per share per unit, in the legs' own units.

    A Greek is NaN when any leg lacks it (None or NaN) — a partial sum would be a wrong number.
    """

    delta: float
    gamma: float
    vega: float
    theta: float


def _to_decimal(value) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a bool is not a price")
    if isinstance(value, int):
        return Decimal(value)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {value!r}")
    # str() gives the shortest repr, so 4500.0 -> 4500.0 and 1.05 -> 1.05 exactly.
    return Decimal(str(f))


@dataclass(frozen=True)
class _Legs:
    strikes: tuple[Decimal, ...]
    is_call: tuple[bool, ...]
    quantity: tuple[int, ...]  # sign * ratio


def _parse_legs(legs: Sequence[LegLike]) -> _Legs:
    if len(legs) == 0:
        raise ValueError("a structure needs at least one leg")
    strikes, calls, qty, expiries = [], [], [], set()
    for i, leg in enumerate(legs):
        strike = _to_decimal(leg.strike)
        if not strike > 0:
            raise ValueError(f"leg {i}: strike must be positive, got {leg.strike!r}")
        if leg.right not in ("C", "P"):
            raise ValueError(f"leg {i}: right must be 'C' or 'P', got {leg.right!r}")
        if leg.side not in ("buy", "sell"):
            raise ValueError(f"leg {i}: side must be 'buy' or 'sell', got {leg.side!r}")
        ratio = getattr(leg, "ratio", 1)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, np.integer)) or ratio < 1:
            raise ValueError(f"leg {i}: ratio must be a positive whole number, got {ratio!r}")
        expiry = getattr(leg, "expiry", None)
        if expiry is not None:
            expiries.add(expiry)
        strikes.append(strike)
        calls.append(leg.right == "C")
        qty.append(int(ratio) if leg.side == "buy" else -int(ratio))
    if len(expiries) > 1:
        raise ValueError(
            f"legs span {len(expiries)} expiries ({sorted(expiries)}): an expiry payoff needs one expiry"
        )
    return _Legs(tuple(strikes), tuple(calls), tuple(qty))


def _pnl_exact(parsed: _Legs, price: Decimal, net_debit: Decimal) -> Decimal:
    total = Decimal(0)
    for k, call, q in zip(parsed.strikes, parsed.is_call, parsed.quantity):
        intrinsic = price - k if call else k - price
        if intrinsic > 0:
            total += q * intrinsic
    return total - net_debit


def _tail_slope(parsed: _Legs) -> int:
    """dP&L/dS beyond the highest strike: the net (signed) call ratio."""
    return sum(q for call, q in zip(parsed.is_call, parsed.quantity) if call)


def _kinks(parsed: _Legs) -> list[Decimal]:
    return [Decimal(0)] + sorted(set(parsed.strikes))


def payoff_at_expiry(legs: Sequence[LegLike], prices) -> np.ndarray:
    """Expiry value per share per unit at each terminal price (premium excluded); any shape.

    NaN prices give NaN; negative prices raise ValueError.
    """
    parsed = _parse_legs(legs)
    s = np.asarray(prices, dtype=float)
    if np.any(s < 0):
        raise ValueError("terminal prices must be >= 0")
    k = np.array([float(x) for x in parsed.strikes])
    call = np.array(parsed.is_call)
    q = np.array(parsed.quantity, dtype=float)
    diff = s[..., None] - k
    intrinsic = np.where(call, np.maximum(diff, 0.0), np.maximum(-diff, 0.0))
    return (intrinsic * q).sum(axis=-1)


def pnl_at_expiry(legs: Sequence[LegLike], prices, net_debit) -> np.ndarray:
    """Expiry P&L per share per unit: payoff minus the (signed) net debit paid to open."""
    return payoff_at_expiry(legs, prices) - float(_to_decimal(net_debit))


def max_profit_loss(legs: Sequence[LegLike], net_debit) -> ProfitLoss:
    """Exact P&L extremes at expiry over S in [0, inf); see `ProfitLoss` for conventions."""
    parsed = _parse_legs(legs)
    debit = _to_decimal(net_debit)
    values = [_pnl_exact(parsed, x, debit) for x in _kinks(parsed)]
    slope = _tail_slope(parsed)
    profit_unbounded, loss_unbounded = slope > 0, slope < 0
    max_profit = INFINITY if profit_unbounded else max(values)
    max_loss = INFINITY if loss_unbounded else -min(values)
    return ProfitLoss(max_profit, max_loss, profit_unbounded, loss_unbounded)


def _breakevens_exact(parsed: _Legs, debit: Decimal) -> list[Decimal]:
    xs = _kinks(parsed)
    vs = [_pnl_exact(parsed, x, debit) for x in xs]
    roots: set[Decimal] = set()
    for i, (x, v) in enumerate(zip(xs, vs)):
        if v == 0 and x > 0:
            roots.add(x)
        if i + 1 < len(xs):
            x1, v1 = xs[i + 1], vs[i + 1]
            if (v < 0 < v1) or (v1 < 0 < v):
                roots.add(x + (x1 - x) * (-v) / (v1 - v))
    slope = _tail_slope(parsed)
    if slope != 0 and vs[-1] * slope < 0:
        roots.add(xs[-1] - vs[-1] / slope)
    return sorted(roots)


def breakevens(legs: Sequence[LegLike], net_debit) -> list[float]:
    """Terminal prices S > 0 where the expiry P&L crosses or touches zero, ascending.

    A segment on which the P&L is exactly zero contributes its two end points.
    """
    return [float(r) for r in _breakevens_exact(_parse_legs(legs), _to_decimal(net_debit))]


def profit_intervals(legs: Sequence[LegLike], net_debit) -> list[tuple[float, float]]:
    """Disjoint open intervals (lo, hi) of terminal price where the expiry P&L is > 0.

    `lo` may be 0.0 and `hi` may be math.inf.
    """
    parsed = _parse_legs(legs)
    debit = _to_decimal(net_debit)
    points = sorted(set(_kinks(parsed)) | set(_breakevens_exact(parsed, debit)))
    # No root lies strictly inside any (points[i], points[i+1]) or beyond points[-1], so one
    # interior sample decides the sign of the whole piece.
    pieces = [(a, b) for a, b in zip(points, points[1:])] + [(points[-1], None)]
    intervals: list[tuple[float, float]] = []
    for a, b in pieces:
        probe = a + 1 if b is None else (a + b) / 2
        if _pnl_exact(parsed, probe, debit) > 0:
            lo, hi = float(a), math.inf if b is None else float(b)
            if intervals and intervals[-1][1] == lo:
                intervals[-1] = (intervals[-1][0], hi)
            else:
                intervals.append((lo, hi))
    return intervals


def probability_of_profit(legs: Sequence[LegLike], net_debit, spot, t, vol, rate=0.0, div_yield=0.0):
    """Risk-neutral probability that the expiry P&L is strictly positive.

    S_T is lognormal: ln S_T ~ N(ln F - vol^2 t / 2, vol^2 t), F = spot exp((rate - div_yield) t).
    The answer is exact: the sum of N(z(hi)) - N(z(lo)) over `profit_intervals`. `spot`, `t`
    (years), `vol`, `rate`, `div_yield` (decimals) broadcast against each other; the result is a
    float for scalar input, else an array. vol * sqrt(t) == 0 gives the deterministic limit
    (1.0 if F lies inside a profit interval, else 0.0). Elements with non-finite input,
    spot <= 0, t < 0 or vol < 0 are NaN.
    """
    intervals = profit_intervals(legs, net_debit)
    spot, t, vol, rate, div_yield = np.broadcast_arrays(
        *[np.asarray(a, dtype=float) for a in (spot, t, vol, rate, div_yield)]
    )
    scalar = spot.ndim == 0
    bad = ~(np.isfinite(spot) & np.isfinite(t) & np.isfinite(vol) & np.isfinite(rate) & np.isfinite(div_yield))
    bad |= (spot <= 0) | (t < 0) | (vol < 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        forward = spot * np.exp((rate - div_yield) * t)
        sd = vol * np.sqrt(t)
        live = sd > 0
        sd_l = np.where(live, sd, 1.0)
        log_mean = np.log(forward) - 0.5 * sd_l * sd_l

        def cdf(x: float) -> np.ndarray:
            if x == 0.0:
                return np.zeros_like(spot)
            if math.isinf(x):
                return np.ones_like(spot)
            return ndtr((math.log(x) - log_mean) / sd_l)

        prob = np.zeros_like(spot)
        deterministic = np.zeros_like(spot)
        for lo, hi in intervals:
            prob += cdf(hi) - cdf(lo)
            deterministic += ((forward > lo) & (forward < hi)).astype(float)
    result = np.where(live, np.clip(prob, 0.0, 1.0), deterministic)
    result = np.where(bad, np.nan, result)
    return float(result) if scalar else result


def has_naked_short(legs: Sequence[LegLike]) -> bool:
    """True when, for calls or for puts, more contracts are sold than bought.

    Such a structure has an uncovered short option: unbounded loss for calls, strike-sized loss
    for puts. Verticals, condors and flies are covered; a short put or call alone is not.
    """
    parsed = _parse_legs(legs)
    for right_is_call in (True, False):
        if sum(q for call, q in zip(parsed.is_call, parsed.quantity) if call == right_is_call) < 0:
            return True
    return False


def _greek_value(leg, name: str) -> float:
    value = getattr(leg, name, None)
    return math.nan if value is None else float(value)


def net_greeks(legs: Sequence) -> NetGreeks:
    """Net delta/gamma/vega/theta of legs carrying per-long-option Greeks (e.g. OptionLeg).

    Each leg contributes sign * ratio * Greek (sign +1 buy, -1 sell); units are the legs'.
    """
    if len(legs) == 0:
        raise ValueError("a structure needs at least one leg")
    totals = {}
    for name in ("delta", "gamma", "vega", "theta"):
        total = 0.0
        for leg in legs:
            if leg.side not in ("buy", "sell"):
                raise ValueError(f"side must be 'buy' or 'sell', got {leg.side!r}")
            sign = 1 if leg.side == "buy" else -1
            total += sign * int(leg.ratio) * _greek_value(leg, name)
        totals[name] = total
    return NetGreeks(**totals)
