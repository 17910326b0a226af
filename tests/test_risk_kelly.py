"""Kelly fraction, shrinkage, and capped whole-contract sizing."""
from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from config.settings import DecisionConfig
from graph.schema import TradeProposal
from risk.kelly import (
    estimate_win_rate,
    kelly_fraction,
    payoff_ratio_for,
    prior_win_rate,
    shrunk_win_rate,
    size_trade,
)
from risk.limits import HARD_LIMITS, load_risk_matrix
from tests.risk_factories import account, proposal, regime

MATRIX = load_risk_matrix()


def unvalidated(prop: TradeProposal, **changes) -> TradeProposal:
    return TradeProposal.model_construct(**{**dict(prop), **changes})
CONFIG = DecisionConfig()  # half Kelly, prior 0.55 worth 20 trades


@pytest.mark.parametrize(
    "p, b, expected",
    [
        (0.6, 1.0, 0.2),
        (0.5, 2.0, 0.25),
        (0.55, 1.0, 0.10),
        (0.4, 1.0, 0.0),  # negative edge floored at zero
        (0.75, 1 / 3, 0.0),  # fair credit spread: p = 1/(1+b) gives exactly no edge
        (1.0, 0.5, 1.0),
        (0.0, 5.0, 0.0),
        (0.9, 0.0, 0.0),  # nothing to win
        (0.3, math.inf, 0.3),  # unbounded payoff: f* -> p
    ],
)
def test_kelly_fraction_closed_form(p, b, expected):
    assert kelly_fraction(p, b) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("p, b", [(math.nan, 1.0), (1.2, 1.0), (-0.1, 1.0), (0.5, -1.0), (0.5, math.nan)])
def test_kelly_fraction_rejects_bad_input(p, b):
    with pytest.raises(ValueError):
        kelly_fraction(p, b)


def test_shrunk_win_rate():
    assert shrunk_win_rate(6, 10, 0.55, 20) == pytest.approx(17 / 30)
    assert shrunk_win_rate(0, 0, 0.55, 20) == pytest.approx(0.55)  # no journal: the prior
    assert shrunk_win_rate(60, 100, 0.55, 0) == pytest.approx(0.6)  # no prior weight: raw rate
    # More evidence pulls harder away from the prior.
    assert abs(shrunk_win_rate(900, 1000, 0.5, 20) - 0.9) < abs(shrunk_win_rate(9, 10, 0.5, 20) - 0.9)
    for bad in [(11, 10, 0.5, 20), (-1, 10, 0.5, 20), (1, 2, 1.5, 20), (1, 2, 0.5, -1), (0, 0, 0.5, 0),
                (1.5, 3, 0.5, 1)]:
        with pytest.raises(ValueError):
            shrunk_win_rate(*bad)


def test_payoff_ratio_and_prior_from_pop():
    prop = proposal(max_loss="350", max_profit="150", pop=0.7)
    assert payoff_ratio_for(prop) == pytest.approx(150 / 350)
    # The schema forbids non-finite Decimals; an unvalidated (model_construct) one is still handled.
    assert payoff_ratio_for(unvalidated(proposal(), max_profit=Decimal("Infinity"))) == math.inf
    assert payoff_ratio_for(proposal(max_profit="0")) == 0.0
    with pytest.raises(ValueError, match="max_loss must be a positive"):
        payoff_ratio_for(proposal(max_loss="0"))
    # PoP 0.70 shrunk halfway toward the configured 0.55.
    assert prior_win_rate(prop, CONFIG) == pytest.approx(0.625)
    assert estimate_win_rate(prop, CONFIG) == pytest.approx(0.625)
    # 12 wins of 20 journal trades against 20 pseudo-trades at 0.625.
    assert estimate_win_rate(prop, CONFIG, wins=12, trades=20) == pytest.approx((12 + 0.625 * 20) / 40)


def size(prop=None, acct=None, regime_name="neutral", win=0.8, payoff=None, **kw):
    prop = prop or proposal()
    payoff = payoff_ratio_for(prop) if payoff is None else payoff
    return size_trade(prop, acct or account(), regime(regime_name), MATRIX, CONFIG, win, payoff, **kw)


def test_size_capped_by_regime_kelly_cap():
    # f* = 0.8 - 0.2 / (150/350) = 1/3; half Kelly 1/6 of $100k = $16,667, capped at 2.5% = $2,500;
    # floor(2500 / 350) = 7 contracts.
    trade = size()
    assert trade.kelly_fraction == pytest.approx(1 / 3)
    assert trade.contracts == 7
    assert trade.capital_at_risk == Decimal("2450")
    assert trade.applied_fraction == pytest.approx(0.025)
    assert trade.caps_applied == ["regime_kelly_cap", "hard_position_cap"]
    assert trade.win_rate == 0.8 and trade.payoff_ratio == pytest.approx(150 / 350)


def test_size_uncapped_fractional_kelly():
    # f* = 0.52 - 0.48 = 0.04 at even odds; half Kelly 2% of $100k = $2,000 -> 5 contracts of $350.
    trade = size(proposal(max_profit="350"), win=0.52)
    assert trade.kelly_fraction == pytest.approx(0.04)
    assert trade.contracts == 5 and trade.capital_at_risk == Decimal("1750")
    assert trade.caps_applied == []
    assert trade.applied_fraction == pytest.approx(0.02)


def test_crisis_cap_and_hard_cap():
    assert size(regime_name="crisis").contracts == 2  # 1% of $100k / $350
    # $4,000 already in the ticker leaves $1,000 of the 5% single-position cap: 2 contracts.
    trade = size(ticker_exposure=Decimal("4000"))
    assert trade.contracts == 2
    assert trade.caps_applied[0] == "hard_position_cap"


def test_free_margin_cap():
    # $79,000 margin used leaves $1,000 before free margin drops below 20% of $100k.
    trade = size(acct=account(margin_used="79000"))
    assert trade.contracts == 2
    assert trade.caps_applied[0] == "free_margin"


def test_zero_when_no_edge_or_less_than_one_contract_or_unbounded():
    no_edge = size(win=0.6)  # 0.6 - 0.4 / 0.4286 < 0
    assert no_edge.contracts == 0 and no_edge.capital_at_risk == 0
    assert no_edge.caps_applied == ["no_edge"] and no_edge.kelly_fraction == 0.0
    too_big = size(proposal(max_loss="3000", max_profit="3000"))
    assert too_big.contracts == 0
    assert too_big.caps_applied == ["regime_kelly_cap", "hard_position_cap", "below_one_contract"]
    naked = size(unvalidated(proposal(), max_loss=Decimal("Infinity")), payoff=1.0)
    assert naked.contracts == 0 and naked.caps_applied == ["unbounded_max_loss"]
    full = size(acct=account(margin_used="90000"))  # no free margin left at all
    assert full.contracts == 0 and "free_margin" in full.caps_applied


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"acct": account(nlv="0")}, "net liquidation must be positive"),
        ({"prop": proposal(max_loss="0")}, "max_loss must be positive"),
        ({"win": math.nan}, "win_rate"),
        ({"ticker_exposure": Decimal("-1")}, "ticker_exposure"),
    ],
)
def test_size_rejects_bad_input(kwargs, pattern):
    if "prop" in kwargs:
        kwargs["payoff"] = 1.0
    with pytest.raises(ValueError, match=pattern):
        size(**kwargs)


cents = st.integers(min_value=100, max_value=5_000_000).map(lambda c: Decimal(c) / 100)


@settings(max_examples=300, deadline=None)
@given(
    win=st.floats(0, 1),
    payoff=st.floats(0.01, 50),
    nlv=st.integers(1_000, 10_000_000).map(Decimal),
    max_loss=cents,
    max_profit=cents,
    multiplier=st.floats(0.05, 1.0),
    regime_name=st.sampled_from(["low_vol", "neutral", "high_vol", "crisis"]),
    margin_share=st.floats(0, 1),
    exposure_share=st.floats(0, 0.08),
)
def test_kelly_never_exceeds_its_caps(win, payoff, nlv, max_loss, max_profit, multiplier, regime_name,
                                      margin_share, exposure_share):
    config = DecisionConfig(kelly_multiplier=multiplier)
    acct = account(nlv=nlv, margin_used=(nlv * Decimal(repr(margin_share))).quantize(Decimal("0.01")))
    exposure = (nlv * Decimal(repr(exposure_share))).quantize(Decimal("0.01"))
    prop = proposal(max_loss=max_loss, max_profit=max_profit)
    trade = size_trade(prop, acct, regime(regime_name), MATRIX, config, win, payoff,
                       ticker_exposure=exposure)
    f_star = max(0.0, win - (1 - win) / payoff)

    assert isinstance(trade.contracts, int) and trade.contracts >= 0
    assert trade.capital_at_risk == max_loss * trade.contracts
    risk = trade.capital_at_risk
    assert risk <= MATRIX.for_regime(regime_name).kelly_cap_nlv * nlv
    assert risk <= HARD_LIMITS.position_cap_nlv(regime_name) * nlv - exposure or trade.contracts == 0
    assert acct.margin_used + risk <= nlv * (1 - HARD_LIMITS.min_free_margin_nlv) or trade.contracts == 0
    assert risk <= Decimal(repr(f_star * multiplier)) * nlv
    if f_star <= 0:
        assert trade.contracts == 0 and trade.caps_applied == ["no_edge"]
    # Whole contracts, floored: one more would break the tightest allowance.
    allowance = min(
        Decimal(repr(f_star * multiplier)) * nlv,
        MATRIX.for_regime(regime_name).kelly_cap_nlv * nlv,
        HARD_LIMITS.position_cap_nlv(regime_name) * nlv - exposure,
        nlv * (1 - HARD_LIMITS.min_free_margin_nlv) - acct.margin_used,
    )
    assert max_loss * (trade.contracts + 1) > allowance


@settings(max_examples=100, deadline=None)
@given(win=st.floats(0.3, 0.95), lower=st.floats(0.0, 0.2), payoff=st.floats(0.2, 5))
def test_lower_win_rate_never_sizes_larger(win, lower, payoff):
    assume(win - lower >= 0)
    hi = size(proposal(max_loss="100", max_profit="100"), win=win, payoff=payoff)
    lo = size(proposal(max_loss="100", max_profit="100"), win=win - lower, payoff=payoff)
    assert lo.contracts <= hi.contracts
