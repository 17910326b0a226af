"""Log-optimal Kelly on the payoff distribution, journal shrinkage, and capped whole-contract sizing."""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import example, assume, given, settings
from hypothesis import strategies as st

from config.settings import DecisionConfig
from domain.decision import ClosedOutcome, TradeProposal
from risk.kelly import (
    PayoffDistribution,
    expected_log_growth,
    journal_estimate,
    log_optimal_fraction,
    shrunk_distribution,
    size_trade,
)
from risk.limits import HARD_LIMITS, load_risk_matrix
from tests.risk_factories import account, proposal, regime

MATRIX = load_risk_matrix()
AS_OF = datetime(2026, 11, 20, 15, 30, tzinfo=timezone.utc)


def unvalidated(prop: TradeProposal, **changes) -> TradeProposal:
    return TradeProposal.model_construct(**{**dict(prop), **changes})


CONFIG = DecisionConfig()  # half Kelly, the model worth 20 journal trades


def binary(p: float, win: float = 150.0, loss: float = 350.0) -> PayoffDistribution:
    """Win `win` dollars per unit with probability p, else lose `loss`."""
    return PayoffDistribution(np.array([win, -loss]), np.array([p, 1.0 - p]), "test")


@pytest.mark.parametrize(
    "p, b, expected",
    [
        (0.6, 1.0, 0.2),
        (0.5, 2.0, 0.25),
        (0.55, 1.0, 0.10),
        (0.4, 1.0, 0.0),  # negative edge: nothing
        (0.75, 1 / 3, 0.0),  # fair credit spread: p = 1/(1+b) gives exactly no edge
        (0.0, 5.0, 0.0),
        (0.9, 0.0, 0.0),  # nothing to win
    ],
)
def test_a_binary_bet_gives_back_the_textbook_fraction(p, b, expected):
    assert log_optimal_fraction(np.array([b, -1.0]), np.array([p, 1 - p])) == pytest.approx(expected, abs=1e-9)


def test_log_optimal_fraction_maximizes_growth_over_a_whole_distribution():
    x = np.array([-1.0, -0.4, 0.0, 0.3, 0.9, 2.0])
    p = np.array([0.10, 0.15, 0.20, 0.25, 0.20, 0.10])
    f = log_optimal_fraction(x, p)
    assert 0 < f < 1
    assert float(np.dot(p, x / (1 + f * x))) == pytest.approx(0.0, abs=1e-9)
    best = expected_log_growth(x, p, f)
    assert best > 0
    assert all(expected_log_growth(x, p, g) <= best for g in np.linspace(0, 0.99, 199))
    assert log_optimal_fraction(np.array([0.0, 0.5]), np.array([0.5, 0.5])) == 1.0  # cannot lose: caps decide


def test_a_vertical_is_not_a_binary_bet():
    """PoP 0.6 and max profit = max loss give the binary formula f = 0.6 - 0.4 = 0.2, but most of
    the wins are small: the expected P&L is negative, so the log-optimal fraction is zero."""
    pnl = np.array([-350.0, -100.0, 20.0, 60.0, 350.0])
    p = np.array([0.30, 0.10, 0.30, 0.25, 0.05])
    dist = PayoffDistribution(pnl, p, "test")
    assert dist.win_rate == pytest.approx(0.6) and dist.mean < 0
    trade = size_trade(proposal(max_loss="350", max_profit="350"), account(), regime("neutral"), MATRIX,
                       CONFIG, dist, as_of=AS_OF)
    assert trade.contracts == 0 and trade.caps_applied == ["no_edge"] and trade.kelly_fraction == 0.0
    assert trade.inputs.expected_log_growth == 0.0 and trade.inputs.model_expected_pnl < 0


def outcome(pnl, structure="bull_put_spread", regime_name="neutral", days_ago=1, max_loss="350"):
    return ClosedOutcome(structure=structure, regime=regime_name, closed_at=AS_OF - timedelta(days=days_ago),
                         pnl=Decimal(pnl), max_loss=Decimal(max_loss))


def test_journal_estimate_shrinks_toward_the_model_and_never_looks_ahead():
    x, p = np.array([150 / 350, -1.0]), np.array([0.8, 0.2])
    journal = [outcome("150"), outcome("-350"), outcome("70"), outcome("-175"),
               outcome("150", days_ago=-1),  # closed after the run: unknown at as-of
               outcome("150", structure="iron_condor"), outcome("-350", regime_name="crisis")]
    est = journal_estimate(journal, "bull_put_spread", "neutral", AS_OF, x, p, 20)
    assert (est.trades, est.wins) == (4, 2)
    assert est.prior_weight == pytest.approx(20 / 24) and est.journal_weight == pytest.approx(4 / 24)
    assert est.win_rate == pytest.approx((2 + 20 * 0.8) / 24)
    assert est.avg_win == pytest.approx((150 / 350 + 70 / 350 + 16 * 150 / 350) / 18)
    assert est.avg_loss == pytest.approx((1.0 + 0.5 + 4 * 1.0) / 6)
    # No prior weight: the raw journal; no journal: the model.
    raw = journal_estimate(journal, "bull_put_spread", "neutral", AS_OF, x, p, 0)
    assert raw.win_rate == 0.5 and raw.journal_weight == 1.0
    none = journal_estimate([], "bull_put_spread", "neutral", AS_OF, x, p, 20)
    assert none.trades == 0 and none.win_rate == pytest.approx(0.8) and none.prior_weight == 1.0
    # Even with kelly_prior_weight 0 ("trust only the journal"), an empty journal leaves the model:
    # a run must not fail on the first day of a new account.
    first_day = journal_estimate([], "bull_put_spread", "neutral", AS_OF, x, p, 0)
    assert first_day.trades == 0 and first_day.win_rate == pytest.approx(0.8) and first_day.prior_weight == 1.0
    with pytest.raises(ValueError, match="timezone"):
        journal_estimate([], "bull_put_spread", "neutral", AS_OF.replace(tzinfo=None), x, p, 20)


def test_shrunk_distribution_matches_the_estimate():
    x = np.array([-1.0, -0.3, 0.2, 0.5])
    p = np.array([0.2, 0.2, 0.3, 0.3])
    journal = [outcome("-350"), outcome("-350"), outcome("-350"), outcome("35")]
    est = journal_estimate(journal, "bull_put_spread", "neutral", AS_OF, x, p, 4)
    xs, ps = shrunk_distribution(x, p, est)
    assert ps.sum() == pytest.approx(1.0)
    assert ps[xs > 0].sum() == pytest.approx(est.win_rate)
    assert float(np.dot(ps[xs > 0], xs[xs > 0])) / ps[xs > 0].sum() == pytest.approx(est.avg_win)
    assert xs.min() >= -1.0
    none = journal_estimate([], "bull_put_spread", "neutral", AS_OF, x, p, 4)
    assert shrunk_distribution(x, p, none) == (x, p)


def test_a_losing_journal_turns_an_edge_into_no_trade():
    dist = binary(0.8)  # f* = 1/3 on the model alone
    losses = [outcome("-350", days_ago=d) for d in range(1, 41)]
    trade = size_trade(proposal(), account(), regime("neutral"), MATRIX, CONFIG, dist, as_of=AS_OF, outcomes=losses)
    assert trade.contracts == 0 and trade.caps_applied == ["no_edge"]
    assert trade.inputs.journal_trades == 40 and trade.inputs.journal_weight == pytest.approx(40 / 60)
    # The same losses, all closed after the run's as-of time, change nothing.
    later = [o.model_copy(update={"closed_at": AS_OF + timedelta(hours=1)}) for o in losses]
    assert size_trade(proposal(), account(), regime("neutral"), MATRIX, CONFIG, dist, as_of=AS_OF,
                      outcomes=later).contracts == 7


def size(prop=None, acct=None, regime_name="neutral", win=0.8, dist=None, **kw):
    prop = prop or proposal()
    if dist is None:
        dist = binary(win, float(prop.max_profit), float(prop.max_loss))
    return size_trade(prop, acct or account(), regime(regime_name), MATRIX, CONFIG, dist, as_of=AS_OF, **kw)


def test_size_capped_by_regime_kelly_cap():
    # Binary: f* = 0.8 - 0.2 / (150/350) = 1/3; half Kelly 1/6 of $100k = $16,667, capped at
    # 2.5% = $2,500; floor(2500 / 350) = 7 contracts.
    trade = size()
    assert trade.kelly_fraction == pytest.approx(1 / 3)
    assert trade.contracts == 7
    assert trade.capital_at_risk == Decimal("2450")
    assert trade.applied_fraction == pytest.approx(0.025)
    assert trade.caps_applied == ["regime_kelly_cap", "hard_position_cap"]
    assert trade.win_rate == pytest.approx(0.8) and trade.payoff_ratio == pytest.approx(150 / 350)
    inputs = trade.inputs
    assert inputs.full_fraction == pytest.approx(1 / 3) and inputs.applied_fraction == pytest.approx(0.025)
    assert inputs.multiplier == 0.5 and inputs.prior_weight == 1.0 and inputs.journal_trades == 0
    assert inputs.model_expected_pnl == Decimal("50.00")  # 0.8 * 150 - 0.2 * 350
    assert inputs.caps == {"regime_kelly_cap": Decimal("2500.00"), "hard_position_cap": Decimal("5000.00"),
                           "free_margin": Decimal("80000.00")}
    assert 0 < inputs.expected_log_growth_applied < inputs.expected_log_growth


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


def test_zero_when_no_edge_or_less_than_one_contract_or_unbounded_or_no_distribution():
    no_edge = size(win=0.6)  # 0.6 * 150 - 0.4 * 350 < 0
    assert no_edge.contracts == 0 and no_edge.capital_at_risk == 0
    assert no_edge.caps_applied == ["no_edge"] and no_edge.kelly_fraction == 0.0
    too_big = size(proposal(max_loss="3000", max_profit="3000"))
    assert too_big.contracts == 0
    assert too_big.caps_applied == ["regime_kelly_cap", "hard_position_cap", "below_one_contract"]
    naked = size(unvalidated(proposal(), max_loss=Decimal("Infinity")), dist=binary(0.8))
    assert naked.contracts == 0 and naked.caps_applied == ["unbounded_max_loss"]
    full = size(acct=account(margin_used="90000"))  # no free margin left at all
    assert full.contracts == 0 and "free_margin" in full.caps_applied
    blind = size_trade(proposal(), account(), regime("neutral"), MATRIX, CONFIG, None, as_of=AS_OF)
    assert blind.contracts == 0 and blind.caps_applied == ["no_distribution"] and blind.inputs is None


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"acct": account(nlv="0")}, "net liquidation must be positive"),
        ({"prop": proposal(max_loss="0"), "dist": binary(0.5)}, "max_loss must be positive"),
        ({"ticker_exposure": Decimal("-1")}, "ticker_exposure"),
    ],
)
def test_size_rejects_bad_input(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        size(**kwargs)


@pytest.mark.parametrize("pnl, p", [([1.0, math.nan], [0.5, 0.5]), ([1.0], [0.5]), ([1.0, 2.0], [0.5, -0.5]),
                                    ([1.0, 2.0], [0.5])])
def test_payoff_distribution_rejects_bad_input(pnl, p):
    with pytest.raises(ValueError):
        PayoffDistribution(np.array(pnl), np.array(p), "test")


cents = st.integers(min_value=100, max_value=5_000_000).map(lambda c: Decimal(c) / 100)
outcome_sets = st.lists(st.tuples(st.floats(-1.0, 3.0), st.floats(0.01, 1.0)), min_size=1, max_size=12)
journals = st.lists(st.tuples(st.floats(-1.0, 3.0), st.integers(-30, 30)), max_size=30)


@settings(max_examples=300, deadline=None)
@example(outcomes=[(1e-17, 1.0)], journal=[], nlv=Decimal(1_000), max_loss=Decimal("1.00"), multiplier=0.05,
         regime_name="neutral", margin_share=0.0, exposure_share=0.0, prior_weight=1.0)  # an edge below 1 + f·x
@example(outcomes=[(0.5, 0.6), (-1.0, 0.4)], journal=[(0.5, -3)], nlv=Decimal(100_000), max_loss=Decimal("100.00"),
         multiplier=0.5, regime_name="neutral", margin_share=0.0, exposure_share=0.0,
         prior_weight=0.0)  # the only journal entry closes after the run: nothing known, the model decides
@given(
    outcomes=outcome_sets,
    journal=journals,
    nlv=st.integers(1_000, 10_000_000).map(Decimal),
    max_loss=cents,
    multiplier=st.floats(0.05, 1.0),
    regime_name=st.sampled_from(["low_vol", "neutral", "high_vol", "crisis"]),
    margin_share=st.floats(0, 1),
    exposure_share=st.floats(0, 0.08),
    prior_weight=st.floats(0, 50),
)
def test_kelly_is_zero_without_log_growth_and_never_exceeds_its_caps(
        outcomes, journal, nlv, max_loss, multiplier, regime_name, margin_share, exposure_share, prior_weight):
    assume(prior_weight > 0 or journal)
    config = DecisionConfig(kelly_multiplier=multiplier, kelly_prior_weight=prior_weight)
    acct = account(nlv=nlv, margin_used=(nlv * Decimal(repr(margin_share))).quantize(Decimal("0.01")))
    exposure = (nlv * Decimal(repr(exposure_share))).quantize(Decimal("0.01"))
    prop = proposal(max_loss=max_loss, max_profit=max_loss)
    returns = np.array([r for r, _ in outcomes])
    weights = np.array([w for _, w in outcomes])
    dist = PayoffDistribution(returns * float(max_loss), weights / weights.sum(), "test")
    closed = [ClosedOutcome(structure=prop.structure, regime=regime_name, closed_at=AS_OF - timedelta(days=d),
                            pnl=Decimal(repr(r)) * max_loss, max_loss=max_loss) for r, d in journal]
    trade = size_trade(prop, acct, regime(regime_name), MATRIX, config, dist, as_of=AS_OF,
                       outcomes=closed, ticker_exposure=exposure)

    inputs = trade.inputs
    f_star = trade.kelly_fraction
    # Zero exactly when the best expected log growth (over the shrunk distribution) is not positive.
    if inputs.expected_log_growth <= 0 or inputs.expected_return <= 0:
        assert f_star == 0.0 and trade.contracts == 0 and trade.caps_applied == ["no_edge"]
        assert inputs.expected_log_growth == 0
    else:
        assert f_star > 0
    assert isinstance(trade.contracts, int) and trade.contracts >= 0
    assert trade.capital_at_risk == max_loss * trade.contracts
    risk = trade.capital_at_risk
    assert risk <= MATRIX.for_regime(regime_name).kelly_cap_nlv * nlv
    assert risk <= HARD_LIMITS.position_cap_nlv(regime_name) * nlv - exposure or trade.contracts == 0
    assert acct.margin_used + risk <= nlv * (1 - HARD_LIMITS.min_free_margin_nlv) or trade.contracts == 0
    assert risk <= Decimal(repr(f_star * multiplier)) * nlv
    if trade.contracts:  # a trade that is sized grows wealth in expectation at its applied fraction
        assert inputs.expected_log_growth_applied > 0
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
    prop = proposal(max_loss="100", max_profit="100")
    hi = size(prop, dist=binary(win, 100 * payoff, 100))
    lo = size(prop, dist=binary(win - lower, 100 * payoff, 100))
    assert lo.contracts <= hi.contracts
