"""A small files-market directory built from the shared data (read there, never copied into the
repository): the last sessions of SPY's daily bars, VIX, VIX3M, VIX9D and SKEW up to a day, and
optionally that day's Cboe quote table for SPY."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from tests.conftest import SHARED_DATA

CHAIN_DAY = "2023-09-14"  # spy_quotedata_2023-09-14.csv, exported 16:31 EDT
SESSIONS = 320


def _last_rows(source: Path, last_day: str, date_column: str, us_dates: bool) -> pd.DataFrame:
    frame = pd.read_csv(source, dtype=str)
    dates = pd.to_datetime(frame[date_column], format="%m/%d/%Y" if us_dates else "%Y-%m-%d")
    return frame[dates <= pd.Timestamp(last_day)].tail(SESSIONS)


def write_market_dir(target: Path, *, last_day: str = CHAIN_DAY, chain: bool = True) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    history = SHARED_DATA / "history"
    _last_rows(history / "SPY_daily_ohlcv.csv", last_day, "date", False).to_csv(target / "SPY.csv", index=False)
    for symbol, name in (("VIX", "VIX_History_1990.csv"), ("VIX3M", "VIX3M_History.csv"),
                         ("VIX9D", "VIX9D_History.csv"), ("SKEW", "SKEW_History.csv")):
        _last_rows(history / name, last_day, "DATE", True).to_csv(target / f"{symbol}.csv", index=False)
    if chain:
        shutil.copyfile(SHARED_DATA / "cboe" / f"spy_quotedata_{last_day}.csv",
                        target / f"spy_quotedata_{last_day}.csv")
    return target
