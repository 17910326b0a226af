"""Realized volatility estimators over daily OHLC bars, and IV rank / IV percentile.

Conventions
-----------
* Inputs are equal-length 1-d arrays of daily bars, oldest first; prices must be positive.
* Vols are annualized decimals (0.20 = 20%) with ``TRADING_DAYS_PER_YEAR = 252``.
* Rolling functions return an array aligned with the input: element ``i`` is the estimate from
  the ``window`` bars ending at bar ``i`` (close-to-close and Yang-Zhang also need the close
  before that window); earlier elements are NaN. A NaN bar makes every window containing it NaN.
* `realized_vol_summary` gives the latest value of each estimator for each window, each as a
  `VolStatistic` that is NaN with a reason when the history is too short or the latest window
  holds missing bars.

Estimators (per-bar variances, then x252 and sqrt):
* close-to-close: sample variance (ddof=1) of ln(C_t / C_{t-1}) over ``window`` returns;
* Parkinson (1980): mean of ln(H/L)^2 / (4 ln 2);
* Garman-Klass (1980): mean of 0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2;
* Yang-Zhang (2000): var(overnight ln(O_t/C_{t-1})) + k var(open-to-close ln(C/O))
  + (1 - k) mean(Rogers-Satchell), k = 0.34 / (1.34 + (n + 1) / (n - 1)), variances ddof=1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

TRADING_DAYS_PER_YEAR = 252
DEFAULT_WINDOWS = (10, 20, 30)
IV_LOOKBACK_DAYS = 252
ESTIMATORS = ("close_to_close", "parkinson", "garman_klass", "yang_zhang")
_LN2 = np.log(2.0)


@dataclass(frozen=True)
class VolStatistic:
    """One number with its provenance: NaN ``value`` always comes with a ``reason``."""

    value: float
    reason: str | None = None
    n_observations: int = 0


def _validate_ohlc(open_, high, low, close) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a, dtype=float) for a in (open_, high, low, close)]
    names = ("open", "high", "low", "close")
    n = arrays[0].shape
    for name, a in zip(names, arrays):
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-d, got shape {a.shape}")
        if a.shape != n:
            raise ValueError(f"{name} has {a.shape[0]} bars, open has {n[0]}")
        bad = np.flatnonzero(a <= 0)  # NaN compares False: missing bars pass through as NaN
        if bad.size:
            raise ValueError(f"{name} must be positive; bar {bad[0]} is {a[bad[0]]}")
    o, h, l, c = arrays
    with np.errstate(invalid="ignore"):
        inconsistent = (h < l) | (h < np.maximum(o, c)) | (l > np.minimum(o, c))
    bad = np.flatnonzero(inconsistent)
    if bad.size:
        i = bad[0]
        raise ValueError(f"bar {i} is inconsistent: open {o[i]}, high {h[i]}, low {l[i]}, close {c[i]}")
    return o, h, l, c


def _check_window(window: int, minimum: int) -> None:
    if int(window) != window or window < minimum:
        raise ValueError(f"window must be an integer >= {minimum}, got {window}")


def _rolling(values: np.ndarray, window: int, reducer, pad: int) -> np.ndarray:
    """reducer over each trailing window of `values`, aligned to the bars: values[j] belongs to
    bar j + pad; output[i] covers the window ending at bar i."""
    out = np.full(len(values) + pad, np.nan)
    if len(values) >= window:
        out[pad + window - 1:] = reducer(sliding_window_view(values, window))
    return out


def _annualize(per_bar_variance: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.maximum(per_bar_variance, 0.0) * TRADING_DAYS_PER_YEAR)


def close_to_close_vol(close, window: int = 20) -> np.ndarray:
    """Rolling close-to-close vol: needs window + 1 closes for the first value."""
    _check_window(window, 2)
    close = np.asarray(close, dtype=float)
    if close.ndim != 1:
        raise ValueError(f"close must be 1-d, got shape {close.shape}")
    if np.any(close <= 0):
        raise ValueError("close must be positive")
    returns = np.diff(np.log(close))
    return _annualize(_rolling(returns, window, lambda v: v.var(axis=-1, ddof=1), pad=1))


def parkinson_vol(high, low, window: int = 20) -> np.ndarray:
    """Rolling Parkinson (high-low range) vol."""
    _check_window(window, 1)
    h, l = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    _validate_ohlc(l, h, l, l)
    per_bar = np.log(h / l) ** 2 / (4.0 * _LN2)
    return _annualize(_rolling(per_bar, window, lambda v: v.mean(axis=-1), pad=0))


def garman_klass_vol(open_, high, low, close, window: int = 20) -> np.ndarray:
    """Rolling Garman-Klass vol (open/high/low/close of each bar; no overnight gap term)."""
    _check_window(window, 1)
    o, h, l, c = _validate_ohlc(open_, high, low, close)
    per_bar = 0.5 * np.log(h / l) ** 2 - (2.0 * _LN2 - 1.0) * np.log(c / o) ** 2
    return _annualize(_rolling(per_bar, window, lambda v: v.mean(axis=-1), pad=0))


def yang_zhang_vol(open_, high, low, close, window: int = 20) -> np.ndarray:
    """Rolling Yang-Zhang vol: overnight + open-to-close + Rogers-Satchell, drift-independent.
    Needs window + 1 bars (the first overnight gap uses the previous close)."""
    _check_window(window, 2)
    o, h, l, c = _validate_ohlc(open_, high, low, close)
    overnight = np.log(o[1:] / c[:-1])
    open_close = np.log(c[1:] / o[1:])
    rogers_satchell = (np.log(h / c) * np.log(h / o) + np.log(l / c) * np.log(l / o))[1:]
    k = 0.34 / (1.34 + (window + 1) / (window - 1))
    var_o = _rolling(overnight, window, lambda v: v.var(axis=-1, ddof=1), pad=1)
    var_c = _rolling(open_close, window, lambda v: v.var(axis=-1, ddof=1), pad=1)
    mean_rs = _rolling(rogers_satchell, window, lambda v: v.mean(axis=-1), pad=1)
    return _annualize(var_o + k * var_c + (1.0 - k) * mean_rs)


@dataclass(frozen=True)
class RealizedVolSummary:
    """Latest realized vol per estimator and window: ``values[estimator][window]``."""

    values: dict[str, dict[int, VolStatistic]]
    n_bars: int

    def to_dict(self) -> dict:
        return {
            name: {str(w): {"value": None if np.isnan(s.value) else s.value, "reason": s.reason}
                   for w, s in by_window.items()}
            for name, by_window in self.values.items()
        }


def realized_vol_summary(open_, high, low, close, windows=DEFAULT_WINDOWS) -> RealizedVolSummary:
    """Latest value of every estimator for each window (default 10/20/30 bars).

    A value is NaN with a reason when there are too few bars (close-to-close and Yang-Zhang need
    window + 1, the others window) or when the latest window holds a missing (NaN) bar.
    """
    o, h, l, c = _validate_ohlc(open_, high, low, close)
    n = len(c)
    out: dict[str, dict[int, VolStatistic]] = {name: {} for name in ESTIMATORS}
    for window in windows:
        series = {
            "close_to_close": (close_to_close_vol(c, window), window + 1),
            "parkinson": (parkinson_vol(h, l, window), window),
            "garman_klass": (garman_klass_vol(o, h, l, c, window), window),
            "yang_zhang": (yang_zhang_vol(o, h, l, c, window), window + 1),
        }
        for name, (values, needed) in series.items():
            if n < needed:
                out[name][window] = VolStatistic(np.nan, f"need {needed} bars for a {window}-day window, have {n}", n)
            elif np.isnan(values[-1]):
                out[name][window] = VolStatistic(np.nan, f"missing prices in the last {needed} bars", n)
            else:
                out[name][window] = VolStatistic(float(values[-1]), None, needed)
    return RealizedVolSummary(out, n)


# ----------------------------------------------------------------------------- IV rank / percentile


def _iv_window(iv_history, current, lookback: int, min_observations: int | None):
    """(window, reason, n): the last `lookback` days' finite IVs, or None and why not usable."""
    if lookback < 2:
        raise ValueError(f"lookback must be at least 2, got {lookback}")
    history = np.asarray(iv_history, dtype=float).ravel()
    window = history[-lookback:]
    window = window[np.isfinite(window)]
    if np.any(window < 0):
        raise ValueError("IV history has negative values")
    needed = lookback if min_observations is None else min_observations
    if not (np.isfinite(current) and current >= 0):
        return None, f"current IV is not a usable number ({current})", int(window.size)
    if window.size < needed:
        return None, f"need {needed} IV observations in the last {lookback} days, have {window.size}", int(window.size)
    return window, None, int(window.size)


def iv_rank(iv_history, current: float, lookback: int = IV_LOOKBACK_DAYS,
            min_observations: int | None = None) -> VolStatistic:
    """IV rank in [0, 100]: where ``current`` sits between the lowest and highest IV of the last
    ``lookback`` days (current included in the range), 100 * (current - low) / (high - low).

    ``iv_history``: daily IVs, oldest first, any units as long as ``current`` matches; NaN days
    are skipped. Needs ``min_observations`` finite days in the window (default: all of
    ``lookback``); otherwise NaN with a reason. A flat history (high == low) is NaN too.
    """
    window, reason, n = _iv_window(iv_history, current, lookback, min_observations)
    if window is None:
        return VolStatistic(np.nan, reason, n)
    low, high = min(window.min(), current), max(window.max(), current)
    if high == low:
        return VolStatistic(np.nan, "IV history is flat: rank undefined", n)
    # Clipped: (current - low) / (high - low) can round to a hair above 1 when current is the high.
    return VolStatistic(float(np.clip(100.0 * (current - low) / (high - low), 0.0, 100.0)), None, n)


def iv_percentile(iv_history, current: float, lookback: int = IV_LOOKBACK_DAYS,
                  min_observations: int | None = None) -> VolStatistic:
    """IV percentile in [0, 100]: the share of the last ``lookback`` days whose IV was strictly
    below ``current``. Same history rules as `iv_rank`."""
    window, reason, n = _iv_window(iv_history, current, lookback, min_observations)
    if window is None:
        return VolStatistic(np.nan, reason, n)
    return VolStatistic(float(100.0 * np.mean(window < current)), None, n)
