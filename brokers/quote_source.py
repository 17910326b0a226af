"""Quote sources for brokers and valuations: a mutable book and one backed by option chains.

A quote source is any `Callable[[OptionContract], LegQuote | None]` (`domain.orders.QuoteSource`);
None means "no usable two-sided quote", never a made-up price. The underlying's shares
(`OptionContract.shares`) are quoted like a contract: `share_quote`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import date
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from domain.orders import LegQuote, OptionContract
from tools.chain import OptionChain
from tools.implied_vol import chain_implied_vol
from tools.pricing import bsm_greeks
from tools.quotes import QuoteProblem, quote_problems

_PRICE_PLACES = Decimal("0.0001")
CENT = Decimal("0.01")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def share_quote(price: Decimal) -> LegQuote:
    """The underlying's shares quoted from its last price, which is all a daily-bar or simulated
    market carries: one cent wide (bid = the price floored to the cent, ask a cent above), as the
    liquid ETFs and large caps this desk trades options on are quoted. Delta 1 per share, no
    other Greek."""
    bid = price.quantize(CENT, rounding=ROUND_FLOOR)
    return LegQuote(bid=bid, ask=bid + CENT, underlying_price=price, delta=1.0, gamma=0.0, vega=0.0, theta=0.0)


class QuoteBook:
    """Quotes set by hand (tests, manual marks, replayed ticks): `book.set(contract, quote)`."""

    def __init__(self) -> None:
        self._quotes: dict[OptionContract, LegQuote] = {}

    def set(self, contract: OptionContract, quote: LegQuote) -> None:
        self._quotes[contract] = quote

    def remove(self, contract: OptionContract) -> None:
        self._quotes.pop(contract, None)

    def __call__(self, contract: OptionContract) -> LegQuote | None:
        return self._quotes.get(contract)


def _price(value: float) -> Decimal:
    return Decimal(repr(float(value))).quantize(_PRICE_PLACES)


def _maybe(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class ChainQuotes:
    """Quotes from `OptionChain`s keyed by ticker, with Greeks from each row's implied vol.

    Implied vols come from `chain_implied_vol` on each expiry's forward: the parity forwards of
    `curves[ticker]` (a `tools.cboe.ForwardCurve`) when given, else spot * exp((r - q) t) from the
    chain. Greeks are BSM at that vol with the rate and dividend yield implied by the row's
    forward and discount (so they agree with the forward the vol was read on), in trader units
    (vega per vol point, theta per calendar day); a row with no IV gets None Greeks. A row whose
    quote fails `tools.quotes` validation (NaN, zero ask, crossed, ...) is no quote at all; a zero bid
    under a positive ask is a quote (bid 0). When
    two roots share an expiry/strike/right (SPX and SPXW), the first valid row wins.
    """

    def __init__(self, chains: Mapping[str, OptionChain], curves: Mapping[str, Any] | None = None):
        # Everything is built on demand, per expiry: a broker or a valuation asks for a handful of
        # the thousands of rows of a chain, in one or two expiries. A row's LegQuote (Decimals) is
        # built when it is asked for, and its expiry's implied vols and Greeks with it.
        self._tickers = {ticker: k for k, ticker in enumerate(chains)}
        self._chains: list[tuple[OptionChain, Any, Decimal, np.ndarray]] = []  # chain, curve, spot, expiry days
        for ticker, chain in chains.items():
            expiry_days = chain.expiry.astype("datetime64[D]").astype(np.int64)
            self._chains.append((chain, (curves or {}).get(ticker), _price(chain.spot), expiry_days))
        self._expiries: dict[tuple[int, int], tuple[np.ndarray, dict[tuple[float, bool], int]]] = {}
        self._greeks: dict[tuple[int, int], tuple[Any, np.ndarray]] = {}
        self._built: dict[tuple[int, int], LegQuote] = {}  # by (chain, row): contracts naming one row share its quote
        self._quotes: dict[OptionContract, LegQuote | None] = {}

    def _expiry_rows(self, k: int, day: int) -> tuple[np.ndarray, dict[tuple[float, bool], int]]:
        """Chain `k`'s rows of expiry `day` (days since the epoch), and its usable rows by
        (strike rounded to 4 places, is call)."""
        cached = self._expiries.get((k, day))
        if cached is None:
            chain, _, _, expiry_days = self._chains[k]
            rows = np.flatnonzero(expiry_days == day)
            problems = quote_problems(chain.bid[rows], chain.ask[rows], chain.strike[rows], chain.time_to_expiry[rows])
            # A row nobody bids for (bid 0, ask > 0) is still a market: a far wing held in the book
            # is worth 0 to its ask, and without that quote the position could not be marked or
            # closed (the 2011-2019 backtest held such condors to expiry and into assignment).
            ok = rows[(problems == QuoteProblem.OK) | (problems == QuoteProblem.NO_BID)]
            usable: dict[tuple[float, bool], int] = {}
            for i, strike, call in zip(ok.tolist(), np.round(chain.strike[ok], 4).tolist(), chain.is_call[ok].tolist()):
                usable.setdefault((strike, bool(call)), i)  # the first valid row wins
            cached = self._expiries[(k, day)] = (rows, usable)
        return cached

    def _expiry_greeks(self, k: int, day: int) -> tuple[Any, np.ndarray]:
        """(Greeks, implied vols) of chain `k`'s expiry `day`, in the order of its `_expiry_rows`."""
        cached = self._greeks.get((k, day))
        if cached is None:
            chain, curve, _, _ = self._chains[k]
            part = chain.select(self._expiry_rows(k, day)[0])
            civ = chain_implied_vol(part, curve.forwards_by_expiry() if curve else None,
                                    curve.discounts_by_expiry() if curve else None)
            t = part.time_to_expiry
            with np.errstate(all="ignore"):
                live = t > 0
                t_l = np.where(live, t, 1.0)
                rate = np.where(live, -np.log(civ.discount) / t_l, chain.rate)
                div_yield = np.where(live, rate - np.log(civ.forward / chain.spot) / t_l, chain.dividend_yield)
            greeks = bsm_greeks(chain.spot, part.strike, t, rate, div_yield, civ.vol, part.is_call)
            cached = self._greeks[(k, day)] = (greeks, civ.vol)
        return cached

    def _quote(self, k: int, i: int, day: int, rows: np.ndarray) -> LegQuote:
        chain, _, spot, _ = self._chains[k]
        greeks, vol = self._expiry_greeks(k, day)
        j = int(np.searchsorted(rows, i))
        return LegQuote(
            bid=_price(chain.bid[i]), ask=_price(chain.ask[i]), underlying_price=spot,
            delta=_maybe(greeks.delta[j]), gamma=_maybe(greeks.gamma[j]),
            vega=_maybe(greeks.vega[j] / 100.0), theta=_maybe(greeks.theta[j] / 365.0),
            iv=_maybe(vol[j]), as_of=chain.as_of)

    def __call__(self, contract: OptionContract) -> LegQuote | None:
        # A contract's quote is a function of the contract (chains are read-only): asked again, as a
        # book is valued, its Greeks summed and its margin figured many times a day, it is a lookup.
        try:
            return self._quotes[contract]
        except KeyError:
            quote = self._quotes[contract] = self._lookup(contract)
            return quote

    def _lookup(self, contract: OptionContract) -> LegQuote | None:
        k = self._tickers.get(contract.ticker)
        if k is None or contract.right not in ("C", "P"):
            return None
        day = contract.expiry.toordinal() - _EPOCH_ORDINAL
        rows, usable = self._expiry_rows(k, day)
        i = usable.get((round(float(contract.strike), 4), contract.right == "C"))
        if i is None:
            return None
        if (k, i) not in self._built:
            self._built[(k, i)] = self._quote(k, i, day, rows)
        return self._built[(k, i)]


# ChainQuotes per chain object, shared by every ProviderQuotes: a provider that returns the same
# chain for the same time (the simulated market caches its snapshots) is read once, not once per
# broker, re-check, preview and mark. The chain is kept in the value so its id is not reused.
_SHARED_QUOTES: OrderedDict[tuple[str, int], tuple[OptionChain, ChainQuotes]] = OrderedDict()
_SHARED_QUOTES_SIZE = 160


def _chain_quotes(ticker: str, chain: OptionChain) -> ChainQuotes:
    key = (ticker, id(chain))
    hit = _SHARED_QUOTES.get(key)
    if hit is not None and hit[0] is chain:
        _SHARED_QUOTES.move_to_end(key)
        return hit[1]
    quotes = ChainQuotes({ticker: chain})
    _SHARED_QUOTES[key] = (chain, quotes)
    if len(_SHARED_QUOTES) > _SHARED_QUOTES_SIZE:
        _SHARED_QUOTES.popitem(last=False)
    return quotes


class ProviderQuotes:
    """Live-ish quotes from a market-data provider: the chain as of `clock()`, per ticker.

    Each ticker's chain is fetched once per `refresh_seconds` of the clock, so a broker stepping
    through fills sees the market move, and the re-check before transmission sees a fresh quote.
    """

    def __init__(self, provider: Any, clock, refresh_seconds: float = 60.0):
        self.provider = provider
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        self._cache: dict[str, tuple[Any, ChainQuotes | None, Any]] = {}

    def snapshot(self, ticker: str):
        """The provider's snapshot holding `ticker` now (VIX, VIX3M and SPY come with it)."""
        return self._current(ticker)[2]

    def _current(self, ticker: str) -> tuple[Any, ChainQuotes | None, Any]:
        """(when fetched, quotes of its chain, snapshot) for `ticker`, refetched on the clock."""
        now = self.clock()
        cached = self._cache.get(ticker)
        if cached is None or (now - cached[0]).total_seconds() >= self.refresh_seconds:
            snapshot = self.provider.snapshot([ticker], now)
            data = snapshot.tickers.get(ticker)
            quotes = _chain_quotes(ticker, data.chain) if data is not None and data.chain is not None else None
            cached = self._cache[ticker] = (now, quotes, snapshot)
        return cached

    def share_price(self, ticker: str) -> Decimal | None:
        """The underlying's price now: what shares delivered by an exercise or assignment are worth."""
        data = self.ticker_data(ticker)
        spot = None if data is None else data.spot
        return _price(spot) if spot is not None and np.isfinite(spot) and spot > 0 else None

    def ticker_data(self, ticker: str):
        """The provider's current data for `ticker` (spot, chain, ...), refreshed on the clock."""
        return self.snapshot(ticker).tickers.get(ticker)

    def __call__(self, contract: OptionContract) -> LegQuote | None:
        if contract.is_shares:
            price = self.share_price(contract.ticker)
            return None if price is None else share_quote(price)
        quotes = self._current(contract.ticker)[1]
        return None if quotes is None else quotes(contract)


def share_prices_of(quotes: object, given: Callable[[str], Decimal | None] | None = None):
    """What shares from exercises and assignments are worth: `given`, else the quote source's
    underlying price when it is backed by a market (`ProviderQuotes.share_price`), else the mid of
    the source's quote of the shares (a `QuoteBook` may hold one), else None (carried at cost)."""
    if given is not None:
        return given
    if hasattr(quotes, "share_price"):
        return quotes.share_price
    if quotes is None:
        return None

    def quoted_mid(ticker: str) -> Decimal | None:
        quote = quotes(OptionContract.shares(ticker))
        return None if quote is None else quote.mid

    return quoted_mid
