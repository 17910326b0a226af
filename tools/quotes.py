"""Quote validation: which option quotes are fit to price off, and why the others are not.

Vectorized over a chain's arrays. Every row gets one small-int reason code (`QuoteProblem`,
0 = OK); the first failing check in the enum's order wins, so a row with NaN bid and a zero
strike reports BAD_STRIKE. NaN, zero or crossed quotes are always rejected with a reason,
never an exception.

A locked market (bid == ask > 0) is accepted: it is a valid two-sided price, just a tight one.
A zero bid is rejected (NO_BID): the "mid" of 0 / ask is half the offer, not a market price.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

# A no-arbitrage bound is exact only with exact rates and dividends; allow this much slack
# before calling an ask absurd (call ask > spot, put ask > strike).
ASK_BOUND_SLACK = 0.01


class QuoteProblem(IntEnum):
    OK = 0
    BAD_STRIKE = 1  # strike NaN, zero or negative
    EXPIRED = 2  # time to expiry NaN or <= 0
    MISSING_BID = 3  # bid is NaN (or infinite)
    MISSING_ASK = 4  # ask is NaN (or infinite)
    NEGATIVE_PRICE = 5  # bid or ask below zero
    ZERO_ASK = 6  # ask == 0: nobody sells; nothing to price off
    NO_BID = 7  # bid == 0 with a positive ask
    CROSSED = 8  # bid > ask
    ASK_ABOVE_BOUND = 9  # ask above the no-arbitrage maximum (spot for calls, strike for puts)


def quote_problems(bid, ask, strike, t, *, spot: float | None = None, is_call=None) -> np.ndarray:
    """One int8 `QuoteProblem` code per row (0 = OK). Arrays broadcast.

    bid, ask, strike: per-share prices; t: years to expiry. The ASK_ABOVE_BOUND check runs only
    when `spot` is given: a call's ask may not exceed spot, a put's ask may not exceed strike
    (each with ASK_BOUND_SLACK); without `is_call` the looser max(spot, strike) is used.
    """
    bid, ask, strike, t = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (bid, ask, strike, t)))
    with np.errstate(invalid="ignore"):
        if spot is None:
            above_bound = np.zeros(bid.shape, dtype=bool)
        else:
            if is_call is None:
                bound = np.maximum(spot, strike)
            else:
                bound = np.where(np.broadcast_to(np.asarray(is_call, dtype=bool), bid.shape), spot, strike)
            above_bound = ask > bound * (1.0 + ASK_BOUND_SLACK)
        # np.select takes the first true condition: the list is in QuoteProblem order.
        conditions = [
            ~(strike > 0),  # catches NaN too
            ~(t > 0),
            ~np.isfinite(bid),
            ~np.isfinite(ask),
            (bid < 0) | (ask < 0),
            ask == 0,
            bid == 0,
            bid > ask,
            above_bound,
        ]
        codes = np.select(conditions, [int(p) for p in list(QuoteProblem)[1:]], default=int(QuoteProblem.OK))
    return codes.astype(np.int8)


def valid_mid(bid, ask, codes) -> np.ndarray:
    """(bid + ask) / 2 where the quote is OK, NaN elsewhere."""
    bid, ask, codes = np.broadcast_arrays(np.asarray(bid, dtype=float), np.asarray(ask, dtype=float), codes)
    with np.errstate(invalid="ignore"):
        # Halved before adding: the same number (halving is exact), and a rejected quote near the
        # float maximum cannot overflow to inf on the way to its NaN.
        return np.where(codes == QuoteProblem.OK, 0.5 * bid + 0.5 * ask, np.nan)


def summarize_rejections(codes) -> dict[str, int]:
    """Count of rejected rows per problem name, e.g. {"NO_BID": 12, "CROSSED": 1}; OK rows omitted."""
    values, counts = np.unique(np.asarray(codes).ravel(), return_counts=True)
    return {QuoteProblem(int(v)).name: int(c) for v, c in zip(values, counts) if v != QuoteProblem.OK}
