"""Market data from Interactive Brokers through ib_async: option chain parameters, option quotes
with IB's model Greeks, and daily bars — on an `IbkrBroker`'s connection (one API client id).

- Chains: `reqSecDefOptParams` on the qualified underlying gives the listed expirations and
  strikes (SMART); callers choose the contracts they need (by DTE and moneyness) and quote those.
- Quotes: one market-data snapshot per contract (`reqMktData` snapshot). With
  `market_data: delayed`, IB sends delayed data where the account has no live subscription and live
  data where it has one; every quote says which it was (`MarketQuotes.data_types`), so a run can
  record whether it decided on live or delayed prices.
- Open interest: IB sends it only on a streaming subscription with generic tick 101 (a snapshot
  cannot carry generic ticks), so `open_interest` subscribes, waits for ticks 27/28 and cancels.
- Bars: `reqHistoricalData` daily TRADES bars (a stock, or an index such as VIX / VIX3M on CBOE),
  regular hours. IB's pacing rules for historical data
  (no more than 60 requests in 10 minutes; no identical request within 15 seconds) are respected:
  identical requests within 15 seconds are answered from the last answer, and a 61st request in a
  10-minute window waits for its slot.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

import numpy as np
from ib_async import IB, Index, Option, Stock
from ib_async.ib import StartupFetch

from brokers.base import BrokerError
from domain.orders import LegQuote, OptionContract
from brokers.ibkr import MARKET_DATA_TYPES, IbkrBroker, connect_tws, ib_expiry, parse_expiry
from brokers.live import BrokerDisconnected, to_decimal
from config.connections import IbkrConfig
from tools.providers.base import Bars

HISTORICAL_WINDOW_S = 600.0
HISTORICAL_MAX_IN_WINDOW = 60
IDENTICAL_REQUEST_S = 15.0
INDICES = {"VIX": "CBOE", "VIX3M": "CBOE", "VIX9D": "CBOE", "SPX": "CBOE", "NDX": "NASDAQ", "RUT": "RUSSELL"}
# The market-data connection's client id is the broker's + 1: TWS refuses a second connection
# with a client id in use, and the order connection may be open beside it.
MARKET_DATA_CLIENT_OFFSET = 1


class IbkrDataConnection:
    """A read-only API connection for market data alone (no account book, no orders)."""

    def __init__(self, config: IbkrConfig):
        self.config = config
        self.ib = IB()

    async def ensure_connected(self) -> None:
        if self.ib.isConnected():
            return
        cfg = self.config
        client_id = cfg.client_id + MARKET_DATA_CLIENT_OFFSET
        await connect_tws(self.ib, cfg, client_id, readonly=True, fetchFields=StartupFetch(0))
        self.ib.reqMarketDataType(1 if cfg.market_data == "live" else 3)

    async def close(self) -> None:
        if self.ib.isConnected():
            self.ib.disconnect()


@dataclass(frozen=True)
class ChainParameters:
    ticker: str
    underlying_con_id: int
    multiplier: int
    expirations: tuple[date, ...]
    strikes: tuple[Decimal, ...]


@dataclass
class MarketQuotes:
    quotes: dict[OptionContract, LegQuote] = field(default_factory=dict)
    data_types: dict[OptionContract, str] = field(default_factory=dict)  # live | delayed | frozen | ...
    missing: list[str] = field(default_factory=list)  # contracts IB gave no two-sided quote for, and why

    @property
    def data_type(self) -> str:
        """What the run decided on: one type, or "mixed"."""
        kinds = set(self.data_types.values())
        return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "none")


def _finite(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > -1 else None


class IbkrMarketData:
    def __init__(self, broker: IbkrBroker):
        self.broker = broker
        self._historical_times: deque[float] = deque()
        self._recent: dict[tuple, tuple[float, Bars]] = {}

    @property
    def ib(self):
        return self.broker.ib

    async def _underlying(self, ticker: str):
        stock = Index(ticker, INDICES[ticker], "USD") if ticker in INDICES else Stock(ticker, "SMART", "USD")
        [qualified] = await asyncio.wait_for(self.ib.qualifyContractsAsync(stock), self.broker.config.timeout_s * 2)
        if qualified is None:
            raise BrokerError(f"IBKR does not know the stock {ticker}")
        return qualified

    async def chain_parameters(self, ticker: str) -> ChainParameters:
        await self.broker.ensure_connected()
        underlying = await self._underlying(ticker)
        chains = await asyncio.wait_for(self.ib.reqSecDefOptParamsAsync(ticker, "", "STK", underlying.conId),
                                        self.broker.config.timeout_s * 2)
        smart = [c for c in chains if c.exchange == "SMART" and c.tradingClass == ticker] or \
            [c for c in chains if c.exchange == "SMART"]
        if not smart:
            raise BrokerError(f"IBKR lists no SMART option chain for {ticker}")
        chain = smart[0]
        return ChainParameters(ticker, underlying.conId, int(float(chain.multiplier or 100)),
                               tuple(sorted(parse_expiry(e) for e in chain.expirations)),
                               tuple(sorted(to_decimal(s, Decimal("0.0001")).normalize() for s in chain.strikes)))

    async def quotes(self, contracts: list[OptionContract]) -> MarketQuotes:
        """One snapshot per contract: bid/ask, IB's model Greeks (converted to our units: vega per
        vol point and theta per calendar day are IB's own units), the underlying price."""
        await self.broker.ensure_connected()
        out = MarketQuotes()
        options = [Option(c.ticker, ib_expiry(c.expiry), float(c.strike), c.right, "SMART",
                          multiplier=str(c.multiplier), currency="USD") for c in contracts]
        qualified = await asyncio.wait_for(self.ib.qualifyContractsAsync(*options),
                                           self.broker.config.timeout_s * 2 + len(options) / 40)
        live = [(c, q) for c, q in zip(contracts, qualified) if q is not None]
        out.missing += [f"{c.label()}: unknown to IBKR" for c, q in zip(contracts, qualified) if q is None]
        if not live:
            return out
        # One request per contract, so one contract without market-data permission (IB error 354)
        # is named for what it is instead of failing the others.
        # ib_async paces requests at 45 a second: a long list waits its turn within the timeout.
        timeout = self.broker.config.timeout_s * 4 + len(live) / 40
        answers = await asyncio.gather(*[asyncio.wait_for(self.ib.reqTickersAsync(q), timeout) for _, q in live],
                                       return_exceptions=True)
        now = datetime.now(timezone.utc)
        for (contract, _), answer in zip(live, answers):
            if isinstance(answer, BaseException):
                code = getattr(answer, "code", None)
                why = f"IBKR error {code}: {answer.message}" if code else f"{type(answer).__name__}: {answer}"
                out.missing.append(f"{contract.label()}: {why}")
                continue
            [ticker] = answer
            bid, ask = _finite(ticker.bid), _finite(ticker.ask)
            if bid is None or ask is None or ask <= 0 or bid > ask:
                out.missing.append(f"{contract.label()}: no two-sided quote (bid {ticker.bid}, ask {ticker.ask})")
                continue
            greeks = ticker.modelGreeks
            out.quotes[contract] = LegQuote(
                bid=to_decimal(bid, Decimal("0.0001")), ask=to_decimal(ask, Decimal("0.0001")),
                underlying_price=to_decimal(greeks.undPrice, Decimal("0.0001")) if greeks and greeks.undPrice else None,
                delta=greeks.delta if greeks else None, gamma=greeks.gamma if greeks else None,
                vega=greeks.vega if greeks else None, theta=greeks.theta if greeks else None,
                iv=greeks.impliedVol if greeks else None, as_of=now)
            out.data_types[contract] = MARKET_DATA_TYPES.get(ticker.marketDataType, f"type {ticker.marketDataType}")
        return out

    async def open_interest(self, contracts: list[OptionContract],
                            wait: float | None = None) -> dict[OptionContract, float]:
        """Open interest per contract (ticks 27/28 of a streaming subscription with generic tick 101);
        contracts IB sends none for within `wait` seconds are left out."""
        await self.broker.ensure_connected()
        wait = self.broker.config.timeout_s if wait is None else wait
        options = [Option(c.ticker, ib_expiry(c.expiry), float(c.strike), c.right, "SMART",
                          multiplier=str(c.multiplier), currency="USD") for c in contracts]
        qualified = await asyncio.wait_for(self.ib.qualifyContractsAsync(*options),
                                           self.broker.config.timeout_s * 2 + len(options) / 40)
        live = [(c, q) for c, q in zip(contracts, qualified) if q is not None]
        tickers = [(c, q, self.ib.reqMktData(q, "101", False, False)) for c, q in live]

        def value(contract, ticker) -> float | None:
            found = ticker.callOpenInterest if contract.right == "C" else ticker.putOpenInterest
            return float(found) if found is not None and np.isfinite(found) and found >= 0 else None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + len(tickers) / 40  # ib_async paces requests at 45 a second
        try:
            while loop.time() < deadline and any(value(c, t) is None for c, _, t in tickers):
                await asyncio.sleep(0.05)
        finally:
            for _, q, _ in tickers:
                self.ib.cancelMktData(q)
        return {c: v for c, _, t in tickers if (v := value(c, t)) is not None}

    async def _historical_slot(self) -> None:
        now = time.monotonic()
        while self._historical_times and now - self._historical_times[0] >= HISTORICAL_WINDOW_S:
            self._historical_times.popleft()
        if len(self._historical_times) >= HISTORICAL_MAX_IN_WINDOW:
            await asyncio.sleep(HISTORICAL_WINDOW_S - (now - self._historical_times[0]))
            self._historical_times.popleft()
        self._historical_times.append(time.monotonic())

    async def daily_bars(self, ticker: str, sessions: int) -> Bars:
        """The last `sessions` daily bars (regular trading hours), oldest first."""
        key = (ticker, sessions)
        recent = self._recent.get(key)
        if recent is not None and time.monotonic() - recent[0] < IDENTICAL_REQUEST_S:
            return recent[1]
        await self.broker.ensure_connected()
        underlying = await self._underlying(ticker)
        await self._historical_slot()
        years = sessions // 250
        duration = f"{years + 1} Y" if years else f"{max(sessions * 7 // 5 + 5, 2)} D"
        bars = await self.ib.reqHistoricalDataAsync(underlying, "", duration, "1 day", "TRADES", True,
                                                    timeout=self.broker.config.timeout_s * 5)
        rows = list(bars)[-sessions:]
        if not rows:
            raise BrokerError(f"IBKR returned no daily bars for {ticker}")
        result = Bars(dates=np.array([np.datetime64(r.date, "D") for r in rows]),
                      open=np.array([r.open for r in rows]), high=np.array([r.high for r in rows]),
                      low=np.array([r.low for r in rows]), close=np.array([r.close for r in rows]),
                      volume=np.array([r.volume for r in rows]))
        self._recent[key] = (time.monotonic(), result)
        return result
