"""Backtest metrics against a hand-computed series, and the baselines on a short real window."""
from __future__ import annotations

import math
from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest

from service.backtest import policy_decision
from tools.market_hours import sessions_between
from service.backtest_baselines import (COMMISSION_PER_CONTRACT, EXIT_DTE, MAX_LOSS_NLV, buy_and_hold, condor_chains,
                                        mechanical_condor)
from service.backtest_attribution import Valuation, attribute, explain
from service.backtest_metrics import (agreeing_analysts, calibration_table, drawdown, pnl_by, return_metrics,
                                      trade_metrics, turnover)
from tests.conftest import SHARED_DATA
from tools.chain import NEW_YORK
from tools.providers.history import HistoricalMarket

EQUITY = pd.Series([100.0, 110.0, 99.0, 108.9], index=pd.bdate_range("2022-01-03", periods=4))


def test_return_metrics_match_a_hand_computed_series():
    m = return_metrics(EQUITY)  # returns +10%, -10%, +10%
    assert m["total_return"] == pytest.approx(0.089)
    mean, std = 0.1 / 3, math.sqrt((2 * (0.1 - 0.1 / 3) ** 2 + (-0.1 - 0.1 / 3) ** 2) / 2)
    assert m["sharpe"] == pytest.approx(mean / std * math.sqrt(252))
    assert m["annual_volatility"] == pytest.approx(std * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(-0.1)
    assert m["cagr"] == pytest.approx(1.089 ** (252 / 3) - 1)
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.1)
    # Historical 5% quantile of (-0.1, 0.1, 0.1), linearly interpolated: -0.1 + 0.1 * 0.2.
    assert m["var_95"] == pytest.approx(-0.08)
    assert m["cvar_95"] == pytest.approx(-0.1)
    downside = math.sqrt(0.1 ** 2 / 3)  # the one negative return, over all three
    assert m["sortino"] == pytest.approx(mean * 252 / (downside * math.sqrt(252)))
    assert list(drawdown(EQUITY)) == pytest.approx([0.0, 0.0, -0.1, -0.01])


def test_trade_metrics_turnover_calibration_and_groups_by_hand():
    t = trade_metrics([100.0, -50.0, 200.0, -25.0])
    assert t == {"trades": 4, "win_rate": 0.5, "average_win": 150.0, "average_loss": -37.5, "profit_factor": 4.0,
                 "total_pnl": 225.0}
    assert turnover(1000.0, EQUITY) == pytest.approx(1000.0 / EQUITY.mean() * 252 / 4)
    rows = calibration_table([0.55, 0.58, 0.85, None], [True, False, True, True])
    by_bin = {r["bin"]: r for r in rows}
    assert by_bin["0.5-0.6"] == {"bin": "0.5-0.6", "trades": 2, "mean_predicted": pytest.approx(0.565), "realized": 0.5}
    assert by_bin["0.8-0.9"]["trades"] == 1 and by_bin["0.8-0.9"]["realized"] == 1.0
    assert sum(r["trades"] for r in rows) == 3  # the trade without a prediction is left out
    groups = pnl_by([{"structure": "iron_condor", "realized_pnl": 10}, {"structure": "iron_condor", "realized_pnl": -4},
                     {"structure": None, "realized_pnl": 1}], "structure")
    assert groups == {"iron_condor": {"trades": 2, "wins": 1, "realized_pnl": 6.0},
                      "unknown": {"trades": 1, "wins": 1, "realized_pnl": 1.0}}


def test_the_approval_policy_rejects_poor_odds_and_resizes_large_orders():
    review = {"quantity": 12, "probability_of_profit": "0.7", "closes_position_id": None}
    assert policy_decision(review, "all").action == "approve"
    assert policy_decision(review | {"expected_pnl_per_unit": "5"}, "policy").action == "resize"
    assert policy_decision(review | {"probability_of_profit": "0.4"}, "policy").action == "reject"
    assert policy_decision(review | {"expected_pnl_per_unit": "-1"}, "policy").action == "reject"
    assert policy_decision(review | {"probability_of_profit": "0.1", "closes_position_id": "p"}, "policy").action == "approve"


def test_baselines_on_a_short_real_window():
    market = HistoricalMarket(SHARED_DATA / "history")
    sessions = sessions_between(date(2022, 1, 3), date(2022, 3, 31))
    spy = market.files.bars("SPY")
    closes = pd.Series(spy.close, index=[pd.Timestamp(d).date() for d in spy.dates])[[s[0] for s in sessions]]
    hold = buy_and_hold(closes, 100_000.0)
    shares = np.floor(100_000.0 / closes.iloc[0])
    assert hold.iloc[-1] == pytest.approx(100_000.0 + shares * (closes.iloc[-1] - closes.iloc[0]))

    equity, trades = mechanical_condor(condor_chains(market, "SPY", sessions), 100_000.0)
    assert len(equity) == len(sessions) and len(trades) >= 2
    for trade in trades:
        long_put, short_put, short_call, long_call = trade["strikes"]
        assert long_put < short_put < short_call < long_call
        assert trade["credit"] > 0 and trade["quantity"] >= 1
        width = max(short_put - long_put, long_call - short_call)
        assert (width - trade["credit"]) * 100 * trade["quantity"] <= MAX_LOSS_NLV * 100_000.0 * 1.2
        fees = 0 if trade["reason"] == "expiry" else COMMISSION_PER_CONTRACT * 4 * trade["quantity"]
        assert trade["realized_pnl"] == pytest.approx((trade["credit"] - trade["close_cost"]) * 100 * trade["quantity"] - fees)
        held = (np.datetime64(trade["expiry"]) - np.datetime64(trade["closed"])).astype(int)
        assert trade["reason"] != "21 DTE" or held <= EXIT_DTE
    # Between trades the equity moves only by the realized P&L of what closed (and the open condor's mark).
    assert equity.iloc[0] < 100_000.0 + 1 and equity.iloc[0] > 100_000.0 - 1000


def test_greeks_attribution_of_one_position_between_two_marks_by_hand():
    # A long call, two units: marked at Monday's close, then at Tuesday's (one calendar day later).
    monday = Valuation(datetime(2022, 3, 7, 16, 0, tzinfo=NEW_YORK), pnl=-50.0, underlying=400.0,
                       delta=110.0, gamma=6.0, theta=-30.0, vega=80.0, leg_vols=(0.25,), leg_vegas=(80.0,))
    tuesday = Valuation(datetime(2022, 3, 8, 16, 0, tzinfo=NEW_YORK), pnl=350.0, underlying=403.0,
                        delta=140.0, gamma=5.0, theta=-31.0, vega=78.0, leg_vols=(0.28125,), leg_vegas=(78.0,))
    terms = explain(monday, tuesday)
    assert terms["delta"] == 110.0 * 3.0  # shares x dS
    assert terms["gamma"] == 0.5 * 6.0 * 3.0 ** 2
    assert terms["theta"] == -30.0  # $ per calendar day x 1 day
    assert terms["vega"] == 80.0 * 3.125  # $ per vol point x (28.125 - 25) vol points
    assert terms["actual"] == 400.0
    assert terms["residual"] == 400.0 - (330.0 + 27.0 - 30.0 + 250.0)
    assert sum(terms[k] for k in ("delta", "gamma", "theta", "vega", "residual")) == terms["actual"]

    # By session: the opening commission on Monday, the move on Tuesday; the columns add up.
    report = attribute({"p1": [monday, tuesday]}, [(monday.at, 1.3)])
    assert [r["session"] for r in report["by_day"]] == ["2022-03-07", "2022-03-08"]
    assert report["by_day"][0] == {"session": "2022-03-07", "delta": 0.0, "gamma": 0.0, "theta": 0.0, "vega": 0.0,
                                   "commissions": -1.3, "residual": 0.0, "actual": -1.3}
    assert report["by_day"][1]["residual"] == terms["residual"] and report["by_day"][1]["actual"] == 400.0
    total = report["total"]
    assert total["actual"] == pytest.approx(398.7)
    assert sum(total[k] for k in ("delta", "gamma", "theta", "vega", "commissions", "residual")) == pytest.approx(total["actual"])

    # Unknown Greeks explain nothing: the whole change is residual.
    blind = explain(Valuation(monday.at, 0.0, None), Valuation(tuesday.at, 75.0, 401.0))
    assert blind == {"delta": 0.0, "gamma": 0.0, "theta": 0.0, "vega": 0.0, "actual": 75.0, "residual": 75.0}


def test_analyst_agreement_counts_the_analysts_on_the_verdicts_side():
    signals = [{"source": "technical", "direction": "bullish", "conviction": 0.6},
               {"source": "flow", "direction": "bullish", "conviction": 0.3},
               {"source": "social", "direction": "bearish", "conviction": 0.5},
               {"source": "vol_surface", "direction": "rich", "conviction": 0.4}]
    assert agreeing_analysts(signals, "bullish", "neutral") == 2
    assert agreeing_analysts(signals, "bullish", "rich") == 3
    assert agreeing_analysts(signals, "bearish", "cheap") == 1
    assert agreeing_analysts(signals, "neutral", "rich") == 1  # an iron condor on rich vol: the vol analyst
    assert agreeing_analysts([s | {"conviction": 0.0} for s in signals], "bullish", "rich") == 0
    groups = pnl_by([{"agreeing_analysts": 0, "realized_pnl": 5}, {"agreeing_analysts": 2, "realized_pnl": -3},
                     {"agreeing_analysts": None, "realized_pnl": 1}], "agreeing_analysts")
    assert groups == {"0": {"trades": 1, "wins": 1, "realized_pnl": 5.0}, "2": {"trades": 1, "wins": 0, "realized_pnl": -3.0},
                      "unknown": {"trades": 1, "wins": 1, "realized_pnl": 1.0}}
