"""Regime classification: boundaries from the YAML, reasons, bad input, real VIX/SPY history."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk.limits import load_risk_matrix
from risk.regime import classify_regime

MATRIX = load_risk_matrix()


def name(vix, vix3m, rv=None):
    return classify_regime(vix, vix3m, rv, MATRIX).name


@pytest.mark.parametrize(
    "vix, vix3m, rv, expected",
    [
        (35.0, 40.0, None, "crisis"),  # VIX exactly at the crisis threshold (>=)
        (34.99, 40.0, None, "high_vol"),  # just below crisis, above high_vol level
        (22.0, 20.0, None, "high_vol"),  # ratio 1.10 exactly: not > 1.10, but backwardation
        (22.0, 19.99, None, "crisis"),  # ratio just above 1.10
        (25.0, 30.0, None, "high_vol"),  # VIX exactly at the high_vol threshold
        (24.99, 30.0, None, "neutral"),
        (20.0, 20.0, None, "neutral"),  # flat curve: neither backwardation nor contango
        (14.99, 15.0, None, "low_vol"),  # contango and VIX below 15
        (15.0, 18.0, None, "neutral"),  # VIX exactly 15: not < 15
        (14.0, 14.0, None, "neutral"),  # calm level but flat curve: no contango
        (12.0, 14.0, 0.1499, "low_vol"),
        (12.0, 14.0, 0.15, "neutral"),  # realized vol at the low_vol ceiling
        (12.0, 14.0, 0.25, "high_vol"),  # realized vol alone can raise the regime
        (12.0, 14.0, 0.45, "crisis"),
        (12.0, 14.0, 0.4499, "high_vol"),
        (22.11, 20.1, None, "high_vol"),  # exactly 1.1 (floats to 1.0999999999999999): not crisis
    ],
)
def test_boundaries(vix, vix3m, rv, expected):
    assert name(vix, vix3m, rv) == expected


def test_regime_carries_inputs_and_reasons():
    r = classify_regime(36.2, 30.0, 0.5, MATRIX)
    assert r.name == "crisis"
    assert r.vix == 36.2 and r.vix3m == 30.0 and r.term_ratio == pytest.approx(36.2 / 30.0)
    assert r.realized_vol == 0.5
    assert r.reasons == [
        "crisis: VIX 36.20 >= 35.00",
        "crisis: VIX/VIX3M 1.2067 > 1.1000 (backwardation)",
        "crisis: realized vol 0.5000 >= 0.4500",
    ]
    neutral = classify_regime(15.0, 18.0, None, MATRIX)
    assert neutral.reasons[0] == "neutral: no stress trigger fired; not low_vol because VIX 15.00 not < 15.00"
    assert "realized vol unknown" in neutral.reasons[-1]


def test_term_ratio_boundary_is_exact_despite_float_division(tmp_path):
    import yaml

    from tests.risk_factories import raw_matrix

    raw = raw_matrix()
    raw["regimes"]["low_vol"]["classify"].update(vix_below=20.0, term_ratio_below=0.95)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    matrix = load_risk_matrix(path)
    assert 15.77 / 16.6 < 0.95  # the raw float quotient of an exact 0.95 ratio
    assert classify_regime(15.77, 16.6, None, matrix).name == "neutral"  # 0.95 is not < 0.95
    assert classify_regime(15.76, 16.6, None, matrix).name == "low_vol"


def test_thresholds_come_from_the_matrix(tmp_path):
    import yaml

    from tests.risk_factories import raw_matrix

    raw = raw_matrix()
    raw["regimes"]["crisis"]["classify"]["vix_at_or_above"] = 30.0
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert classify_regime(31.0, 35.0, None, load_risk_matrix(path)).name == "crisis"
    assert classify_regime(31.0, 35.0, None, MATRIX).name == "high_vol"


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((math.nan, 20.0, None), "vix_close is NaN"),
        ((20.0, math.nan, None), "vix3m_close is NaN"),
        ((20.0, 22.0, math.nan), "realized_vol is NaN"),
        ((0.0, 22.0, None), "positive finite"),
        ((20.0, -1.0, None), "positive finite"),
        ((math.inf, 22.0, None), "positive finite"),
        ((0.18, 0.20, None), "quoted in points"),
        ((20.0, 22.0, 18.0), "looks like percent"),
        ((20.0, 22.0, -0.1), "non-negative"),
        (("abc", 22.0, None), "must be a number"),
    ],
)
def test_bad_input_is_a_clear_error(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        classify_regime(*args, matrix=MATRIX)


ORDER = {"low_vol": 0, "neutral": 1, "high_vol": 2, "crisis": 3}


@settings(max_examples=150, deadline=None)
@given(
    vix=st.floats(5, 90),
    bump=st.floats(0, 30),
    vix3m=st.floats(5, 90),
    rv=st.one_of(st.none(), st.floats(0, 2)),
)
def test_higher_vix_never_lowers_the_regime(vix, bump, vix3m, rv):
    # Raising VIX with the term ratio held fixed (VIX3M scaled with it) never calms the regime.
    low = classify_regime(vix, vix3m, rv, MATRIX)
    high = classify_regime(vix + bump, vix3m * (vix + bump) / vix, rv, MATRIX)
    assert ORDER[high.name] >= ORDER[low.name]
    assert low.reasons and high.reasons


def test_real_history_march_2020_is_crisis_and_2017_calm_is_not_stress(shared_data):
    vix = pd.read_csv(shared_data / "history" / "VIX_History.csv")
    vix["DATE"] = pd.to_datetime(vix["DATE"], format="%m/%d/%Y")
    vix = vix.set_index("DATE")["CLOSE"]
    spy = pd.read_csv(shared_data / "history" / "SPY_daily_ohlcv.csv", parse_dates=["date"]).set_index("date")
    log_returns = np.log(spy["close"]).diff()
    realized_20d = log_returns.rolling(20).std() * math.sqrt(252)

    day = pd.Timestamp("2020-03-16")
    assert vix[day] == pytest.approx(82.69, abs=0.01)
    assert realized_20d[day] > 0.45
    # VIX3M is not in the data set; a flat curve isolates the level and realized-vol rules.
    r = classify_regime(vix[day], vix[day], realized_20d[day], MATRIX)
    assert r.name == "crisis"
    assert r.reasons[0] == "crisis: VIX 82.69 >= 35.00"
    assert any(reason.startswith("crisis: realized vol") for reason in r.reasons)

    calm = pd.Timestamp("2017-11-03")
    assert vix[calm] < 10
    assert realized_20d[calm] < 0.15
    # In contango (VIX3M 15% above spot VIX, typical of 2017) it is low_vol; flat, neutral.
    assert classify_regime(vix[calm], vix[calm] * 1.15, realized_20d[calm], MATRIX).name == "low_vol"
    assert classify_regime(vix[calm], vix[calm], realized_20d[calm], MATRIX).name == "neutral"
