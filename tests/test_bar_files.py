"""Daily-bar files: what validation drops, and the exact report it gives."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from tools.providers.bar_files import BarFileError, read_bar_directory, read_bar_file, validate_bars

BAD_CSV = """date,open,high,low,close,volume
2024-01-02,100,101,99,100.5,1000
2024-01-03,100,99,101,100,1000
2024-01-04,100,102,99,103,1000
2024-01-05,-1,102,99,100,1000
2024-01-08,100,102,99,101,1000
2024-01-08,100,102,99,101,1000
2024-01-09,100,102,99,101,1000
2024-01-09,100,102,99,101.5,1000
not-a-date,100,102,99,101,1000
2024-01-10,100,102,99,abc,1000
2024-01-11,100,102,99,101,-5
2024-01-12,98,102,99,101,1000
2024-01-16,100,104,99,103,2000
"""


def test_bad_rows_are_dropped_with_an_exact_report(tmp_path):
    path = tmp_path / "ACME.csv"
    path.write_text(BAD_CSV)
    series, why = read_bar_file(path)
    assert why is None
    r = series.report
    assert (r.symbol, r.layout, r.rows_read, r.rows_kept) == ("ACME", "ohlcv", 13, 3)
    assert r.dropped == {
        "unparseable date": 1,
        "missing or non-numeric price": 1,
        "non-positive price": 1,
        "high below low": 1,
        "open outside [low, high]": 1,
        "close outside [low, high]": 1,
        "negative volume": 1,
        "duplicate date": 3,
    }
    # Line numbers are the file's (header is line 1).
    assert r.examples["high below low"] == ["line 3: 2024-01-03,100,99,101,100,1000"]
    assert r.examples["close outside [low, high]"] == ["line 4: 2024-01-04,100,102,99,103,1000"]
    assert r.examples["non-positive price"] == ["line 5: 2024-01-05,-1,102,99,100,1000"]
    assert r.examples["unparseable date"] == ["line 10: not-a-date,100,102,99,101,1000"]
    assert r.examples["open outside [low, high]"] == ["line 13: 2024-01-12,98,102,99,101,1000"]
    # Identical repeats of 2024-01-08 keep one copy; the conflicting pair of 2024-01-09 loses both.
    assert r.examples["duplicate date"] == ["line 7: 2024-01-08,100,102,99,101,1000",
                                            "line 8: 2024-01-09,100,102,99,101,1000",
                                            "line 9: 2024-01-09,100,102,99,101.5,1000"]
    assert list(series.bars.dates.astype(str)) == ["2024-01-02", "2024-01-08", "2024-01-16"]
    assert list(series.bars.close) == [100.5, 101.0, 103.0]
    summary = r.summary()
    assert summary.startswith("ACME.csv: 13 rows, kept 3, dropped 10")
    assert "high below low: 1 (first line 3: 2024-01-03,100,99,101,100,1000)" in summary
    # What a snapshot may be told: drops dated on or before a day (undated ones always).
    assert series.drops_until(np.datetime64("2024-01-04")) == {
        "unparseable date": 1, "high below low": 1, "close outside [low, high]": 1}


def test_parquet_is_validated_the_same_way(tmp_path):
    frame = pd.read_csv(pd.io.common.StringIO(BAD_CSV), dtype=str)
    frame.to_parquet(tmp_path / "ACME.parquet", index=False)
    (tmp_path / "ACME.parquet").rename(tmp_path / "acme.parquet")
    series, _ = read_bar_file(tmp_path / "acme.parquet")
    assert series.symbol == "ACME"
    assert series.report.rows_kept == 3 and series.report.rows_dropped == 10
    assert series.report.examples["high below low"] == ["line 3: 2024-01-03,100,99,101,100,1000"]


def test_us_dates_close_only_and_one_value_layouts(tmp_path):
    (tmp_path / "VIX_History.csv").write_text("DATE,OPEN,HIGH,LOW,CLOSE\n1/4/2010,21.68,21.68,20.03,20.04\n"
                                              "01/05/2010,20.05,20.13,19.34,19.35\n")
    (tmp_path / "SKEW_History.csv").write_text("DATE,SKEW\n01/04/2010,126.09\n01/05/2010,0\n")
    (tmp_path / "SPY_close.csv").write_text("date,close_price\n4/6/2015,207.83\n")
    (tmp_path / "ratios.csv").write_text("date,A,B\n2020-01-02,1,2\n")
    d = read_bar_directory(tmp_path)
    assert list(d.bars("VIX").dates.astype(str)) == ["2010-01-04", "2010-01-05"]
    assert d.series["SKEW"].report.layout == "value"
    assert d.series["SKEW"].report.dropped == {"non-positive price": 1}
    skew = d.bars("SKEW")
    assert skew.open[0] == skew.high[0] == skew.low[0] == skew.close[0] == 126.09
    assert np.isnan(skew.volume).all()  # an index has no volume; not a reason to drop
    assert d.series["SPY"].report.layout == "close"
    assert d.skipped == ("ratios.csv: not a daily bar file (columns date, A, B)",)


def test_of_two_files_for_one_symbol_the_ohlc_one_wins_and_the_other_is_named(tmp_path):
    (tmp_path / "SPY_daily.csv").write_text("date,open,high,low,close,volume\n2024-01-02,1,2,1,2,10\n")
    (tmp_path / "SPY_close.csv").write_text("date,close\n2024-01-02,2\n2024-01-03,2.1\n")
    d = read_bar_directory(tmp_path)
    assert d.series["SPY"].report.file == "SPY_daily.csv"
    assert d.not_used == ("SPY_close.csv: SPY taken from SPY_daily.csv (OHLC, 1 valid rows)",)


def test_files_are_parsed_once_and_again_when_changed(tmp_path):
    path = tmp_path / "ACME.csv"
    path.write_text("date,open,high,low,close,volume\n2024-01-02,1,2,1,2,10\n")
    first, _ = read_bar_file(path)
    assert read_bar_file(path)[0] is first
    path.write_text("date,open,high,low,close,volume\n2024-01-02,1,2,1,2,10\n2024-01-03,2,3,2,3,10\n")
    os.utime(path, ns=(1, 1))  # a new modification time even on coarse file systems
    second, _ = read_bar_file(path)
    assert second is not first and len(second.bars) == 2


def test_unusable_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(BarFileError, match="not a directory"):
        read_bar_directory(tmp_path / "nope")
    with pytest.raises(BarFileError, match="no .csv or .parquet files"):
        read_bar_directory(tmp_path)
    (tmp_path / "BAD.csv").write_text("date,open,high,low,close\nx,1,1,1,1\n")
    series, why = read_bar_file(tmp_path / "BAD.csv")
    assert series is None and why.startswith("BAD.csv: no valid rows")


def test_validation_is_vectorized_over_large_inputs():
    n = 200_000
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    dates = np.datetime64("1900-01-01") + np.arange(n)
    high, low = close * 1.01, close * 0.99
    reason = validate_bars(dates, close, high, low, close, np.ones(n))
    assert (reason == -1).all()
    high[5] = low[5] * 0.5
    dates[7] = dates[6]
    reason = validate_bars(dates, close, high, low, close, np.ones(n))
    assert reason[5] == 3 and reason[6] == reason[7] == 7 and (reason >= 0).sum() == 3
