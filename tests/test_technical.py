"""Technical score: direction on constructed trends, bounds on random walks, real SPY windows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.technical import MIN_BARS, WEIGHTS, technical_score


def _bars(close: np.ndarray, rng: np.random.Generator, volume: float = 1e6):
    """OHLCV around a close path: open at the previous close, a random range around the body."""
    open_ = np.r_[close[0], close[:-1]]
    wick = np.abs(rng.normal(0, 0.004, len(close))) * close
    high = np.maximum(open_, close) + wick
    low = np.minimum(open_, close) - wick
    return open_, high, low, close, volume * rng.uniform(0.8, 1.2, len(close))


def _trend(seed: int, drift: float, n: int = 260) -> tuple:
    rng = np.random.default_rng(seed)
    return _bars(100 * np.exp(np.cumsum(drift + rng.normal(0, 0.003, n))), rng)


@pytest.mark.parametrize("seed", range(8))
def test_steady_uptrend_is_bullish(seed):
    s = technical_score(*_trend(seed, +0.003))
    assert s.score > 0.3
    assert set(s.components) == set(WEIGHTS)
    assert s.data_quality == []


@pytest.mark.parametrize("seed", range(8))
def test_steady_downtrend_is_bearish(seed):
    assert technical_score(*_trend(seed, -0.003)).score < -0.3


def test_flat_noise_scores_near_zero():
    scores = []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        scores.append(technical_score(*_bars(100 * np.exp(rng.normal(0, 0.01, 260)), rng)).score)
    scores = np.array(scores)
    assert np.all(np.abs(scores) < 0.35)
    assert abs(scores.mean()) < 0.1


def test_indicators_are_talib_values_and_score_is_weighted_mean():
    o, h, l, c, v = _trend(3, 0.001)
    s = technical_score(o, h, l, c, v)
    assert s.indicators["rsi"] == pytest.approx(talib.RSI(c, 14)[-1])
    assert s.indicators["adx"] == pytest.approx(talib.ADX(h, l, c, 14)[-1])
    assert s.indicators["sma200"] == pytest.approx(c[-200:].mean())
    assert s.components["rsi"] == pytest.approx(np.clip((s.indicators["rsi"] - 50) / 30, -1, 1))
    weighted = sum(WEIGHTS[k] * s.components[k] for k in s.components) / sum(WEIGHTS[k] for k in s.components)
    assert s.score == pytest.approx(weighted)


def test_short_history_drops_components_with_a_note():
    o, h, l, c, v = _trend(1, 0.003, n=40)
    s = technical_score(o, h, l, c, v)
    assert "ma_trend" not in s.components and "volume" in s.components
    assert "rsi" in s.components and "macd" in s.components
    assert any("skipped" in n and "ma_trend" in n for n in s.data_quality)
    o, h, l, c, v = _trend(1, 0.003, n=120)
    s = technical_score(o, h, l, c, v)
    assert "ma_trend" in s.components and "sma200" not in s.indicators
    assert any("SMA50 alone" in n for n in s.data_quality)


@pytest.mark.parametrize("n", [0, 1, 5, 14])
def test_tiny_history_never_crashes(n):
    o, h, l, c, v = _trend(2, 0.003, n=max(n, 1))
    s = technical_score(o[:n], h[:n], l[:n], c[:n], v[:n])
    assert s.score == 0.0 and s.components == {}
    assert any("no technical component" in note for note in s.data_quality)


def test_nan_prices_are_dropped_and_reported():
    o, h, l, c, v = (a.copy() for a in _trend(4, 0.003))
    c[100] = np.nan
    h[150] = np.inf
    l[200] = -1.0
    s = technical_score(o, h, l, c, v)
    assert s.bars_used == 257
    assert any("dropped 3 bars" in n for n in s.data_quality)
    assert s.score > 0.3 and math.isfinite(s.score)


def test_missing_or_absent_volume_drops_only_volume():
    o, h, l, c, v = _trend(5, 0.003)
    v = v.copy()
    v[-2] = np.nan
    s = technical_score(o, h, l, c, v)
    assert "volume" not in s.components and len(s.components) == len(WEIGHTS) - 1
    assert any("volume missing" in n for n in s.data_quality)
    s = technical_score(o, h, l, c, np.zeros(len(c)))  # an index: no traded volume
    assert "volume" not in s.components
    assert any("no traded volume" in n for n in s.data_quality)


def test_bad_shapes_and_inverted_bars_raise():
    o, h, l, c, v = _trend(6, 0.0, n=60)
    with pytest.raises(ValueError, match="equal length"):
        technical_score(o, h, l, c[:-1], v)
    with pytest.raises(ValueError, match="high < low"):
        technical_score(o, l, h, c, v)


def test_constant_prices_are_neutral_and_finite():
    n = 260
    c = np.full(n, 50.0)
    s = technical_score(c, c, c, c, np.full(n, 1e5))
    assert math.isfinite(s.score) and abs(s.score) < 1e-9
    assert "rsi" not in s.components and any("RSI undefined" in n for n in s.data_quality)
    assert all(math.isfinite(x) and -1 <= x <= 1 for x in s.components.values())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 320),
    vol=st.floats(0.0, 0.08),
    drift=st.floats(-0.01, 0.01),
)
def test_score_bounded_and_finite_on_random_walks(seed, n, vol, drift):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(drift + rng.normal(0, vol, n)))
    s = technical_score(*_bars(close, rng))
    assert math.isfinite(s.score) and -1.0 <= s.score <= 1.0
    for name, value in s.components.items():
        assert math.isfinite(value) and -1.0 <= value <= 1.0, name
        assert n >= MIN_BARS[name], name


# ----------------------------------------------------------------------------- real SPY


@pytest.fixture(scope="module")
def spy(shared_data):
    return pd.read_csv(shared_data / "history" / "SPY_daily_ohlcv.csv", parse_dates=["date"])


def _score_until(spy, day: str):
    x = spy[spy["date"] <= day]
    return technical_score(x["open"].to_numpy(), x["high"].to_numpy(), x["low"].to_numpy(),
                           x["close"].to_numpy(), x["volume"].to_numpy())


@pytest.mark.parametrize("day", ["2020-02-28", "2020-03-12", "2020-03-20", "2008-10-10", "2022-06-16"])
def test_spy_selloffs_score_bearish(spy, day):
    s = _score_until(spy, day)
    assert s.score < -0.3, s.components
    assert s.components["rsi"] < 0 and s.components["macd"] < 0


@pytest.mark.parametrize("day", ["2017-12-29", "2021-12-31", "2024-05-31"])
def test_spy_steady_bull_markets_score_bullish(spy, day):
    s = _score_until(spy, day)
    assert s.score > 0.2, s.components
    assert s.components["ma_trend"] > 0
