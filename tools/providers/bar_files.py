"""Daily bars from a directory of files, one file per series, validated row by row.

Layouts read (header names are matched case-insensitively, surrounding spaces ignored):
* ``date,open,high,low,close[,volume]`` -- OHLC(V) bars (a user's ``TICKER.csv``, the shared
  ``SPY_daily_ohlcv.csv``, Cboe's ``VIX_History.csv``);
* ``date,close`` or ``date,close_price`` -- closes only;
* ``date,<one value column>`` -- an index published as one number a day (Cboe's SKEW, VVIX).
Close-only and one-value series get open = high = low = close. Files of any other shape (e.g.
the put/call-ratio table) are skipped and listed as skipped, never guessed at.

Dates are ISO ``YYYY-MM-DD`` or US ``M/D/YYYY`` (zero padding optional); per file the format that
parses more rows wins. A file's series symbol is its stem up to the first underscore, upper-cased
(``VIX_History_1990.csv`` -> VIX, ``aapl.parquet`` -> AAPL). When several files name one symbol,
the one with OHLC beats a close-only one, then the one with more valid rows wins; the others are
reported as not used. Cboe quote tables (``<ticker>_quotedata_<YYYY-MM-DD>.csv``) in the same
directory are chains, not bars, and are left to the chain reader.

Validation drops a row, for the first reason that applies, in this order: unparseable date,
missing or non-numeric price, price <= 0, high < low, open outside [low, high], close outside
[low, high], negative volume, duplicate date. Duplicates: rows that repeat a date with identical
values keep one copy; when the values differ, every row of that date is dropped (nothing says
which is right). Each file's `BarFileReport` counts drops per reason with the first examples
(1-based file line and the raw row). Files are parsed once per process (cached on path, size and
modification time) and validated with vectorized NumPy, not per row.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tools.providers.base import Bars

BAR_SUFFIXES = (".csv", ".parquet")
DROP_REASONS = (
    "unparseable date",
    "missing or non-numeric price",
    "non-positive price",
    "high below low",
    "open outside [low, high]",
    "close outside [low, high]",
    "negative volume",
    "duplicate date",
)
EXAMPLES_KEPT = 3
_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y")
QUOTE_TABLE_NAME = re.compile(r"^[A-Za-z0-9.\-^]+_quotedata_\d{4}-\d{2}-\d{2}\.csv$", re.IGNORECASE)
_CLOSE_NAMES = ("close", "close_price", "adj_close", "adj close")


class BarFileError(ValueError):
    """A directory or file that cannot be read as daily bars; the message names it."""


@dataclass(frozen=True)
class BarFileReport:
    """What one file held and what validation dropped from it."""

    file: str
    symbol: str
    layout: str  # "ohlcv", "ohlc", "close" or "value"
    rows_read: int
    rows_kept: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first "line N: raw row"
    first_date: str | None = None
    last_date: str | None = None

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One line, e.g. 'VIX_History.csv: 3,860 rows, kept 3,858, dropped 2 (high below low: 2, first line 5: ...)'."""
        head = f"{self.file}: {self.rows_read:,} rows, kept {self.rows_kept:,}"
        if not self.dropped:
            return head + ", dropped none"
        parts = [f"{reason}: {n} (first {'; '.join(self.examples.get(reason, []))})"
                 for reason, n in self.dropped.items()]
        return head + f", dropped {self.rows_dropped:,} — " + " | ".join(parts)

    def to_dict(self) -> dict:
        return {"file": self.file, "symbol": self.symbol, "layout": self.layout, "rows_read": self.rows_read,
                "rows_kept": self.rows_kept, "dropped": dict(self.dropped),
                "examples": {k: list(v) for k, v in self.examples.items()},
                "first_date": self.first_date, "last_date": self.last_date}


@dataclass(frozen=True)
class BarSeries:
    symbol: str
    bars: Bars
    report: BarFileReport
    has_ohlc: bool
    dropped_dates: np.ndarray  # datetime64[D] of each dropped row (NaT: date unreadable)
    dropped_reasons: np.ndarray  # index into DROP_REASONS, aligned with dropped_dates
    dropped_rows: tuple[str, ...]  # "line N: raw row", aligned with dropped_dates

    def _known(self, last: np.datetime64) -> np.ndarray:
        return np.isnat(self.dropped_dates) | (self.dropped_dates <= last)

    def drops_until(self, last: np.datetime64) -> dict[str, int]:
        """Dropped rows dated on or before `last` (and undated ones), by reason: what a snapshot
        as of `last` may be told without hearing about later rows."""
        codes, counts = np.unique(self.dropped_reasons[self._known(last)], return_counts=True)
        return {DROP_REASONS[c]: int(n) for c, n in zip(codes, counts)}

    def drop_examples_until(self, last: np.datetime64) -> dict[str, list[str]]:
        """The first EXAMPLES_KEPT dropped rows per reason among those `drops_until` counts."""
        out: dict[str, list[str]] = {}
        for i in np.flatnonzero(self._known(last)):
            shown = out.setdefault(DROP_REASONS[self.dropped_reasons[i]], [])
            if len(shown) < EXAMPLES_KEPT:
                shown.append(self.dropped_rows[i])
        return out


@dataclass(frozen=True)
class BarDirectory:
    """Every usable series of a directory, by symbol, and the reports behind them."""

    path: str
    series: dict[str, BarSeries]
    reports: tuple[BarFileReport, ...]  # every file read, used or not
    skipped: tuple[str, ...]  # "file: why" for files that are not daily bars
    not_used: tuple[str, ...]  # "file: why" for files that lost to another file of the same symbol

    def bars(self, symbol: str) -> Bars | None:
        s = self.series.get(symbol.upper())
        return None if s is None else s.bars


def _symbol_of(path: Path) -> str:
    return path.stem.split("_")[0].strip().upper()


def _read_table(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
        frame = frame.reset_index() if frame.index.name else frame
        return frame.astype(str)
    return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)


def _layout(columns: list[str]) -> tuple[str, dict[str, str]] | None:
    """(layout, {field: column}) for a recognised header, else None."""
    lower = {c.strip().lower(): c for c in columns}
    date_col = lower.get("date")
    if date_col is None:
        return None
    if all(name in lower for name in ("open", "high", "low", "close")):
        cols = {f: lower[f] for f in ("open", "high", "low", "close")}
        if "volume" in lower:
            return "ohlcv", {"date": date_col, **cols, "volume": lower["volume"]}
        return "ohlc", {"date": date_col, **cols}
    others = [c for c in columns if c.strip().lower() != "date"]
    close = next((lower[n] for n in _CLOSE_NAMES if n in lower), None)
    if close is not None and len(others) == 1:
        return "close", {"date": date_col, "close": close}
    if len(others) == 1:
        return "value", {"date": date_col, "close": others[0]}
    return None


def _parse_dates(text: np.ndarray) -> np.ndarray:
    """datetime64[D] per row (NaT where unreadable), in whichever known format reads more rows."""
    best = None
    for fmt in _DATE_FORMATS:
        parsed = pd.to_datetime(pd.Series(text).str.strip(), format=fmt, errors="coerce")
        if best is None or parsed.notna().sum() > best.notna().sum():
            best = parsed
    return best.to_numpy(dtype="datetime64[D]")


def _numbers(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column].str.strip().str.replace(",", "", regex=False), errors="coerce").to_numpy(float)


def validate_bars(dates: np.ndarray, open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                  volume: np.ndarray) -> np.ndarray:
    """Per row, the index into DROP_REASONS of why it is dropped, or -1 to keep it (vectorized).

    Volume may be NaN (indices have none); prices may not.
    """
    reason = np.full(len(dates), -1, dtype=np.int8)

    def mark(code: int, bad: np.ndarray) -> None:
        reason[(reason < 0) & bad] = code

    prices = np.stack([open_, high, low, close])
    mark(0, np.isnat(dates))
    mark(1, ~np.isfinite(prices).all(axis=0))
    with np.errstate(invalid="ignore"):
        mark(2, (prices <= 0).any(axis=0))
        mark(3, high < low)
        mark(4, (open_ < low) | (open_ > high))
        mark(5, (close < low) | (close > high))
        mark(6, volume < 0)
    # Duplicates among the rows still standing: identical repeats keep their first copy,
    # conflicting ones lose every row of the date.
    alive = np.flatnonzero(reason < 0)
    if len(alive):
        d = dates[alive].astype(np.int64)
        order = np.argsort(d, kind="stable")
        ds = d[order]
        repeated = np.zeros(len(ds), dtype=bool)
        repeated[1:] = ds[1:] == ds[:-1]
        if repeated.any():
            values = np.stack([open_, high, low, close, np.nan_to_num(volume, nan=-1.0)])[:, alive][:, order]
            same_as_previous = np.zeros(len(ds), dtype=bool)
            same_as_previous[1:] = (values[:, 1:] == values[:, :-1]).all(axis=0)
            group = np.cumsum(~repeated) - 1  # one id per date
            conflicting = np.zeros(group[-1] + 1, dtype=bool)
            np.logical_or.at(conflicting, group, repeated & ~same_as_previous)
            drop_sorted = conflicting[group] | (repeated & same_as_previous)
            reason[alive[order[drop_sorted]]] = 7
    return reason


def _report_and_bars(path: Path, symbol: str, layout: str, frame: pd.DataFrame,
                     cols: dict[str, str]) -> tuple[BarFileReport, Bars, np.ndarray, np.ndarray, tuple[str, ...]]:
    dates = _parse_dates(frame[cols["date"]].to_numpy(dtype=str))
    close = _numbers(frame, cols["close"])
    if layout in ("ohlc", "ohlcv"):
        open_, high, low = (_numbers(frame, cols[f]) for f in ("open", "high", "low"))
    else:
        open_ = high = low = close
    volume = _numbers(frame, cols.get("volume"))
    reason = validate_bars(dates, open_, high, low, close, volume)
    dropped_rows = np.flatnonzero(reason >= 0)
    # +2: one header line, 1-based lines (CSV); Parquet rows are numbered the same way.
    raw = frame.iloc[dropped_rows].astype(str).agg(",".join, axis=1).tolist() if len(dropped_rows) else []
    dropped_text = tuple(f"line {i + 2}: {text}" for i, text in zip(dropped_rows, raw))
    dropped, examples = {}, {}
    codes, counts = np.unique(reason[dropped_rows], return_counts=True)
    for code, n in zip(codes, counts):
        name = DROP_REASONS[code]
        dropped[name] = int(n)
        examples[name] = [dropped_text[j] for j in np.flatnonzero(reason[dropped_rows] == code)[:EXAMPLES_KEPT]]
    keep = np.flatnonzero(reason < 0)
    keep = keep[np.argsort(dates[keep], kind="stable")]
    bars = Bars(dates[keep].astype("datetime64[D]"), open_[keep], high[keep], low[keep], close[keep], volume[keep])
    for a in (bars.dates, bars.open, bars.high, bars.low, bars.close, bars.volume):
        a.setflags(write=False)  # cached and shared between snapshots
    report = BarFileReport(
        file=path.name, symbol=symbol, layout=layout, rows_read=len(frame), rows_kept=len(keep),
        dropped=dropped, examples=examples,
        first_date=str(bars.dates[0]) if len(keep) else None, last_date=str(bars.dates[-1]) if len(keep) else None,
    )
    return report, bars, dates[dropped_rows], reason[dropped_rows], dropped_text


def read_bar_file(path: str | os.PathLike) -> tuple[BarSeries | None, str | None]:
    """(series, None) for a daily-bar file, or (None, why it is skipped). BarFileError if unreadable."""
    path = Path(path)
    stat = path.stat()
    return _read_bar_file_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_bar_file_cached(path_text: str, size: int, mtime_ns: int) -> tuple[BarSeries | None, str | None]:
    path = Path(path_text)
    try:
        frame = _read_table(path)
    except (OSError, ValueError, ImportError, pd.errors.ParserError) as exc:
        raise BarFileError(f"{path}: cannot read as a table: {exc}") from exc
    found = _layout(list(frame.columns))
    if found is None:
        return None, f"{path.name}: not a daily bar file (columns {', '.join(map(str, frame.columns[:6]))}"\
                     f"{'…' if len(frame.columns) > 6 else ''})"
    layout, cols = found
    symbol = _symbol_of(path)
    report, bars, dropped_dates, dropped_reasons, dropped_text = _report_and_bars(path, symbol, layout, frame, cols)
    if report.rows_kept == 0:
        return None, f"{path.name}: no valid rows ({report.summary()})"
    return BarSeries(symbol=symbol, bars=bars, report=report, has_ohlc=layout in ("ohlc", "ohlcv"),
                     dropped_dates=dropped_dates, dropped_reasons=dropped_reasons, dropped_rows=dropped_text), None


_directory_lock = threading.Lock()


def read_bar_directory(directory: str | os.PathLike) -> BarDirectory:
    """Every daily-bar file of `directory` (CSV and Parquet), validated; see the module docstring."""
    root = Path(directory)
    if not root.is_dir():
        raise BarFileError(f"{root}: not a directory of daily bar files")
    # Cboe quote tables (`<ticker>_quotedata_<date>.csv`) may share the directory: they are chains,
    # read by the chain reader, not bars.
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in BAR_SUFFIXES
                   and not QUOTE_TABLE_NAME.match(p.name))
    if not files:
        raise BarFileError(f"{root}: no .csv or .parquet files")
    with _directory_lock:
        results = [(p, read_bar_file(p)) for p in files]
    candidates: dict[str, list[BarSeries]] = {}
    reports, skipped = [], []
    for p, (series, why) in results:
        if series is None:
            skipped.append(why)
            continue
        reports.append(series.report)
        candidates.setdefault(series.symbol, []).append(series)
    chosen, not_used = {}, []
    for symbol, options in candidates.items():
        ranked = sorted(options, key=lambda s: (s.has_ohlc, s.report.rows_kept), reverse=True)
        chosen[symbol] = ranked[0]
        not_used += [f"{s.report.file}: {symbol} taken from {ranked[0].report.file} "
                     f"({'OHLC, ' if ranked[0].has_ohlc else ''}{ranked[0].report.rows_kept:,} valid rows)"
                     for s in ranked[1:]]
    return BarDirectory(path=str(root), series=chosen, reports=tuple(reports), skipped=tuple(skipped),
                        not_used=tuple(not_used))
