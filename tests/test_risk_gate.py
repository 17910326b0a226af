"""The risk gate: pre-trade account/ticker checks, post-trade portfolio checks, naked shorts, and
properties that no hard-limit breach is ever approved and everything within limits is."""
from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from risk.gate import post_trade, pre_trade, session_closed_reason, uncovered_short_legs
from risk.limits import load_risk_matrix, parse_risk_matrix
from tests.risk_factories import (
    IN_SESSION,
    NY,
    account,
    leg,
    permissive_matrix,
    position,
    proposal,
    raw_matrix,
    regime,
    sized,
)

MATRIX = load_risk_matrix()
LOOSE = permissive_matrix()
SECTORS = {"SPY": "index", "QQQ": "index", "AAPL": "tech", "MSFT": "tech", "XLE": "energy", "JPM": "financials"}
NEAR, FAR = date(2024, 4, 19), date(2024, 5, 17)


def codes(reasons):
    return [r.code for r in reasons]


def pre(ticker="SPY", sector="index", acct=None, positions=(), regime_name="neutral", matrix=MATRIX,
        now=IN_SESSION):
    return pre_trade(ticker, sector, acct or account(), list(positions), regime(regime_name), matrix, now)


def post(trades, acct=None, positions=(), regime_name="neutral", matrix=MATRIX, sectors=SECTORS, **kw):
    return post_trade(list(trades), acct or account(), list(positions), regime(regime_name), matrix,
                      sectors, **kw)


# --------------------------------------------------------------------------- naked shorts


@pytest.mark.parametrize(
    "legs, naked",
    [
        ([leg(440, "P", "sell"), leg(435, "P", "buy")], []),  # bull put spread
        ([leg(460, "C", "sell"), leg(465, "C", "buy")], []),  # bear call spread
        ([leg(450, "C", "buy"), leg(455, "C", "sell")], []),  # bull call spread: lower long covers
        ([leg(435, "P", "buy"), leg(440, "P", "sell"), leg(460, "C", "sell"), leg(465, "C", "buy")], []),
        ([leg(440, "C", "buy"), leg(450, "C", "sell", 2), leg(460, "C", "buy")], []),  # butterfly
        ([leg(440, "P", "buy"), leg(450, "P", "sell", 2), leg(465, "P", "buy")], []),  # broken wing
        ([leg(450, "C", "sell", expiry=NEAR), leg(450, "C", "buy", expiry=FAR)], []),  # calendar
        ([leg(450, "P", "sell", expiry=NEAR), leg(445, "P", "buy", expiry=FAR)], []),  # diagonal
        ([leg(450, "C", "buy")], []),  # long call
        ([leg(440, "P", "sell"), leg(460, "C", "sell")], [("440P", 1), ("460C", 1)]),  # strangle
        ([leg(440, "P", "sell"), leg(460, "C", "sell"), leg(465, "C", "buy")], [("440P", 1)]),  # jade lizard
        ([leg(450, "C", "buy"), leg(460, "C", "sell", 2)], [("460C", 1)]),  # 1x2 ratio
        ([leg(450, "C", "buy", expiry=NEAR), leg(450, "C", "sell", expiry=FAR)], [("450C", 1)]),  # long expires first
        ([leg(440, "P", "sell"), leg(440, "C", "buy")], [("440P", 1)]),  # a call cannot cover a put
        ([leg(440, "P", "sell", 3), leg(430, "P", "buy", 2)], [("440P", 1)]),
    ],
)
def test_uncovered_short_legs(legs, naked):
    found = [(f"{leg_.strike}{leg_.right}", n) for leg_, n in uncovered_short_legs(legs)]
    assert sorted(found) == sorted(naked)


def test_post_trade_vetoes_naked_short():
    strangle = proposal(structure="short_strangle", legs=[leg(440, "P", "sell"), leg(460, "C", "sell")])
    [decision] = post([sized(strangle, 1)], matrix=LOOSE)
    assert not decision.approved
    [veto] = decision.vetoes
    assert veto.code == "naked_short" and veto.hard and veto.value == 2.0 and veto.limit == 0.0
    assert "1x 2024-04-19 440P" in veto.message and "1x 2024-04-19 460C" in veto.message


def test_a_jade_lizards_cash_secured_put_passes_only_when_cash_covers_it():
    legs = [leg(440, "P", "sell"), leg(460, "C", "sell"), leg(465, "C", "buy")]
    lizard = proposal(structure="jade_lizard", legs=legs, max_loss="43000").model_copy(
        update={"cash_secured_puts": True})
    [funded] = post([sized(lizard, 1)], acct=account(nlv="1000000"), matrix=LOOSE)
    assert "naked_short" not in codes(funded.vetoes) and "cash_secured_put_unfunded" not in codes(funded.vetoes)
    assert "cash_secured_put" in codes(funded.warnings)
    [unfunded] = post([sized(lizard, 3)], acct=account(nlv="100000"), matrix=LOOSE)
    assert "cash_secured_put_unfunded" in codes(unfunded.vetoes)  # 3 x 440 x 100 = $132,000 > $100,000
    # Without the flag the same short put is naked; the short call stays covered by the long call either way.
    [naked] = post([sized(lizard.model_copy(update={"cash_secured_puts": False}), 1)], acct=account(nlv="1000000"),
                   matrix=LOOSE)
    assert "naked_short" in codes(naked.vetoes) and "1x 2024-04-19 440P" in naked.vetoes[0].message


# --------------------------------------------------------------------------- pre-trade


def test_pre_trade_clean_account_is_approved():
    decision = pre()
    assert decision.approved and decision.stage == "pre_trade" and decision.regime == "neutral"
    assert decision.vetoes == [] and decision.warnings == []


def test_kill_switch():
    decision = pre(acct=account(halted=True, halt_reason="operator /halt"))
    assert not decision.approved
    assert codes(decision.vetoes) == ["kill_switch"]
    assert decision.vetoes[0].hard and "operator /halt" in decision.vetoes[0].message


def test_daily_loss_halt_counts_realized_and_unrealized():
    halted = pre(acct=account(realized="-1000", unrealized="-2000"))
    assert "daily_loss_halt" in codes(halted.vetoes)
    veto = halted.vetoes[codes(halted.vetoes).index("daily_loss_halt")]
    assert veto.hard and veto.value == pytest.approx(0.03) and veto.limit == pytest.approx(0.03)
    assert pre(acct=account(unrealized="-2999.99")).approved  # just under 3%, no realized loss


def test_realized_loss_lockout_until_daily_reset():
    decision = pre(acct=account(realized="-2000"))  # 2% realized: the neutral lockout, not the halt
    assert codes(decision.vetoes) == ["daily_loss_lockout"]
    veto = decision.vetoes[0]
    assert not veto.hard and veto.value == pytest.approx(0.02) and veto.limit == pytest.approx(0.02)
    assert "2024-03-06T00:00:00-05:00" in veto.message
    assert pre(acct=account(realized="-1999")).approved
    # In crisis-like tighter rules the same loss would lock earlier: high_vol locks at 1.5%.
    assert codes(pre(acct=account(realized="-1500"), regime_name="high_vol").vetoes) == ["daily_loss_lockout"]


def test_cooldown_after_loss():
    recent = pre(acct=account(last_loss_at=IN_SESSION - timedelta(minutes=10)))
    assert codes(recent.vetoes) == ["cooldown"]
    assert recent.vetoes[0].value == pytest.approx(10.0) and recent.vetoes[0].limit == 30.0
    assert pre(acct=account(last_loss_at=IN_SESSION - timedelta(minutes=30))).approved
    high_vol = pre(acct=account(last_loss_at=IN_SESSION - timedelta(minutes=45)), regime_name="high_vol")
    assert codes(high_vol.vetoes) == ["cooldown"]  # 60 minutes in high_vol
    with pytest.raises(ValueError, match="last_loss_at must be timezone-aware"):
        pre(acct=account(last_loss_at=datetime(2024, 3, 5, 10, 0)))


def test_trade_frequency():
    assert pre(acct=account(trades_today=5)).approved
    decision = pre(acct=account(trades_today=6))
    assert codes(decision.vetoes) == ["trade_frequency"]
    assert decision.vetoes[0].value == 6.0 and decision.vetoes[0].limit == 6.0


@pytest.mark.parametrize(
    "now, is_open",
    [
        (datetime(2024, 3, 5, 9, 30, tzinfo=NY), True),
        (datetime(2024, 3, 5, 9, 29, 59, tzinfo=NY), False),
        (datetime(2024, 3, 5, 15, 59, 59, tzinfo=NY), True),
        (datetime(2024, 3, 5, 16, 0, tzinfo=NY), False),
        (datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc), True),  # 10:00 EST
        (datetime(2024, 3, 5, 14, 0, tzinfo=timezone.utc), False),  # 09:00 EST
        (datetime(2024, 7, 2, 13, 45, tzinfo=timezone.utc), True),  # 09:45 EDT
        (datetime(2024, 3, 9, 11, 0, tzinfo=NY), False),  # Saturday
        (datetime(2024, 7, 4, 11, 0, tzinfo=NY), False),  # Independence Day
        (datetime(2024, 11, 29, 12, 59, tzinfo=NY), True),  # day after Thanksgiving closes 13:00
        (datetime(2024, 11, 29, 13, 30, tzinfo=NY), False),
    ],
)
def test_session_hours(now, is_open):
    decision = pre(now=now)
    assert decision.approved is is_open
    if not is_open:
        assert codes(decision.vetoes) == ["outside_session"]


def test_session_reason_text_and_naive_time():
    hours = MATRIX.for_regime("neutral").account_rules.session
    assert session_closed_reason(datetime(2024, 7, 4, 11, 0, tzinfo=NY), hours) == \
        "2024-07-04 is not an NYSE trading day"
    assert "outside the session 09:30-13:00" in session_closed_reason(datetime(2024, 11, 29, 13, 30, tzinfo=NY), hours)
    with pytest.raises(ValueError, match="timezone-aware"):
        pre(now=datetime(2024, 3, 5, 11, 0))


def test_symbol_blocklist_and_regime_without_new_trades():
    raw = raw_matrix()
    raw["regimes"]["neutral"]["account_rules"]["symbol_blocklist"] = ["gme", " AMC"]
    matrix = parse_risk_matrix(raw)
    blocked = pre("GME", "consumer", matrix=matrix)
    assert codes(blocked.vetoes) == ["symbol_blocked"] and not blocked.vetoes[0].hard
    assert pre("amc", "media", matrix=matrix).approved is False
    crisis = pre(regime_name="crisis")
    assert codes(crisis.vetoes) == ["regime_no_new_trades"] and crisis.regime == "crisis"


def test_sector_and_position_already_at_limit():
    tech = [position("AAPL", "tech", max_loss="9000"), position("MSFT", "tech", max_loss="6000")]
    assert codes(pre("NVDA", "tech", positions=tech).vetoes) == ["sector_limit"]
    assert pre("XLE", "energy", positions=tech).approved
    at_cap = [position("SPY", "index", max_loss="5000")]
    decision = pre(positions=at_cap)
    assert codes(decision.vetoes) == ["position_size"] and decision.vetoes[0].value == pytest.approx(0.05)
    assert pre(positions=[position(max_loss="1999")], regime_name="crisis", matrix=LOOSE).approved
    assert codes(pre(positions=[position(max_loss="2000")], regime_name="crisis", matrix=LOOSE).vetoes) == \
        ["position_size"]


def test_free_margin_below_minimum():
    assert pre(acct=account(margin_used="80000")).approved  # exactly 20% free
    decision = pre(acct=account(margin_used="80000.01"))
    assert codes(decision.vetoes) == ["free_margin"]
    assert decision.vetoes[0].hard and decision.vetoes[0].limit == pytest.approx(0.2)


def test_existing_naked_short_warns_and_bad_account_fails_closed():
    decision = pre(positions=[position("TSLA", "consumer", has_naked_short=True)])
    assert decision.approved and codes(decision.warnings) == ["existing_naked_short"]
    assert decision.warnings[0].hard
    broke = pre(acct=account(nlv="0"))
    assert not broke.approved and codes(broke.vetoes) == ["invalid_account"]
    [broke_post] = post([sized(proposal(), 1)], acct=account(nlv="-5"))
    assert codes(broke_post.vetoes) == ["invalid_account"] and broke_post.vetoes[0].hard


# --------------------------------------------------------------------------- post-trade


def test_post_trade_within_limits_is_approved():
    [decision] = post([sized(proposal(), 5)])  # $1,750 at risk on $100k
    assert decision.approved and decision.stage == "post_trade" and decision.vetoes == []
    assert decision.warnings == [] and not decision.requires_acknowledgement


def test_position_size_and_acknowledgement():
    [decision] = post([sized(proposal(), 15)], matrix=LOOSE)  # $5,250 > 5%
    assert not decision.approved
    assert codes(decision.vetoes) == ["position_size"]
    assert decision.vetoes[0].value == pytest.approx(0.0525) and decision.vetoes[0].limit == pytest.approx(0.05)
    assert decision.requires_acknowledgement and codes(decision.warnings) == ["contracts_need_ack"]
    [small] = post([sized(proposal(max_loss="100"), 11)], matrix=LOOSE)
    assert small.approved and small.requires_acknowledgement
    assert small.warnings[0].hard and small.warnings[0].value == 11.0
    [ten] = post([sized(proposal(max_loss="100"), 10)], matrix=LOOSE)
    assert not ten.requires_acknowledgement


def test_trades_are_checked_cumulatively_in_order():
    trades = [sized(proposal(), 7), sized(proposal(), 7), sized(proposal(max_loss="100"), 1), sized(proposal(), 7)]
    decisions = post(trades, matrix=LOOSE)
    # $2,450 + $2,450 = $4,900; then $100 fits ($5,000 exactly); a further $2,450 does not.
    assert [d.approved for d in decisions] == [True, True, True, False]
    assert decisions[3].vetoes[0].code == "position_size"
    assert decisions[3].vetoes[0].value == pytest.approx(0.0745)
    # Crisis halves the room: 2% = $2,000, so 7 x $350 = $2,450 is vetoed outright.
    [crisis] = post([sized(proposal(), 7)], regime_name="crisis", matrix=LOOSE)
    assert codes(crisis.vetoes) == ["position_size"] and crisis.vetoes[0].limit == pytest.approx(0.02)


def test_sector_limit_exact():
    tech = [position("AAPL", "tech", max_loss="4000"), position("MSFT", "tech", max_loss="5000"),
            position("NVDA", "tech", max_loss="4000")]
    sectors = {**SECTORS, "ORCL": "tech"}
    [fits] = post([sized(proposal("ORCL", max_loss="500"), 4)], positions=tech, sectors=sectors, matrix=LOOSE)
    assert fits.approved  # 13,000 + 2,000 = 15% exactly
    [over] = post([sized(proposal("ORCL", max_loss="500.01"), 4)], positions=tech, sectors=sectors,
                  matrix=LOOSE)
    assert codes(over.vetoes) == ["sector_limit"] and over.vetoes[0].hard
    assert over.vetoes[0].value == pytest.approx(0.1500004)
    [unknown] = post([sized(proposal("ZZZZ"), 1)], matrix=LOOSE)
    assert codes(unknown.vetoes) == ["sector_unknown"]


def test_free_margin_after_trade():
    [decision] = post([sized(proposal(), 5)], acct=account(margin_used="79000"), matrix=LOOSE)
    assert codes(decision.vetoes) == ["free_margin"]
    assert decision.vetoes[0].value == pytest.approx(0.1925)
    [fits] = post([sized(proposal(max_loss="200"), 5)], acct=account(margin_used="79000"), matrix=LOOSE)
    assert fits.approved  # exactly 20% free afterwards


def test_halt_and_daily_loss_are_rechecked_after_sizing():
    [halted] = post([sized(proposal(), 1)], acct=account(halted=True), matrix=LOOSE)
    assert codes(halted.vetoes) == ["kill_switch"]
    [lost] = post([sized(proposal(), 1)], acct=account(realized="-3000"), matrix=LOOSE)
    assert codes(lost.vetoes) == ["daily_loss_halt"]


def test_zero_contracts_is_not_approved():
    trade = sized(proposal(), 0).model_copy(update={"caps_applied": ["no_edge"]})
    [decision] = post([trade])
    assert not decision.approved and codes(decision.vetoes) == ["no_contracts"]
    assert "no_edge" in decision.vetoes[0].message


def test_beta_weighted_delta_warns_in_neutral_and_vetoes_in_high_vol():
    # 10 units of delta 0.6 per share on a $450 underlying: 600 shares, $270,000 dollar delta = 2.7x NLV.
    big = proposal(max_loss="100", delta=0.6, gamma=0.0, vega=0.0, theta=0.0)
    [neutral] = post([sized(big, 10)], regime_name="neutral")
    bwd = neutral.warnings[codes(neutral.warnings).index("beta_weighted_delta")]
    assert bwd.value == pytest.approx(2.7) and bwd.limit == 0.5 and not bwd.hard
    assert "var_budget" in codes(neutral.vetoes)  # VaR budget is a veto in every regime
    [high] = post([sized(big, 10)], regime_name="high_vol", matrix=MATRIX)
    assert {"beta_weighted_delta", "var_budget"} <= set(codes(high.vetoes))


def test_var_value_is_the_one_factor_delta_gamma_normal():
    from scipy.stats import norm

    trade = proposal(max_loss="100", delta=0.3, gamma=0.0, vega=0.0, theta=0.0)
    [decision] = post([sized(trade, 10)], regime_name="neutral", matrix=MATRIX, betas={"SPY": 1.2})
    # 300 shares * $450 * beta 1.2 * (VIX 18% / sqrt 252) * z95, over $100,000.
    expected = 300 * 450 * 1.2 * 0.18 / np.sqrt(252) * norm.ppf(0.95) / 100_000
    assert expected > 0.02
    veto = decision.vetoes[codes(decision.vetoes).index("var_budget")]
    assert veto.value == pytest.approx(expected) and veto.limit == 0.02


def test_risk_reducing_trade_over_a_soft_limit_is_not_vetoed():
    held = [position("SPY", "index", max_loss="1000", delta=600.0, underlying_price=450.0)]  # 2.7x NLV
    hedge = proposal(structure="bear_call_spread", legs=[leg(460, "C", "sell"), leg(465, "C", "buy")],
                     max_loss="100", delta=-0.3, gamma=0.0, vega=0.0, theta=0.0)
    [decision] = post([sized(hedge, 5)], positions=held, regime_name="high_vol", acct=account(margin_used="1000"))
    assert decision.approved
    assert {"beta_weighted_delta", "var_budget"} <= set(codes(decision.warnings))
    assert "does not increase it" in decision.warnings[0].message


def test_vega_theta_gamma_and_strategy_concentration_limits():
    # high_vol: short gamma per 1% veto at 15%, vega warn at 0.5%, theta warn at 0.3%.
    short_vol = proposal(max_loss="100", delta=0.0, gamma=-0.05, vega=-0.8, theta=0.5)
    [decision] = post([sized(short_vol, 10)], regime_name="high_vol")
    # gamma: 10 * 100 * 0.05 = 50 shares/$; 50 * 450^2 * 0.01 = $101,250 per 1% = 101% of NLV.
    gamma_veto = decision.vetoes[codes(decision.vetoes).index("short_gamma")]
    assert gamma_veto.value == pytest.approx(1.0125)
    vega = decision.warnings[codes(decision.warnings).index("vega")]
    theta = decision.warnings[codes(decision.warnings).index("theta")]
    assert vega.value == pytest.approx(800 / 100_000) and theta.value == pytest.approx(500 / 100_000)
    # Strategy concentration: crisis vetoes above 4% of NLV in one structure.
    held = [position("QQQ", "index", structure="iron_condor", max_loss="1500"),
            position("XLE", "energy", structure="iron_condor", max_loss="1500")]
    condor = proposal("JPM", structure="iron_condor", max_loss="500", delta=0, gamma=0, vega=0, theta=0,
                      legs=[leg(435, "P", "buy"), leg(440, "P", "sell"), leg(460, "C", "sell"), leg(465, "C", "buy")])
    [crisis] = post([sized(condor, 3)], positions=held, regime_name="crisis", acct=account(margin_used="3000"))
    conc = crisis.vetoes[codes(crisis.vetoes).index("strategy_concentration")]
    assert conc.value == pytest.approx(0.045) and conc.limit == 0.04


def test_correlation_with_held_tickers():
    rng = np.random.default_rng(11)
    market = rng.normal(0, 0.01, 120)
    returns = {"SPY": market, "QQQ": market + rng.normal(0, 0.001, 120), "XLE": rng.normal(0, 0.01, 120)}
    held = [position("SPY", "index", max_loss="1000")]
    flat = dict(delta=0.0, gamma=0.0, vega=0.0, theta=0.0)
    [qqq] = post([sized(proposal("QQQ", **flat), 1)], positions=held, returns=returns,
                 acct=account(margin_used="1000"))
    corr = qqq.warnings[codes(qqq.warnings).index("correlation")]
    assert corr.value > 0.95 and corr.limit == 0.80 and qqq.approved  # neutral: warn
    [xle] = post([sized(proposal("XLE", **flat), 1)], positions=held, returns=returns,
                 acct=account(margin_used="1000"))
    assert "correlation" not in codes(xle.warnings)
    raw = raw_matrix()
    raw["regimes"]["neutral"]["soft_limits"]["correlation"]["action"] = "veto"
    [vetoed] = post([sized(proposal("QQQ", **flat), 1)], positions=held, returns=returns,
                    acct=account(margin_used="1000"), matrix=parse_risk_matrix(raw))
    assert codes(vetoed.vetoes) == ["correlation"]
    [unchecked] = post([sized(proposal("QQQ", **flat), 1)], positions=held, acct=account(margin_used="1000"))
    assert codes(unchecked.warnings) == ["correlation_not_checked"]
    [short] = post([sized(proposal("QQQ", **flat), 1)], positions=held, acct=account(margin_used="1000"),
                   returns={"QQQ": market, "SPY": market[:5]})
    assert codes(short.warnings) == ["correlation_unknown"]


# --------------------------------------------------------------------------- properties

TICKERS = list(SECTORS)
COVERED = [leg(440, "P", "sell"), leg(435, "P", "buy")]
NAKED = [leg(440, "P", "sell"), leg(460, "C", "sell")]

positions_st = st.lists(
    st.tuples(st.sampled_from(TICKERS), st.integers(0, 6_000)), max_size=6
).map(lambda rows: [position(t, SECTORS[t], max_loss=str(m)) for t, m in rows])
trades_st = st.lists(
    st.tuples(st.sampled_from(TICKERS), st.integers(0, 25), st.integers(20, 2_000), st.booleans()),
    min_size=1, max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(
    nlv=st.integers(20_000, 2_000_000),
    margin_share=st.floats(0, 0.9),
    daily_loss_share=st.floats(-0.01, 0.05),
    halted=st.booleans(),
    regime_name=st.sampled_from(["low_vol", "neutral", "high_vol", "crisis"]),
    held=positions_st,
    rows=trades_st,
)
def test_post_trade_never_passes_a_hard_breach_and_passes_everything_within_limits(
    nlv, margin_share, daily_loss_share, halted, regime_name, held, rows
):
    nlv_d = Decimal(nlv)
    margin = (nlv_d * Decimal(repr(margin_share))).quantize(Decimal("1"))
    pnl = -(nlv_d * Decimal(repr(daily_loss_share))).quantize(Decimal("0.01"))
    acct = account(nlv=nlv_d, margin_used=margin, unrealized=pnl, halted=halted)
    trades = [sized(proposal(t, legs=NAKED if naked else COVERED, max_loss=str(ml), delta=0.0, gamma=0.0,
                             vega=0.0, theta=0.0), n)
              for t, n, ml, naked in rows]
    decisions = post(trades, acct=acct, positions=held, regime_name=regime_name, matrix=LOOSE)

    # Oracle: the SPEC's hard limits, applied in order to the book plus approved trades.
    cap = Decimal("0.02") if regime_name == "crisis" else Decimal("0.05")
    by_ticker, by_sector = defaultdict(Decimal), defaultdict(Decimal)
    for p in held:
        by_ticker[p.ticker] += p.max_loss
        by_sector[p.sector] += p.max_loss
    used = margin
    for (ticker, n, ml, naked), decision in zip(rows, decisions):
        risk = Decimal(ml) * n
        expected = set()
        if halted:
            expected.add("kill_switch")
        if -pnl >= Decimal("0.03") * nlv_d:
            expected.add("daily_loss_halt")
        if naked:
            expected.add("naked_short")
        if n == 0:
            expected.add("no_contracts")
        else:
            if by_ticker[ticker] + risk > cap * nlv_d:
                expected.add("position_size")
            if by_sector[SECTORS[ticker]] + risk > Decimal("0.15") * nlv_d:
                expected.add("sector_limit")
            if nlv_d - used - risk < Decimal("0.20") * nlv_d:
                expected.add("free_margin")
        assert set(codes(decision.vetoes)) == expected
        event("approved" if not expected else "vetoed: " + ",".join(sorted(expected)))
        assert decision.approved is (not expected)
        assert all(v.hard for v in decision.vetoes if v.code != "no_contracts")
        assert all(v.limit is not None and v.value is not None and v.message for v in decision.vetoes)
        assert decision.requires_acknowledgement is (n > 10)
        if decision.approved:
            by_ticker[ticker] += risk
            by_sector[SECTORS[ticker]] += risk
            used += risk


@settings(max_examples=150, deadline=None)
@given(
    nlv=st.integers(20_000, 2_000_000),
    margin_share=st.floats(0, 1),
    realized_share=st.floats(-0.01, 0.05),
    unrealized_share=st.floats(-0.02, 0.03),
    halted=st.booleans(),
    regime_name=st.sampled_from(["low_vol", "neutral", "high_vol", "crisis"]),
    held=positions_st,
    ticker=st.sampled_from(TICKERS),
)
def test_pre_trade_never_passes_a_hard_breach_and_passes_everything_within_limits(
    nlv, margin_share, realized_share, unrealized_share, halted, regime_name, held, ticker
):
    nlv_d = Decimal(nlv)
    margin = (nlv_d * Decimal(repr(margin_share))).quantize(Decimal("1"))
    realized = -(nlv_d * Decimal(repr(realized_share))).quantize(Decimal("0.01"))
    unrealized = -(nlv_d * Decimal(repr(unrealized_share))).quantize(Decimal("0.01"))
    acct = account(nlv=nlv_d, margin_used=margin, realized=realized, unrealized=unrealized, halted=halted)
    decision = pre(ticker, SECTORS[ticker], acct=acct, positions=held, regime_name=regime_name, matrix=LOOSE)

    cap = Decimal("0.02") if regime_name == "crisis" else Decimal("0.05")
    expected = set()
    if halted:
        expected.add("kill_switch")
    if -(realized + unrealized) >= Decimal("0.03") * nlv_d:
        expected.add("daily_loss_halt")
    if nlv_d - margin < Decimal("0.20") * nlv_d:
        expected.add("free_margin")
    if sum((p.max_loss for p in held if p.sector == SECTORS[ticker]), Decimal(0)) >= Decimal("0.15") * nlv_d:
        expected.add("sector_limit")
    if sum((p.max_loss for p in held if p.ticker == ticker), Decimal(0)) >= cap * nlv_d:
        expected.add("position_size")
    hard = {v.code for v in decision.vetoes if v.hard}
    assert hard == expected
    assert all(v.limit is not None and v.value is not None and v.message for v in decision.vetoes)
    event("approved" if not expected else "vetoed: " + ",".join(sorted(expected)))
    soft = {v.code for v in decision.vetoes if not v.hard}
    # The permissive matrix's only soft veto left is its 3% realized-loss lockout.
    assert soft <= {"daily_loss_lockout"}
    assert ("daily_loss_lockout" in soft) is (-realized >= Decimal("0.03") * nlv_d)
    assert decision.approved is (not expected and not soft)
