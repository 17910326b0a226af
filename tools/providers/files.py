"""The `files` market: a user's own directory of daily bars and Cboe quote tables.

`hedgegraph run --market files --data DIR` (or `market: files` with `files.data_dir`) decides on
DIR: one daily-bar file per ticker (``TICKER.csv`` / ``TICKER.parquet``, layouts as in
`tools.providers.bar_files`) and Cboe quote tables per ticker and session
(``<ticker>_quotedata_<YYYY-MM-DD>.csv``, as `tools.cboe` reads them) side by side. It is the
historical market (`tools.providers.history`) on that one directory — end of day, no look-ahead, a
recorded chain when a quote table exists for the session and a modelled one otherwise, VIX / VIX3M
/ SPY taken from the shared history when DIR lacks them — named after the data it reads:
``files:<first 12 hex digits of the SHA-256 over DIR's files>``. The name is part of the run id, so
a run on other files is another run.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, time
from pathlib import Path
from typing import Sequence

import numpy as np

from tools.chain import NEW_YORK
from tools.providers.bar_files import BarFileError
from tools.providers.history import (BENCHMARK, VOLATILITY_INDICES, HistoricalMarket, HistoryDataError,
                                    _file_digest, _read_chain_cached)


class FilesDataError(ValueError):
    """The directory cannot serve a run; the message is one line naming the directory or file."""


class FilesMarket(HistoricalMarket):
    def __init__(self, data_dir: str | Path, *, index_dir: str | Path | None = None) -> None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FilesDataError(f"{path}: not a directory (the files market needs a directory of daily bars "
                                 "and Cboe quote tables)")
        try:
            super().__init__(path, path, index_dir=index_dir)
        except (BarFileError, HistoryDataError) as exc:
            raise FilesDataError(str(exc)) from None
        self.name = f"files:{self.fingerprint()[:12]}"

    def __repr__(self) -> str:
        return f"FilesMarket({str(self.data_dir)!r})"

    def fingerprint(self) -> str:
        """SHA-256 over the names and contents of the files read (DIR's, and the shared series it
        borrows); not over where DIR is, so the same files elsewhere are the same data."""
        paths = sorted(p for p in self.data_dir.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".parquet"))
        if self.index_dir is not None:
            used = {self.files.series[s].report.file for s in self.borrowed}
            paths += sorted(p for p in self.index_dir.iterdir() if p.name in used)
        digest = hashlib.sha256()
        for p in paths:
            stat = p.stat()
            digest.update(f"{p.name}\0".encode())
            digest.update(_file_digest(str(p), stat.st_size, stat.st_mtime_ns))
        return digest.hexdigest()

    def source(self) -> dict:
        """What a run records to rebuild this market later (approvals re-quote from it)."""
        return {"market": "files", "data_dir": str(self.data_dir.resolve())}

    def tickers(self) -> list[str]:
        """The tradeable series of the directory (not the volatility indices, nor borrowed series)."""
        return sorted(s for s in self.files.series if s not in VOLATILITY_INDICES and s not in self.borrowed)

    def require(self, tickers: Sequence[str]) -> None:
        """Every ticker asked for has a usable bar file, or one line saying why not."""
        if not tickers:
            skipped = "".join(f"; skipped {why}" for why in self.files.skipped[:2])
            raise FilesDataError(f"{self.data_dir}: no ticker's daily bars (TICKER.csv or TICKER.parquet) to decide "
                                 f"on{skipped}")
        for ticker in tickers:
            symbol = self._symbol(ticker)
            # The benchmark may be borrowed from the shared history; a ticker decided on may not.
            if self.files.bars(symbol) is None or symbol in self.borrowed:
                skipped = [why for why in self.files.skipped
                           if Path(why.split(":")[0]).stem.split("_")[0].upper() == symbol]
                raise FilesDataError(f"{self.data_dir}: no daily bars for {symbol}"
                                     + (f" ({skipped[0]})" if skipped else f" (expected {symbol}.csv or "
                                                                           f"{symbol}.parquet)"))

    def latest_as_of(self, tickers: Sequence[str]) -> datetime:
        """When the data was taken: the close of the last session every series the run reads has
        (VIX, VIX3M, SPY and the tickers), or the export time of a quote table of that session if later."""
        self.require(tickers)
        symbols = ["VIX", "VIX3M", BENCHMARK, *(self._symbol(t) for t in tickers)]
        lasts = []
        for symbol in symbols:
            bars = self.files.bars(symbol)
            if bars is None or not len(bars):
                raise FilesDataError(f"{self.data_dir} has no {symbol} series; the files market needs VIX, VIX3M "
                                     f"and {BENCHMARK} (here or in the shared history)")
            lasts.append(bars.dates[-1])
        session = min(lasts)
        at = datetime.combine(session.astype(object), time(16, 0), tzinfo=NEW_YORK)
        for ticker in tickers:
            name = f"{self._symbol(ticker).lower()}_quotedata_{np.datetime_as_string(session)}.csv"
            path = next((p for p in self.data_dir.iterdir() if p.name.lower() == name), None)
            if path is not None:
                try:
                    at = max(at, _read_chain_cached(str(path), path.stat().st_mtime_ns).as_of)
                except (OSError, ValueError) as exc:
                    raise FilesDataError(str(exc)) from None
        return at
