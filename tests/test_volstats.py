"""Realized-vol estimators and IV rank/percentile: hand-computed values, properties, bad input."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.volstats import (
    close_to_close_vol,
    garman_klass_vol,
    iv_percentile,
    iv_rank,
    parkinson_vol,
    realized_vol_summary,
    yang_zhang_vol,
)

# Five hand-written daily bars (open, high, low, close).
BARS = [
    (100.0, 102.0, 99.0, 101.0),
    (101.5, 103.0, 100.5, 102.5),
    (102.0, 102.5, 98.5, 99.0),
    (99.5, 101.0, 97.0, 100.0),
    (100.5, 104.0, 100.0, 103.5),
]
O, H, L, C = (np.array(col) for col in zip(*BARS))


def test_close_to_close_matches_hand_computation():
    returns = [math.log(C[i] / C[i - 1]) for i in range(1, 5)]
    expected = statistics.stdev(returns) * math.sqrt(252)  # sample stdev, ddof = 1
    vol = close_to_close_vol(C, window=4)
    assert np.isnan(vol[:4]).all()
    assert vol[4] == pytest.approx(expected, rel=1e-12)


def test_parkinson_matches_hand_computation():
    per_bar = [math.log(h / l) ** 2 for h, l in zip(H[2:], L[2:])]
    expected = math.sqrt(sum(per_bar) / (4 * 3 * math.log(2)) * 252)
    vol = parkinson_vol(H, L, window=3)
    assert np.isnan(vol[:2]).all()
    assert vol[4] == pytest.approx(expected, rel=1e-12)


def test_garman_klass_matches_hand_computation():
    terms = [0.5 * math.log(h / l) ** 2 - (2 * math.log(2) - 1) * math.log(c / o) ** 2
             for o, h, l, c in BARS[1:]]
    expected = math.sqrt(sum(terms) / 4 * 252)
    assert garman_klass_vol(O, H, L, C, window=4)[4] == pytest.approx(expected, rel=1e-12)


def test_yang_zhang_matches_hand_computation():
    n = 4
    overnight = [math.log(BARS[i][0] / BARS[i - 1][3]) for i in range(1, 5)]
    open_close = [math.log(BARS[i][3] / BARS[i][0]) for i in range(1, 5)]
    rs = [math.log(h / c) * math.log(h / o) + math.log(l / c) * math.log(l / o) for o, h, l, c in BARS[1:]]
    k = 0.34 / (1.34 + (n + 1) / (n - 1))
    variance = statistics.variance(overnight) + k * statistics.variance(open_close) + (1 - k) * sum(rs) / n
    vol = yang_zhang_vol(O, H, L, C, window=4)
    assert np.isnan(vol[:4]).all()
    assert vol[4] == pytest.approx(math.sqrt(variance * 252), rel=1e-12)


def test_constant_prices_have_zero_vol():
    flat = np.full(40, 50.0)
    for vol in (close_to_close_vol(flat, 20), parkinson_vol(flat, flat, 20),
                garman_klass_vol(flat, flat, flat, flat, 20), yang_zhang_vol(flat, flat, flat, flat, 20)):
        assert np.all(vol[~np.isnan(vol)] == 0.0)
        assert np.isfinite(vol[-1])


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(1e-3, 1e4), seed=st.integers(0, 10_000))
def test_estimators_do_not_depend_on_the_price_level(scale, seed):
    o, h, l, c = _random_bars(np.random.default_rng(seed), 40)
    for estimator in (lambda o, h, l, c: yang_zhang_vol(o, h, l, c, 10),
                      lambda o, h, l, c: garman_klass_vol(o, h, l, c, 10),
                      lambda o, h, l, c: parkinson_vol(h, l, 10),
                      lambda o, h, l, c: close_to_close_vol(c, 10)):
        np.testing.assert_allclose(estimator(o * scale, h * scale, l * scale, c * scale),
                                   estimator(o, h, l, c), rtol=1e-9, equal_nan=True)


def _random_bars(rng, n, daily_vol=0.01, steps=1):
    """Bars from a driftless geometric Brownian path sampled `steps` times a day."""
    log_path = np.cumsum(rng.normal(0.0, daily_vol / math.sqrt(steps), n * steps + 1))
    path = 100.0 * np.exp(log_path)
    o = path[:-1:steps][:n]
    c = path[steps::steps][:n]
    segments = np.stack([path[i * steps:(i + 1) * steps + 1] for i in range(n)])
    return o, segments.max(axis=1), segments.min(axis=1), c


def test_estimators_recover_the_vol_of_a_simulated_path():
    # 2000 days of a 1%-a-day GBM sampled 390 times a day (minute bars): every estimator should
    # land near 0.01 * sqrt(252) = 15.9%. Range estimators are biased low by discrete sampling,
    # a few percent at 390 samples.
    o, h, l, c = _random_bars(np.random.default_rng(7), 2000, daily_vol=0.01, steps=390)
    target = 0.01 * math.sqrt(252)
    assert close_to_close_vol(c, 1999)[-1] == pytest.approx(target, rel=0.05)
    assert parkinson_vol(h, l, 2000)[-1] == pytest.approx(target, rel=0.07)
    assert garman_klass_vol(o, h, l, c, 2000)[-1] == pytest.approx(target, rel=0.07)
    # Overnight gaps are zero in this simulation (open = previous close): Yang-Zhang too.
    assert yang_zhang_vol(o, h, l, c, 1999)[-1] == pytest.approx(target, rel=0.07)


def test_close_to_close_agrees_with_pandas_rolling_std(shared_data):
    spy = pd.read_csv(shared_data / "history" / "SPY_daily_ohlcv.csv").tail(300)
    expected = np.log(spy["close"]).diff().rolling(20).std() * math.sqrt(252)
    np.testing.assert_allclose(close_to_close_vol(spy["close"].to_numpy(), 20), expected.to_numpy(),
                               rtol=1e-10, equal_nan=True)


def test_summary_on_real_spy_history_is_plausible(shared_data):
    spy = pd.read_csv(shared_data / "history" / "SPY_daily_ohlcv.csv")
    summary = realized_vol_summary(spy["open"], spy["high"], spy["low"], spy["close"])
    for estimator, by_window in summary.values.items():
        for window, stat in by_window.items():
            assert stat.reason is None
            assert 0.02 < stat.value < 1.5, (estimator, window, stat)
    assert set(summary.to_dict()["yang_zhang"]) == {"10", "20", "30"}


def test_summary_with_short_history_is_nan_with_reason():
    summary = realized_vol_summary(O, H, L, C, windows=(4, 10))
    assert summary.values["parkinson"][4].value == pytest.approx(parkinson_vol(H, L, 4)[-1])
    assert summary.values["close_to_close"][4].reason is None
    short = summary.values["yang_zhang"][10]
    assert np.isnan(short.value) and "need 11 bars" in short.reason
    assert summary.to_dict()["yang_zhang"]["10"]["value"] is None


def test_summary_with_missing_bar_in_latest_window():
    c = C.copy()
    c[-2] = np.nan
    summary = realized_vol_summary(O, H, L, c, windows=(3,))
    stat = summary.values["close_to_close"][3]
    assert np.isnan(stat.value) and "missing" in stat.reason
    assert summary.values["parkinson"][3].reason is None  # high/low are complete


@pytest.mark.parametrize("bars, message", [
    ((O, H, L, C[:-1]), "bars"),
    ((O, L, H, C), "inconsistent"),
    ((O, H, np.where(np.arange(5) == 2, -1.0, L), C), "positive"),
])
def test_bad_ohlc_input_raises_clear_error(bars, message):
    with pytest.raises(ValueError, match=message):
        yang_zhang_vol(*bars, window=2)


def test_bad_window_raises():
    with pytest.raises(ValueError, match="window"):
        close_to_close_vol(C, 1)
    with pytest.raises(ValueError, match="window"):
        parkinson_vol(H, L, 2.5)


# ----------------------------------------------------------------------------- IV rank / percentile


def test_iv_rank_and_percentile_hand_computed():
    history = np.array([0.10, 0.20, 0.30, 0.40, 0.50])
    rank = iv_rank(history, 0.25, lookback=5)
    assert rank.value == pytest.approx(100 * (0.25 - 0.10) / (0.50 - 0.10))
    assert rank.n_observations == 5 and rank.reason is None
    assert iv_percentile(history, 0.25, lookback=5).value == pytest.approx(40.0)  # 2 of 5 below
    assert iv_percentile(history, 0.30, lookback=5).value == pytest.approx(40.0)  # strictly below
    # A current value outside the history's range bounds the range itself.
    assert iv_rank(history, 0.60, lookback=5).value == pytest.approx(100.0)
    assert iv_rank(history, 0.05, lookback=5).value == pytest.approx(0.0)


def test_iv_rank_uses_only_the_lookback_window():
    history = np.concatenate([[5.0], np.linspace(0.1, 0.3, 252)])  # the old spike is > 252 days ago
    assert iv_rank(history, 0.3).value == pytest.approx(100.0)


def test_iv_rank_short_history_is_nan_with_reason():
    stat = iv_rank(np.linspace(0.1, 0.2, 100), 0.15)
    assert np.isnan(stat.value)
    assert "need 252" in stat.reason and stat.n_observations == 100
    relaxed = iv_rank(np.linspace(0.1, 0.2, 100), 0.15, min_observations=60)
    assert relaxed.value == pytest.approx(50.0)


def test_iv_rank_skips_missing_days_and_flags_bad_current():
    history = np.linspace(0.1, 0.2, 300)
    history[-10:] = np.nan
    stat = iv_percentile(history, 0.15)
    assert np.isnan(stat.value) and "have 242" in stat.reason
    assert "current IV" in iv_rank(np.linspace(0.1, 0.2, 300), float("nan")).reason
    flat = iv_rank(np.full(252, 0.2), 0.2)
    assert np.isnan(flat.value) and "flat" in flat.reason
    with pytest.raises(ValueError, match="negative"):
        iv_rank(np.full(252, -0.2), 0.2)


def test_iv_rank_on_real_vix_history(shared_data):
    vix = pd.read_csv(shared_data / "history" / "VIX_History.csv")["CLOSE"].to_numpy()
    # 2025-04-04 closed at the highest VIX of the previous year.
    assert vix[-1] >= vix[-253:-1].max()
    assert iv_rank(vix[:-1], vix[-1]).value == pytest.approx(100.0)
    assert iv_percentile(vix[:-1], vix[-1]).value == pytest.approx(100.0)
    mid = iv_percentile(vix[:-1], float(np.median(vix[-253:-1])))
    assert 45.0 <= mid.value <= 55.0


@settings(max_examples=50, deadline=None)
@given(history=st.lists(st.floats(0.01, 2.0), min_size=10, max_size=40), current=st.floats(0.0, 3.0))
def test_rank_and_percentile_stay_in_range(history, current):
    rank = iv_rank(history, current, lookback=10)
    pct = iv_percentile(history, current, lookback=10)
    assert 0.0 <= pct.value <= 100.0
    assert np.isnan(rank.value) or 0.0 <= rank.value <= 100.0
