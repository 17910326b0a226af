"""A provider that takes some tickers' option chains from Cboe quote-table files.

Everything else (history, social, VIX) comes from the wrapped provider. The history is rescaled
so its last close matches the file's spot: a chain priced off 4,500 next to a simulated history
at 380 would make every realized-vs-implied comparison meaningless. The rescaling is stated in the
ticker's `data_quality`, so no analyst mistakes it for real history.

The overlay is named after the files it read (``<inner>+cboe:<first 12 hex digits of their
SHA-256>``): the name is part of a run's id, so a run on another file is another run.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Sequence

from tools.cboe import read_cboe_quote_table
from tools.chain import OptionChain
from tools.providers.base import Bars, LookAheadError, MarketDataProvider, MarketSnapshot


class ChainFileOverlay:
    def __init__(self, inner: MarketDataProvider, chain_files: dict[str, Path]):
        self.inner = inner
        self.files = {symbol.upper(): Path(path) for symbol, path in chain_files.items()}
        self.chains: dict[str, OptionChain] = {symbol: read_cboe_quote_table(path)
                                               for symbol, path in self.files.items()}
        digest = hashlib.sha256()
        for symbol, path in sorted(self.files.items()):
            digest.update(f"{symbol}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        self.name = f"{inner.name}+cboe:{digest.hexdigest()[:12]}"

    def source(self) -> dict:
        """What a run records to rebuild this market later (approvals re-quote from it)."""
        inner = getattr(self.inner, "source", None)
        return (inner() if inner else {"market": self.inner.name}) | {
            "chains": {symbol: str(path.resolve()) for symbol, path in sorted(self.files.items())}}

    @property
    def latest_as_of(self) -> datetime:
        return max(chain.as_of for chain in self.chains.values())

    def snapshot(self, tickers: Sequence[str], as_of: datetime) -> MarketSnapshot:
        base = self.inner.snapshot(tickers, as_of)
        replaced = dict(base.tickers)
        for symbol, chain in self.chains.items():
            if symbol not in replaced:
                continue
            if chain.as_of > as_of:
                raise LookAheadError(f"{symbol} chain file is as of {chain.as_of}, after the run's {as_of}")
            data = replaced[symbol]
            scale = chain.spot / float(data.bars.close[-1])
            b = data.bars
            bars = Bars(b.dates, b.open * scale, b.high * scale, b.low * scale, b.close * scale, b.volume)
            note = (f"chain from Cboe file ({len(chain)} quotes as of {chain.as_of:%Y-%m-%d %H:%M}); "
                    f"history from {self.inner.name}, rescaled ×{scale:.4f} to the file's spot")
            replaced[symbol] = replace(
                data, spot=chain.spot, bars=bars, chain=chain,
                atm_iv_history=None,  # the provider's IV history belongs to its own chain, not this file
                data_quality=tuple(data.data_quality) + (note,),
            )
        return replace(base, tickers=replaced, provider=self.name)
