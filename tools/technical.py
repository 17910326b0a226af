"""Technical score over daily OHLCV bars: TA-Lib indicators folded into one number in [-1, 1].

Each component reads one indicator as a trend/momentum vote in [-1, 1] (+ bullish, - bearish);
the score is their weighted mean over the components that had enough history. Readings are
trend-following (an RSI of 75 is a bullish vote, not an "overbought" sell signal), except that
support/resistance leans mildly toward the nearer level holding while price is inside its range.

| component          | indicator                                   | vote                                        |
|--------------------|---------------------------------------------|---------------------------------------------|
| ma_trend           | SMA 50 / SMA 200                            | tanh of close vs SMA50 and SMA50 vs SMA200   |
| macd               | MACD(12, 26, 9), ATR(14)                    | tanh of MACD line and histogram, in ATRs    |
| adx                | ADX(14), +DI, -DI                           | DI balance times trend strength (ADX / 25)  |
| rsi                | RSI(14)                                     | (RSI - 50) / 30                             |
| bollinger          | Bollinger Bands(20, 2)                      | position of close between middle and a band |
| support_resistance | swing highs / lows (5 bars each side)       | breakout +, breakdown -, in-range lean      |
| volume             | 5-day vs prior 20-day volume, 5-day return  | return direction, weighted by volume        |

Bad input: arrays of different lengths or a bar with high < low raise ValueError; bars with a
missing or non-positive price are dropped (noted in `data_quality`); missing volume only removes
the volume component. Too little history drops the components that need more (noted); with no
component left the score is 0.0 (no evidence) and `components` is empty.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import talib

WEIGHTS: dict[str, float] = {
    "ma_trend": 0.25,
    "macd": 0.15,
    "adx": 0.15,
    "rsi": 0.15,
    "bollinger": 0.10,
    "support_resistance": 0.10,
    "volume": 0.10,
}

RSI_PERIOD = 14
ATR_PERIOD = 14
ADX_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_PERIOD, BB_WIDTH = 20, 2.0
SMA_SHORT, SMA_LONG = 50, 200
SWING_ORDER = 5  # a swing high is the highest high of the SWING_ORDER bars on each side
SWING_LOOKBACK = 120  # bars searched for swing points
VOLUME_RECENT, VOLUME_BASELINE = 5, 20
# Price distances are judged relative to this: 5 % off the 50-day average is a strong reading.
MA_SCALE = 0.05
ADX_TRENDING = 25.0  # ADX at or above this counts as a full-strength trend
RSI_SCALE = 30.0  # RSI 80 (or 20) is a full vote

MIN_BARS = {
    "rsi": RSI_PERIOD + 1,
    "macd": MACD_SLOW + MACD_SIGNAL - 1,
    "bollinger": BB_PERIOD,
    "adx": 2 * ADX_PERIOD + 1,
    "ma_trend": SMA_SHORT,
    "support_resistance": 4 * SWING_ORDER + 2,
    "volume": VOLUME_RECENT + VOLUME_BASELINE,
}


@dataclass(frozen=True)
class TechnicalScore:
    score: float  # weighted mean of `components`, in [-1, 1]; + bullish
    components: dict[str, float]  # each vote in [-1, 1]
    weights: dict[str, float]  # weight of each component present (before renormalizing)
    indicators: dict[str, float]  # raw latest indicator values (price units, 0..100 oscillators)
    data_quality: list[str] = field(default_factory=list)
    bars_used: int = 0


def _clip(x: float) -> float:
    return float(np.clip(x, -1.0, 1.0))


def _last(a: np.ndarray) -> float:
    return float(a[-1])


def _clean(open_, high, low, close, volume, notes: list[str]):
    arrays = [np.asarray(a, dtype=float) for a in (open_, high, low, close, volume)]
    n = len(arrays[3])
    if any(a.ndim != 1 or len(a) != n for a in arrays):
        raise ValueError(f"open, high, low, close and volume must be 1-D of equal length, got "
                         f"{[a.shape for a in arrays]}")
    o, h, l, c, v = arrays
    prices_ok = np.ones(n, dtype=bool)
    for a in (o, h, l, c):
        prices_ok &= np.isfinite(a) & (a > 0)
    dropped = int((~prices_ok).sum())
    if dropped:
        notes.append(f"dropped {dropped} bars with a missing or non-positive price")
    o, h, l, c, v = (np.ascontiguousarray(a[prices_ok]) for a in (o, h, l, c, v))
    if np.any(h < l):
        raise ValueError(f"{int((h < l).sum())} bars have high < low")
    bad_volume = ~(np.isfinite(v) & (v >= 0))
    v = np.where(bad_volume, np.nan, v)
    return o, h, l, c, v


def _swing_points(values: np.ndarray, order: int, highs: bool) -> np.ndarray:
    """Indices i where values[i] is the extreme of values[i-order : i+order+1]."""
    if len(values) < 2 * order + 1:
        return np.empty(0, dtype=int)
    windows = np.lib.stride_tricks.sliding_window_view(values, 2 * order + 1)
    centre = values[order:len(values) - order]
    extreme = windows.max(axis=1) if highs else windows.min(axis=1)
    return np.nonzero(centre == extreme)[0] + order


def _support_resistance(high, low, close, atr: float, indicators: dict) -> float:
    window = slice(max(0, len(close) - SWING_LOOKBACK), len(close))
    h, l = high[window], low[window]
    last = close[-1]
    swing_highs = h[_swing_points(h, SWING_ORDER, highs=True)]
    swing_lows = l[_swing_points(l, SWING_ORDER, highs=False)]
    # Without a confirmed swing point, the range's extreme (excluding the bars too recent to
    # confirm a swing) is the level to break.
    settled_h, settled_l = h[:-SWING_ORDER], l[:-SWING_ORDER]
    above = swing_highs[swing_highs > last]
    below = swing_lows[swing_lows < last]
    resistance = float(above.min()) if len(above) else np.nan
    support = float(below.max()) if len(below) else np.nan
    indicators["resistance"] = resistance
    indicators["support"] = support
    scale = atr if atr > 0 else np.nan
    if np.isnan(resistance):
        level = float(swing_highs.max()) if len(swing_highs) else float(settled_h.max())
        return _clip(0.5 + 0.5 * min(1.0, max(0.0, (last - level) / scale))) if np.isfinite(scale) else 0.5
    if np.isnan(support):
        level = float(swing_lows.min()) if len(swing_lows) else float(settled_l.min())
        return _clip(-0.5 - 0.5 * min(1.0, max(0.0, (level - last) / scale))) if np.isfinite(scale) else -0.5
    position = (last - support) / (resistance - support)  # 0 at support, 1 at resistance
    return _clip(0.5 * (1.0 - 2.0 * position))


def technical_score(open_, high, low, close, volume) -> TechnicalScore:
    """Score daily bars (oldest first) in [-1, 1]; see the module docstring for the components."""
    notes: list[str] = []
    o, h, l, c, v = _clean(open_, high, low, close, volume, notes)
    n = len(c)
    components: dict[str, float] = {}
    ind: dict[str, float] = {}
    if n:
        ind["close"] = float(c[-1])

    short = [name for name, need in MIN_BARS.items() if n < need]
    if short:
        notes.append(f"only {n} bars: skipped {', '.join(short)} "
                     f"(need {', '.join(str(MIN_BARS[s]) for s in short)})")

    atr = np.nan
    if n >= ATR_PERIOD + 1:
        atr = _last(talib.ATR(h, l, c, timeperiod=ATR_PERIOD))
        ind["atr"] = atr

    if n >= MIN_BARS["rsi"]:
        rsi = _last(talib.RSI(c, timeperiod=RSI_PERIOD))
        # TA-Lib reports 0 when there was neither a gain nor a loss (0/0); a genuine 0 needs losses.
        if rsi == 0.0 and not np.any(np.diff(c) < 0):
            notes.append("RSI undefined (closes never changed): skipped rsi")
        else:
            ind["rsi"] = rsi
            components["rsi"] = _clip((rsi - 50.0) / RSI_SCALE)

    if n >= MIN_BARS["macd"] and atr > 0:
        macd, signal, hist = (_last(a) for a in talib.MACD(c, MACD_FAST, MACD_SLOW, MACD_SIGNAL))
        ind.update(macd=macd, macd_signal=signal, macd_hist=hist)
        components["macd"] = _clip(0.7 * np.tanh(macd / atr) + 0.3 * np.tanh(2.0 * hist / atr))
    elif n >= MIN_BARS["macd"]:
        notes.append("ATR is zero (no price range): skipped macd and support_resistance")

    if n >= MIN_BARS["bollinger"]:
        upper, middle, lower = (_last(a) for a in talib.BBANDS(c, BB_PERIOD, BB_WIDTH, BB_WIDTH))
        ind.update(bb_upper=upper, bb_middle=middle, bb_lower=lower)
        half_width = upper - middle
        components["bollinger"] = _clip((c[-1] - middle) / half_width) if half_width > 0 else 0.0

    if n >= MIN_BARS["adx"]:
        adx = _last(talib.ADX(h, l, c, timeperiod=ADX_PERIOD))
        plus_di = _last(talib.PLUS_DI(h, l, c, timeperiod=ADX_PERIOD))
        minus_di = _last(talib.MINUS_DI(h, l, c, timeperiod=ADX_PERIOD))
        ind.update(adx=adx, plus_di=plus_di, minus_di=minus_di)
        di_sum = plus_di + minus_di
        if np.isfinite(adx) and di_sum > 0:
            components["adx"] = _clip((plus_di - minus_di) / di_sum * min(adx / ADX_TRENDING, 1.0))
        else:
            notes.append("ADX/DI undefined (no directional movement): skipped adx")

    if n >= MIN_BARS["ma_trend"]:
        sma50 = _last(talib.SMA(c, SMA_SHORT))
        ind["sma50"] = sma50
        price_vs_short = np.tanh((c[-1] / sma50 - 1.0) / MA_SCALE)
        if n >= SMA_LONG:
            sma200 = _last(talib.SMA(c, SMA_LONG))
            ind["sma200"] = sma200
            components["ma_trend"] = _clip(0.5 * price_vs_short + 0.5 * np.tanh((sma50 / sma200 - 1.0) / MA_SCALE))
        else:
            notes.append(f"only {n} bars: ma_trend uses SMA50 alone (SMA200 needs {SMA_LONG})")
            components["ma_trend"] = _clip(price_vs_short)

    if n >= MIN_BARS["support_resistance"] and atr > 0:
        components["support_resistance"] = _support_resistance(h, l, c, atr, ind)

    if n >= MIN_BARS["volume"]:
        vote = _volume_confirmation(c, v, ind, notes)
        if vote is not None:
            components["volume"] = vote

    weights = {name: WEIGHTS[name] for name in components}
    total_weight = sum(weights.values())
    score = sum(weights[k] * components[k] for k in components) / total_weight if total_weight else 0.0
    if not components:
        notes.append("no technical component could be computed: score 0 (no evidence)")
    return TechnicalScore(score=_clip(score), components=components, weights=weights,
                          indicators=ind, data_quality=notes, bars_used=n)


def _volume_confirmation(c: np.ndarray, v: np.ndarray, ind: dict, notes: list[str]) -> float | None:
    """Direction of the last VOLUME_RECENT days' move, weighted by how heavy volume was."""
    recent = v[-VOLUME_RECENT:]
    baseline = v[-(VOLUME_RECENT + VOLUME_BASELINE):-VOLUME_RECENT]
    if np.isnan(recent).any() or np.isnan(baseline).sum() > VOLUME_BASELINE // 2:
        notes.append("volume missing in the last 25 bars: skipped volume")
        return None
    base = np.nanmean(baseline)
    if base <= 0:
        notes.append("no traded volume in the baseline (e.g. an index): skipped volume")
        return None
    rel_volume = float(recent.mean() / base)
    daily = np.diff(np.log(c[-(VOLUME_RECENT + VOLUME_BASELINE + 1):]))
    sd = float(np.std(daily, ddof=1))
    move = float(np.log(c[-1] / c[-1 - VOLUME_RECENT]))
    ind["relative_volume"] = rel_volume
    if sd <= 0:
        return 0.0
    direction = np.tanh(move / (sd * np.sqrt(VOLUME_RECENT)))
    # Ordinary volume counts half; twice the usual volume fully confirms the move.
    return _clip(direction * min(rel_volume / 2.0, 1.0))
