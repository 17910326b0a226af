"""Chain analyses shared by every run in this process: one analysis per distinct chain.

A chain analysis (implied vols, SVI fits, gamma sweep) is a pure function of the chain, so it is
keyed by the chain's content rather than by run. That lets a caller that knows which chains come
next start them early: a backtest `prefetch`es tomorrow's chains into the compute pool while
today's approvals and housekeeping run on the event loop, and the run that later asks for the same
chain (`analysis_of`) takes the result instead of computing it again. Because the key is the
content, a prefetched analysis can only ever answer for the identical chain: nothing computed
ahead can reach a decision about anything else.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future

import numpy as np

from graph.compute import compute_pool
from tools.chain import OptionChain
from tools.chain_analysis import ChainAnalysis, analyze_chain

# Enough for two days of a 20-ticker watchlist (today's and the prefetched next slot's) and the
# chains approvals re-ask for; older ones are dropped first.
MAX_KEPT = 64

_ARRAYS = ("expiry", "strike", "is_call", "bid", "ask", "last", "volume", "open_interest",
           "vendor_iv", "vendor_delta", "vendor_gamma", "root")

_kept: OrderedDict[bytes, Future] = OrderedDict()
_lock = threading.Lock()


def chain_key(chain: OptionChain) -> bytes:
    """A digest of everything `analyze_chain` reads from `chain` (arrays by dtype, shape and bytes)."""
    digest = hashlib.blake2b(digest_size=20)
    scalars = (chain.underlying, chain.as_of.isoformat(), chain.spot, chain.rate, chain.dividend_yield,
               chain.multiplier, chain.source, sorted((str(k), repr(v)) for k, v in chain.meta.items()))
    digest.update(repr(scalars).encode())
    for name in _ARRAYS:
        array = getattr(chain, name)
        if array is None:
            digest.update(f"{name}:None;".encode())
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
    return digest.digest()


def _submitted(chain: OptionChain) -> Future:
    key = chain_key(chain)
    with _lock:
        future = _kept.get(key)
        # A failed analysis is not kept: the next asker tries again (the pool may have been the problem).
        if future is not None and not (future.done() and future.exception() is not None):
            _kept.move_to_end(key)
            return future
        future = _kept[key] = compute_pool().submit(analyze_chain, chain)
        while len(_kept) > MAX_KEPT:
            _kept.popitem(last=False)
        return future


def prefetch(chains: Iterable[OptionChain]) -> None:
    """Start analysing `chains` in the compute pool now; `analysis_of` picks the results up."""
    for chain in chains:
        _submitted(chain)


async def analysis_of(chain: OptionChain) -> ChainAnalysis:
    """The analysis of `chain`: one computed (or started) for identical content before, else a new one."""
    return await asyncio.wrap_future(_submitted(chain))
