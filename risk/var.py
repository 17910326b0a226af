"""One-day Value at Risk of an options book: delta-gamma-normal on underlying moves, and
historical VaR from a P&L sample.

Sign convention: VaR is the loss, in dollars, that is exceeded with probability 1 - confidence;
a positive number is a loss. Inputs per risk factor (one underlying each):
- delta: position delta in shares (dollar P&L per $1 move of the underlying),
- gamma: position gamma in shares per $1 (d delta / d S),
- spot: underlying price in dollars, vol: annualized volatility as a decimal (0.20 = 20%).
The 1-day dollar move of factor i has standard deviation spot_i * vol_i * sqrt(h / 252).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

TRADING_DAYS = 252


@dataclass(frozen=True)
class VaRResult:
    var: float  # dollars; positive = loss at the given confidence
    mean: float  # expected P&L over the horizon, dollars (delta-gamma drift 0.5 * tr(Gamma Sigma))
    std: float  # standard deviation of P&L, dollars
    confidence: float
    horizon_days: float


def _confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0 or math.isnan(confidence):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def _vector(name: str, values: ArrayLike, n: int | None) -> np.ndarray:
    array = np.atleast_1d(np.asarray(values, dtype=float))
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {n}")
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array)).tolist()
        raise ValueError(f"{name} has NaN or infinite entries at {bad}")
    return array


def delta_gamma_normal_var(
    delta: ArrayLike,
    gamma: ArrayLike,
    spot: ArrayLike,
    vol: ArrayLike,
    correlation: ArrayLike | None = None,
    confidence: float = 0.95,
    horizon_days: float = 1.0,
) -> VaRResult:
    """Delta-gamma-normal VaR: P&L = delta.dS + 0.5 * sum(gamma_i dS_i^2) with dS ~ N(0, Sigma),
    Sigma_ij = rho_ij s_i s_j, s_i = spot_i vol_i sqrt(horizon / 252). The P&L is taken as normal
    with mean 0.5 tr(G Sigma) and variance d'Sigma d + 0.5 tr((G Sigma)^2), G = diag(gamma), and
    VaR = z * std - mean.

    `correlation` is an n x n matrix (symmetric, unit diagonal, positive semidefinite); None means
    every factor moves together (rho = 1, one common factor), which is the conservative choice
    for a book whose deltas share a sign. An empty book has zero VaR.

    The mean and variance are exact for the quadratic P&L; the normal shape is an approximation
    that understates the left tail of a net short-gamma book (its P&L is skewed to the left).
    """
    confidence = _confidence(confidence)
    if not horizon_days > 0 or not math.isfinite(horizon_days):
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    d = _vector("delta", delta, None)
    n = d.shape[0]
    g = _vector("gamma", gamma, n)
    s = _vector("spot", spot, n)
    v = _vector("vol", vol, n)
    if np.any(s < 0) or np.any(v < 0):
        raise ValueError("spot and vol must be non-negative")
    if n == 0:
        return VaRResult(0.0, 0.0, 0.0, confidence, float(horizon_days))
    if correlation is None:
        rho = np.ones((n, n))
    else:
        rho = np.asarray(correlation, dtype=float)
        if rho.shape != (n, n):
            raise ValueError(f"correlation must be {n}x{n}, got shape {rho.shape}")
        if not np.all(np.isfinite(rho)):
            raise ValueError("correlation has NaN or infinite entries")
        if not np.allclose(rho, rho.T, atol=1e-12) or not np.allclose(np.diag(rho), 1.0):
            raise ValueError("correlation must be symmetric with a unit diagonal")
        if np.any(np.abs(rho) > 1 + 1e-12) or np.linalg.eigvalsh(rho).min() < -1e-9:
            raise ValueError("correlation must be a valid (positive semidefinite) matrix")
    move_sd = s * v * math.sqrt(horizon_days / TRADING_DAYS)
    cov = rho * np.outer(move_sd, move_sd)
    mean = 0.5 * float(np.dot(g, np.diag(cov)))
    g_cov = g[:, None] * cov  # G Sigma
    variance = float(d @ cov @ d) + 0.5 * float(np.sum(g_cov * g_cov.T))  # tr((G Sigma)^2)
    std = math.sqrt(max(variance, 0.0))
    z = float(ndtri(confidence))
    return VaRResult(z * std - mean, mean, std, confidence, float(horizon_days))


def historical_var(pnl: ArrayLike, confidence: float = 0.95) -> float:
    """Historical VaR of a sample of P&L outcomes (dollars, gains positive): minus the empirical
    (1 - confidence) quantile, taken as the smallest outcome x with F(x) >= 1 - confidence
    (numpy's "inverted_cdf" definition). With 100 outcomes at 95% it is minus the 5th worst. A negative value
    means even that tail outcome is a gain. Raises ValueError on an empty sample or NaN."""
    confidence = _confidence(confidence)
    sample = np.asarray(pnl, dtype=float).ravel()
    if sample.size == 0:
        raise ValueError("historical VaR needs at least one P&L observation")
    if not np.all(np.isfinite(sample)):
        raise ValueError("P&L sample has NaN or infinite entries")
    # The k-th smallest outcome, k = ceil(n * (1 - c)); the small tolerance keeps float noise in
    # 1 - 0.95 = 0.050000000000000044 from moving k one rank up (n = 100 must give k = 5).
    k = max(1, math.ceil(sample.size * (1.0 - confidence) - 1e-9))
    return float(-np.partition(sample, k - 1)[k - 1])
