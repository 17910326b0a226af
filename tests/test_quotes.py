"""tools.quotes: every rejection reason, precedence, locked markets, summaries."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.quotes import ASK_BOUND_SLACK, QuoteProblem, quote_problems, summarize_rejections, valid_mid


@pytest.mark.parametrize(
    "bid,ask,strike,t,expected",
    [
        (1.0, 1.2, 100.0, 0.1, QuoteProblem.OK),
        (1.1, 1.1, 100.0, 0.1, QuoteProblem.OK),  # locked market is a valid price
        (1.0, 1.2, 0.0, 0.1, QuoteProblem.BAD_STRIKE),
        (1.0, 1.2, -5.0, 0.1, QuoteProblem.BAD_STRIKE),
        (1.0, 1.2, np.nan, 0.1, QuoteProblem.BAD_STRIKE),
        (1.0, 1.2, 100.0, 0.0, QuoteProblem.EXPIRED),
        (1.0, 1.2, 100.0, -0.01, QuoteProblem.EXPIRED),
        (1.0, 1.2, 100.0, np.nan, QuoteProblem.EXPIRED),
        (np.nan, 1.2, 100.0, 0.1, QuoteProblem.MISSING_BID),
        (np.inf, 1.2, 100.0, 0.1, QuoteProblem.MISSING_BID),
        (1.0, np.nan, 100.0, 0.1, QuoteProblem.MISSING_ASK),
        (-0.05, 1.2, 100.0, 0.1, QuoteProblem.NEGATIVE_PRICE),
        (1.0, -1.2, 100.0, 0.1, QuoteProblem.NEGATIVE_PRICE),
        (0.0, 0.0, 100.0, 0.1, QuoteProblem.ZERO_ASK),
        (0.0, 0.05, 100.0, 0.1, QuoteProblem.NO_BID),
        (1.3, 1.2, 100.0, 0.1, QuoteProblem.CROSSED),
    ],
)
def test_each_reason(bid, ask, strike, t, expected):
    assert quote_problems(bid, ask, strike, t) == expected


def test_first_failing_check_wins():
    # NaN bid, crossed-looking numbers and a bad strike all at once: the strike is reported.
    codes = quote_problems(np.array([np.nan, np.nan]), np.array([1.0, np.nan]), np.array([0.0, 100.0]),
                           np.array([0.1, -1.0]))
    assert list(codes) == [QuoteProblem.BAD_STRIKE, QuoteProblem.EXPIRED]


def test_ask_above_no_arbitrage_bound_needs_spot():
    bid = np.array([99.0, 120.0, 5.0, 5.0])
    ask = np.array([101.0 * (1 + ASK_BOUND_SLACK), 120.0 * (1 + ASK_BOUND_SLACK) + 0.5, 6.0, 6.0])
    strike = np.array([1.0, 120.0, 100.0, 100.0])
    is_call = np.array([True, False, True, False])
    # Without a spot the bound cannot be known: nothing is flagged.
    assert np.all(quote_problems(bid, ask, strike, 0.5) == QuoteProblem.OK)
    codes = quote_problems(bid, ask, strike, 0.5, spot=100.0, is_call=is_call)
    # Call ask above spot; put ask above strike; ordinary quotes fine.
    assert list(codes) == [QuoteProblem.ASK_ABOVE_BOUND, QuoteProblem.ASK_ABOVE_BOUND, QuoteProblem.OK,
                           QuoteProblem.OK]


def test_codes_are_small_ints_and_broadcast():
    codes = quote_problems(np.array([[1.0, 0.0]]), 1.5, np.array([[90.0], [100.0]]), 0.2)
    assert codes.dtype == np.int8
    assert codes.shape == (2, 2)
    assert codes.tolist() == [[0, QuoteProblem.NO_BID]] * 2


@settings(max_examples=100, deadline=None)
@given(bid=st.floats(allow_nan=True, allow_infinity=True), ask=st.floats(allow_nan=True, allow_infinity=True),
       strike=st.floats(allow_nan=True, allow_infinity=False), t=st.floats(allow_nan=True))
def test_never_raises_and_ok_means_a_real_two_sided_market(bid, ask, strike, t):
    code = QuoteProblem(int(quote_problems(bid, ask, strike, t, spot=100.0, is_call=True)))
    if code == QuoteProblem.OK:
        assert 0 < bid <= ask < np.inf and strike > 0 and t > 0
        assert valid_mid(bid, ask, code) == pytest.approx(0.5 * (bid + ask))
    else:
        assert np.isnan(valid_mid(bid, ask, code))


def test_summarize_rejections_counts_by_name():
    codes = np.array([0, 7, 7, 8, 0, 3], dtype=np.int8)
    assert summarize_rejections(codes) == {"NO_BID": 2, "CROSSED": 1, "MISSING_BID": 1}
    assert summarize_rejections(np.zeros(4, dtype=np.int8)) == {}
