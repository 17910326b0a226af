"""The historical market: real daily bars from files, end of day, with no look-ahead.

`HistoricalMarket(data_dir, chains_dir=None)` serves a `MarketSnapshot` for any past `as_of`
from a directory of daily-bar files (`tools.providers.bar_files`: the shared
``../shared/data/history`` files or a user's own ``TICKER.csv`` / ``TICKER.parquet``).

* **End of day.** Daily bars carry no intraday prices, so a snapshot is the market at the close
  of the last session complete at `as_of` (16:00 New York or later that day, else the session
  before): spot is that close, the chain is as of that close, and every bar dated later is left out
  (`MarketSnapshot` re-checks it and refuses anything after `as_of`).
* **Regime** from the real VIX and VIX3M closes; the benchmark is SPY's bars. Both must have a
  bar within `MAX_STALE_DAYS` of the session, or the snapshot is refused with the reason. A
  directory without VIX / VIX3M / VIX9D / SKEW / SPY (a user's own stocks) takes those from
  `index_dir` (default: the shared history files) and `meta["from_index_dir"]` lists them.
* **Option chains.** A recorded Cboe quote table from `chains_dir`
  (``<ticker>_quotedata_<session>.csv``) when one exists for the ticker and session and was
  exported by `as_of`; otherwise a chain modelled from that session's VIX9D / VIX / VIX3M / SKEW
  (`tools.chain_model`; other tickers scaled by their realized vol over SPY's). Every ticker's
  data_quality states which, and `meta["modelled_chains"]` lists the modelled ones.
* **ATM IV history** (for IV rank): SPY's 30-day ATM vol on each past session is that day's VIX
  converted to ATM through that day's SKEW smile; other tickers' is that times their rolling
  60-session realized-vol ratio to SPY.
* **No social data**: `social` is None and data_quality says so; nothing is invented.
* **Dropped rows**: `meta["bar_drops"]` gives, per series, the file and per reason the count and
  first examples of the rows validation dropped that are dated up to the session (later rows are
  not the snapshot's business); a ticker whose file lost rows says how many, why and the first
  example in its data_quality. The full per-file reports (with
  first examples) are `HistoricalMarket.files.reports`.

Prices are the files' prices (the shared SPY file is dividend-adjusted; a recorded chain's spot is
the traded price, so next to a recorded chain the bars are rescaled to its spot, and it says so).
No rate or dividend series exists in the data: `rate` and `dividend_yields` are settings.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from tools.cboe import read_cboe_quote_table
from tools.chain import NEW_YORK, OptionChain
from tools.chain_model import (CHAIN_MODEL_VERSION, LISTING_SESSIONS, ChainModelError, ImpliedInputs, Liquidity, ModelSurface, SINGLE_NAME_SKEW,
                               RATIO_BOUNDS, REALIZED_WINDOW, atm_total_variance_for, build_surface,
                               model_chain, session_close, shape_from_skew_index)
from tools.providers.bar_files import BarDirectory, read_bar_directory
from tools.providers.base import Bars, MarketSnapshot, TickerData, last_complete_session

if TYPE_CHECKING:
    from tools.chain_analysis import ChainAnalysis

BENCHMARK = "SPY"
MARKET_SERIES = ("VIX", "VIX3M", "VIX9D", "SKEW", BENCHMARK)  # what every snapshot or modelled chain reads
VOLATILITY_INDICES = ("VIX", "VIX3M", "VIX9D", "SKEW", "VVIX")
HISTORY_SESSIONS = 504
MAX_STALE_DAYS = 7  # calendar days a series' last bar may lag the session before it counts as ended
DEFAULT_RATE = 0.02
DEFAULT_DIVIDEND_YIELDS = {"SPY": 0.015}
SPY_OPTIONS_LISTED = np.datetime64("2005-01-10")
NO_SOCIAL = "the history market has no social data: no social signal for this date (none invented)"
REPO_ROOT = Path(__file__).resolve().parents[2]
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-^]{0,14}$")
_TRADING_DAYS = 252.0


class HistoryDataError(ValueError):
    """The files cannot serve the requested date (series missing or ended); the message says which."""


def default_history_dir() -> Path | None:
    """``../shared/data/history`` next to the repository, when it exists."""
    path = REPO_ROOT.parent / "shared" / "data" / "history"
    return path if path.is_dir() else None


def default_chains_dir() -> Path | None:
    path = REPO_ROOT.parent / "shared" / "data" / "cboe"
    return path if path.is_dir() else None


def _window(bars: Bars, last: np.datetime64, sessions: int) -> Bars:
    end = int(np.searchsorted(bars.dates, last, side="right"))
    start = max(end - sessions, 0)
    return Bars(*(getattr(bars, f)[start:end].copy() for f in ("dates", "open", "high", "low", "close", "volume")))


def _close_on_or_before(bars: Bars | None, day: np.datetime64) -> tuple[float, np.datetime64 | None]:
    if bars is None:
        return float("nan"), None
    i = int(np.searchsorted(bars.dates, day, side="right")) - 1
    if i < 0 or (day - bars.dates[i]).astype(int) > MAX_STALE_DAYS:
        return float("nan"), None
    return float(bars.close[i]), bars.dates[i]


def _realized_vol(close: np.ndarray, window: int = REALIZED_WINDOW) -> float:
    r = np.diff(np.log(close[-(window + 1):]))
    return float(np.std(r, ddof=1) * np.sqrt(_TRADING_DAYS)) if len(r) >= 20 else float("nan")


@functools.cache
def _atm_over_vix_table() -> tuple[np.ndarray, np.ndarray]:
    """ATM vol / variance-swap vol at 30 days for SKEW levels 100..200 (interpolated per day)."""
    levels = np.arange(100.0, 200.5, 2.5)
    w_vs = 0.2**2 * 30.0 / 365.0
    ratio = np.array([np.sqrt(atm_total_variance_for(shape_from_skew_index(s), w_vs)[0] / w_vs) for s in levels])
    return levels, ratio


@dataclass(frozen=True)
class HistoryChain:
    """A chain for one ticker and session, and the one line that says where it came from."""

    chain: OptionChain
    note: str
    modelled: bool
    surface: ModelSurface | None = None


class HistoricalMarket:
    """See the module docstring. `data_dir`: daily-bar files; `chains_dir`: Cboe quote tables."""

    name = "history"

    def __init__(self, data_dir: str | Path | None = None, chains_dir: str | Path | None = None, *,
                 index_dir: str | Path | None = None, rate: float = DEFAULT_RATE,
                 dividend_yields: dict[str, float] | None = None, history_sessions: int = HISTORY_SESSIONS) -> None:
        data_dir = data_dir if data_dir is not None else default_history_dir()
        if data_dir is None:
            raise HistoryDataError("no history data directory given and ../shared/data/history does not exist")
        self.data_dir = Path(data_dir)
        self.chains_dir = Path(chains_dir) if chains_dir is not None else None
        if self.chains_dir is not None and not self.chains_dir.is_dir():
            raise HistoryDataError(f"{self.chains_dir}: chains directory does not exist")
        self.rate = float(rate)
        self.dividend_yields = dict(DEFAULT_DIVIDEND_YIELDS if dividend_yields is None else dividend_yields)
        self.history_sessions = int(history_sessions)
        own = read_bar_directory(self.data_dir)  # parsed once per process (cached)
        # A user's directory of stocks need not carry the market series: those it lacks come from
        # `index_dir` (default: the shared history files), and the snapshot says so.
        index_dir = Path(index_dir) if index_dir is not None else default_history_dir()
        borrowed = {}
        if index_dir is not None and index_dir.resolve() != self.data_dir.resolve():
            lacking = [s for s in MARKET_SERIES if s not in own.series]
            if lacking:
                index = read_bar_directory(index_dir)
                borrowed = {s: index.series[s] for s in lacking if s in index.series}
        self.index_dir = index_dir if borrowed else None
        self.borrowed = tuple(borrowed)
        self.files: BarDirectory = replace(
            own, series=own.series | borrowed, reports=own.reports + tuple(b.report for b in borrowed.values()))

    def __repr__(self) -> str:
        return f"HistoricalMarket({str(self.data_dir)!r})"

    # -- public ----------------------------------------------------------------------------

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot:
        if isinstance(tickers, str):
            raise TypeError("tickers must be a sequence of symbols, not one string")
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        symbols = list(dict.fromkeys(self._symbol(t) for t in tickers))
        last = last_complete_session(as_of)
        vix = self._required("VIX", last)
        vix3m = self._required("VIX3M", last)
        benchmark = self._required(BENCHMARK, last)
        session = benchmark.dates[-1]
        data: dict[str, TickerData] = {}
        missing, modelled, recorded = [], [], {}
        for symbol in symbols:
            if symbol in ("VIX", "VIX3M"):
                bars = vix if symbol == "VIX" else vix3m
                data[symbol] = TickerData(symbol, "Volatility Index", 0.0, float(bars.close[-1]), bars, None,
                                          data_quality=("no option chain for a volatility index", NO_SOCIAL))
                continue
            series = self.files.bars(symbol)
            if series is None:
                missing.append(f"{symbol}: no bar file in {self.data_dir}")
                continue
            bars = _window(series, last, self.history_sessions)
            if not len(bars) or (session - bars.dates[-1]).astype(int) > MAX_STALE_DAYS:
                missing.append(f"{symbol}: no bar on or within {MAX_STALE_DAYS} days before {session}")
                continue
            item = self._ticker_data(symbol, bars, benchmark, as_of)
            data[symbol] = item
            if item.chain is not None and item.chain.source == "modelled":
                modelled.append(symbol)
            elif item.chain is not None:
                recorded[symbol] = item.chain.meta.get("file")
        return MarketSnapshot(
            as_of=as_of, provider=self.name, tickers=data, vix=vix, vix3m=vix3m, benchmark=benchmark,
            rate=self.rate,
            meta={
                "data_dir": str(self.data_dir),
                "index_dir": None if self.index_dir is None else str(self.index_dir),
                "from_index_dir": list(self.borrowed),
                "chains_dir": None if self.chains_dir is None else str(self.chains_dir),
                "last_session": str(session),
                "end_of_day": f"prices as of the {session} close (daily bars have no intraday prices)",
                "vix_spot": float(vix.close[-1]), "vix3m_spot": float(vix3m.close[-1]),
                "modelled_chains": modelled, "recorded_chains": recorded, "missing_tickers": missing,
                # Files and drops as known at the session: counts of later rows would tell the future.
                "bar_files": {s.symbol: s.report.file for s in self.files.series.values()},
                "bar_drops": {s.symbol: {"file": s.report.file, "dropped": s.drops_until(session),
                                         "examples": s.drop_examples_until(session)}
                              for s in self.files.series.values() if s.drops_until(session)},
                "skipped_files": list(self.files.skipped), "not_used_files": list(self.files.not_used),
                "social": NO_SOCIAL,
            },
        )

    def fingerprint(self) -> str:
        """SHA-256 over the chain model's version and the names and contents of the files this market
        reads (bars and chains): put it in a run id so that a run on other data is another run."""
        paths = sorted(p for p in self.data_dir.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".parquet"))
        if self.index_dir is not None:
            used = {self.files.series[s].report.file for s in self.borrowed}
            paths += sorted(p for p in self.index_dir.iterdir() if p.name in used)
        if self.chains_dir is not None and self.chains_dir.resolve() != self.data_dir.resolve():
            paths += sorted(p for p in self.chains_dir.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
        # The modelled chains are part of the data: another chain model is other data.
        digest = hashlib.sha256(f"chain-model:{CHAIN_MODEL_VERSION}\0".encode())
        for p in paths:
            stat = p.stat()
            digest.update(f"{p.parent.name}/{p.name}\0".encode())
            digest.update(_file_digest(str(p), stat.st_size, stat.st_mtime_ns))
        return digest.hexdigest()

    def data_report(self) -> list[str]:
        """One line per file: rows read, kept and dropped with the first examples; skipped and unused files."""
        return ([r.summary() for r in self.files.reports] + [f"skipped {why}" for why in self.files.skipped]
                + [f"not used {why}" for why in self.files.not_used])

    def chain(self, ticker: str, as_of: datetime) -> HistoryChain:
        """The chain a snapshot at `as_of` would carry for `ticker` (recorded or modelled)."""
        symbol = self._symbol(ticker)
        last = last_complete_session(as_of)
        benchmark = self._required(BENCHMARK, last)
        series = self.files.bars(symbol)
        if series is None:
            raise HistoryDataError(f"{symbol}: no bar file in {self.data_dir}")
        bars = _window(series, last, self.history_sessions)
        if not len(bars):
            raise HistoryDataError(f"{symbol}: no bar on or before {last}")
        return self._chain(symbol, bars, benchmark, as_of)

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _symbol(ticker: str) -> str:
        symbol = str(ticker).strip().upper()
        if not _TICKER.match(symbol):
            raise ValueError(f"not a ticker symbol: {ticker!r}")
        return symbol

    def _required(self, symbol: str, last: np.datetime64) -> Bars:
        series = self.files.bars(symbol)
        if series is None:
            raise HistoryDataError(f"{self.data_dir} has no {symbol} series; the history market needs VIX, VIX3M "
                                   f"and {BENCHMARK}")
        bars = _window(series, last, self.history_sessions)
        if not len(bars) or (last - bars.dates[-1]).astype(int) > MAX_STALE_DAYS:
            span = f"{series.dates[0]}..{series.dates[-1]}"
            raise HistoryDataError(f"no {symbol} data at {last}: the {symbol} series covers {span}")
        return bars

    def implied_inputs(self, session: np.datetime64) -> tuple[ImpliedInputs, list[str]]:
        """The VIX9D / VIX / VIX3M / SKEW closes a chain on `session` is priced from, and notes on
        any taken from an earlier day (at most MAX_STALE_DAYS back)."""
        values, notes = {}, []
        for symbol in ("VIX9D", "VIX", "VIX3M", "SKEW"):
            value, day = _close_on_or_before(self.files.bars(symbol), session)
            values[symbol] = value
            if day is not None and day != session:
                notes.append(f"{symbol} from {day} (none on {session})")
        inputs = ImpliedInputs(session=session.astype(object), vix9d=values["VIX9D"] / 100.0,
                               vix=values["VIX"] / 100.0, vix3m=values["VIX3M"] / 100.0,
                               skew_index=values["SKEW"])
        return inputs, notes

    def _recorded_chain(self, symbol: str, session: np.datetime64, as_of: datetime) -> tuple[OptionChain | None, str | None]:
        if self.chains_dir is None:
            return None, None
        name = f"{symbol.lower()}_quotedata_{session}.csv"
        path = next((p for p in self.chains_dir.iterdir() if p.name.lower() == name), None)
        if path is None:
            return None, None
        chain = _read_chain_cached(str(path), path.stat().st_mtime_ns)
        if chain.as_of > as_of:
            return None, (f"recorded chain {path.name} was exported {chain.as_of:%Y-%m-%d %H:%M %Z}, after "
                          f"{as_of:%Y-%m-%d %H:%M %Z}: not used")
        return chain, None

    def _chain(self, symbol: str, bars: Bars, benchmark: Bars, as_of: datetime) -> HistoryChain:
        session = bars.dates[-1]
        recorded, refusal = self._recorded_chain(symbol, session, as_of)
        if recorded is not None:
            note = (f"chain recorded: Cboe quote table {recorded.meta.get('file')} "
                    f"({len(recorded):,} quotes as of {recorded.as_of:%Y-%m-%d %H:%M %Z})")
            return HistoryChain(recorded, note, modelled=False)
        inputs, notes = self.implied_inputs(session)
        if refusal:
            notes.insert(0, refusal)
        if symbol == BENCHMARK and session < SPY_OPTIONS_LISTED:
            notes.append(f"SPY options were first listed on {SPY_OPTIONS_LISTED}: this chain is hypothetical")
        ratio, skew_factor = 1.0, 1.0
        if symbol != BENCHMARK:
            spy = benchmark.close[benchmark.dates <= session]
            own, index = _realized_vol(bars.close), _realized_vol(spy)
            raw = own / index if np.isfinite(own) and np.isfinite(index) and index > 0 else 1.0
            ratio = float(np.clip(raw, *RATIO_BOUNDS))
            skew_factor = SINGLE_NAME_SKEW
            notes.append(f"{symbol} vol = S&P 500 model vol x {ratio:.2f} ({REALIZED_WINDOW}-session realized vol "
                         f"ratio to {BENCHMARK}, clipped to {RATIO_BOUNDS}); skew x {SINGLE_NAME_SKEW}")
        try:
            surface = build_surface(inputs, vol_ratio=ratio, skew_factor=skew_factor)
        except ChainModelError as exc:
            raise HistoryDataError(f"{symbol} on {session}: {exc}") from exc
        liquidity = Liquidity()
        if symbol != BENCHMARK:
            liquidity = Liquidity.relative_to_spy(_dollar_volume(bars), _dollar_volume(benchmark))
        close_time = session_close(session.astype(object))
        recent = bars.close[-LISTING_SESSIONS:]
        chain = model_chain(symbol, surface, float(bars.close[-1]), close_time, rate=self.rate,
                            dividend_yield=self.dividend_yields.get(symbol, 0.0), liquidity=liquidity,
                            notes=tuple(notes), traded_range=(float(recent.min()), float(recent.max())))
        note = f"chain modelled from {inputs.describe()} on {session}"
        if notes:
            note += " (" + "; ".join(notes) + ")"
        return HistoryChain(chain, note, modelled=True, surface=surface)

    def _atm_iv_history(self, symbol: str, bars: Bars, benchmark: Bars) -> np.ndarray:
        vix = self.files.bars("VIX")
        skew = self.files.bars("SKEW")
        vix_close = _aligned(vix, bars.dates) / 100.0
        skew_level = _aligned(skew, bars.dates)
        levels, ratio = _atm_over_vix_table()
        conversion = np.interp(np.where(np.isfinite(skew_level), skew_level, 130.0), levels, ratio)
        iv = vix_close * conversion
        if symbol == BENCHMARK:
            return iv
        own = pd.Series(np.log(bars.close)).diff().rolling(REALIZED_WINDOW).std().to_numpy()
        spy_close = _aligned(benchmark, bars.dates)
        index = pd.Series(np.log(spy_close)).diff().rolling(REALIZED_WINDOW).std().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.clip(own / index, *RATIO_BOUNDS)
        return iv * scale

    def _ticker_data(self, symbol: str, bars: Bars, benchmark: Bars, as_of: datetime) -> TickerData:
        quality = [f"end-of-day data: prices as of the {bars.dates[-1]} close"]
        series = self.files.series[symbol]
        drops = series.drops_until(bars.dates[-1])
        if drops:
            examples = series.drop_examples_until(bars.dates[-1])
            listed = ", ".join(f"{reason}: {n}, first {examples[reason][0]}" for reason, n in drops.items())
            quality.append(f"bars: {series.report.file} had {sum(drops.values())} invalid rows up to "
                           f"{bars.dates[-1]}, dropped ({listed})")
        atm_iv = self._atm_iv_history(symbol, bars, benchmark)
        spot = float(bars.close[-1])
        try:
            history = self._chain(symbol, bars, benchmark, as_of)
        except HistoryDataError as exc:  # this ticker gets no chain; the rest of the snapshot stands
            quality += [f"no option chain: {exc}", NO_SOCIAL]
            return TickerData(ticker=symbol, sector="Index" if symbol == BENCHMARK else "Unknown",
                              beta=1.0 if symbol == BENCHMARK else _beta(bars, benchmark), spot=spot, bars=bars,
                              chain=None, atm_iv_history=atm_iv, social=None, data_quality=tuple(quality))
        chain = history.chain
        if history.modelled:
            quality += [history.note, "option volume and open interest are modelled: no flow information"]
        else:
            scale = chain.spot / spot
            bars = Bars(bars.dates, bars.open * scale, bars.high * scale, bars.low * scale, bars.close * scale,
                        bars.volume)
            spot = chain.spot
            atm_iv = None  # the modelled IV history belongs to the model, not to this recorded chain
            quality.append(f"{history.note}; bars rescaled x{scale:.4f} to the chain's spot "
                           f"(the history file's prices are adjusted)")
        quality.append(NO_SOCIAL)
        return TickerData(
            ticker=symbol, sector="Index" if symbol == BENCHMARK else "Unknown",
            beta=1.0 if symbol == BENCHMARK else _beta(bars, benchmark), spot=spot, bars=bars, chain=chain,
            atm_iv_history=atm_iv, social=None, data_quality=tuple(quality),
        )


@functools.lru_cache(maxsize=512)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


@functools.lru_cache(maxsize=32)
def _read_chain_cached(path: str, mtime_ns: int) -> OptionChain:
    return read_cboe_quote_table(path)


def _aligned(series: Bars | None, dates: np.ndarray) -> np.ndarray:
    """`series` closes on `dates` (the last close on or before each date; NaN before it starts)."""
    if series is None or not len(series):
        return np.full(len(dates), np.nan)
    i = np.searchsorted(series.dates, dates, side="right") - 1
    out = series.close[np.maximum(i, 0)].astype(float)
    return np.where(i >= 0, out, np.nan)


def _dollar_volume(bars: Bars) -> float:
    recent = (bars.close * bars.volume)[-REALIZED_WINDOW:]
    recent = recent[np.isfinite(recent)]
    return float(np.mean(recent)) if len(recent) else float("nan")


def _beta(bars: Bars, benchmark: Bars, window: int = 252) -> float:
    """Slope of the ticker's daily log returns on SPY's over the last `window` common sessions."""
    common, a, b = np.intersect1d(bars.dates, benchmark.dates, return_indices=True)
    if len(common) < 40:
        return 1.0
    x = np.diff(np.log(benchmark.close[b]))[-window:]
    y = np.diff(np.log(bars.close[a]))[-window:]
    var = float(np.var(x))
    return round(float(np.cov(x, y, bias=True)[0, 1] / var), 3) if var > 0 else 1.0


def as_of_from_date(day: date | datetime) -> datetime:
    """A bare date means that session's close (16:00 New York); a datetime must be tz-aware."""
    if isinstance(day, datetime):
        if day.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        return day
    return datetime.combine(day, time(16, 0), tzinfo=NEW_YORK)


@dataclass(frozen=True)
class HistoryChainAnalysis:
    """What `hedgegraph chain --model TICKER --as-of DATE` shows: the same `ChainAnalysis` a quote
    table gets (`service.chain_report.render_chain_report`), plus where the chain came from."""

    analysis: ChainAnalysis
    chain: OptionChain
    note: str  # e.g. "chain modelled from VIX9D/VIX/VIX3M/SKEW on 2022-03-08"
    modelled: bool

    def to_dict(self) -> dict:
        return self.analysis.to_dict() | {"source": self.chain.source, "chain_note": self.note,
                                          "modelled": self.modelled, "chain_meta": self.chain.meta}


def history_chain_analysis(ticker: str, as_of: date | datetime, data_dir: str | Path | None = None,
                           chains_dir: str | Path | None = None) -> HistoryChainAnalysis:
    """Analyse the chain the history market gives `ticker` at `as_of` (a date: that day's close)."""
    from tools.chain_analysis import analyze_chain

    market = HistoricalMarket(data_dir, chains_dir)
    history = market.chain(ticker, as_of_from_date(as_of))
    return HistoryChainAnalysis(analysis=analyze_chain(history.chain), chain=history.chain, note=history.note,
                                modelled=history.modelled)
