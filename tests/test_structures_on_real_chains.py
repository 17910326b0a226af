"""The new structures chosen by the selector on the real SPX and SPY Cboe chains, where their rules call for them.

What `agents.strategy.strategy_selector` does per ticker is done here with the same functions, on
the real chain analysis: the vol-surface evidence (30/90-day ATM vol, 25-delta risk reversal),
the expected pin from the flow (max pain while dealers are long gamma), the structure chosen from
a verdict, and the proposal built against the fitted surface with the pin as the target. IV rank
is None, as in a `--chain SYM=PATH` run (a Cboe file carries no implied-vol history).

The chains decide which of the new structures their rules can ever reach:

* SPX 2022-02-04: the term structure is in contango (30-day 19.7% < 90-day 20.3%), so no
  calendar or diagonal; spot 4,500 sits below the zero-gamma level (~4,591: dealers short gamma),
  so no pin and no butterfly or broken wing; the put skew is rich (25-delta RR about -7.5 vol
  points), so a bullish rich-vol view sells the jade lizard.
* SPY 2023-09-14: contango too (10.6% < 12.2%), so no calendar or diagonal; dealers barely long
  gamma (spot 450.81 over zero gamma ~450.60) with max pain 1.3% below spot, so a bearish view
  buys the put broken-wing butterfly and a neutral one the put butterfly at the pin — never the
  call versions, whose target must lie above spot; the put skew (RR about -2.5 points) is not
  rich enough for the lizard.

Those unreachable cells are asserted as such (and that the missing condition alone would flip the
choice, then the builder stages it on the real chain), so a change of rules or data that makes
them reachable fails here and gets looked at. One more finding: given a pin, SPX's broken wings
and put butterfly would still be refused at the default `min_open_interest` (5-point wing strikes
with no open interest at the target expiry); they build only with that check relaxed.
"""
from __future__ import annotations

import itertools
from decimal import Decimal

import numpy as np
import pytest

from agents.analysts import surface_evidence
from agents.selector import build_proposal, choose_structure_with_reason, expected_pin, term_inverted
from config.settings import DecisionConfig
from domain.decision import SizedTrade
from risk.gate import post_trade, uncovered_short_legs
from tests.risk_factories import account, permissive_matrix, regime
from tools.cboe import read_cboe_quote_table
from tools.chain_analysis import analyze_chain
from tools.structures import has_naked_short

CONFIG = DecisionConfig(jade_lizard_short_put="cash_secured")
NEW_STRUCTURES = ("call_broken_wing_butterfly", "put_broken_wing_butterfly", "jade_lizard", "call_calendar",
                  "put_calendar", "call_diagonal", "put_diagonal", "call_butterfly", "put_butterfly")
CHAINS = {"SPX": "spx_quotedata_2022-02-04.csv", "SPY": "spy_quotedata_2023-09-14.csv"}

# The new structures each chain's rules reach, and the verdict that reaches each (price view, vol view).
REACHABLE = {
    "SPX": {"jade_lizard": ("bullish", "rich")},
    "SPY": {"put_broken_wing_butterfly": ("bearish", "neutral"), "put_butterfly": ("neutral", "neutral")},
}


class RealInputs:
    """The selector node's inputs for one real chain, computed as the node computes them."""

    def __init__(self, symbol: str, path):
        self.symbol = symbol
        self.chain = read_cboe_quote_table(path)
        self.analysis = analyze_chain(self.chain)
        evidence, _ = surface_evidence(self.analysis)
        self.atm_30d, self.atm_90d, self.rr25 = evidence["atm_iv_30d"], evidence["atm_iv_90d"], evidence["rr25_30d"]
        self.inverted = term_inverted(self.atm_30d, self.atm_90d)
        self.pin = expected_pin(self.analysis.flow, self.chain.spot, self.chain.as_of, CONFIG.target_dte)

    def choose(self, price_view: str, vol_view: str, regime_name: str = "neutral", iv_rank: float | None = None,
               config: DecisionConfig = CONFIG, **override):
        inputs = dict(pin=self.pin, risk_reversal=self.rr25, term_inverted=self.inverted) | override
        return choose_structure_with_reason(price_view, vol_view, regime_name, iv_rank, inputs["pin"],
                                            inputs["risk_reversal"],
                                            allow_jade_lizard=config.jade_lizard_short_put == "cash_secured",
                                            term_inverted=inputs["term_inverted"])

    def build(self, structure: str, reason: str, pin: float | None = None, config: DecisionConfig = CONFIG):
        pin = self.pin if pin is None else pin
        return build_proposal(structure, self.symbol, self.chain, self.analysis.chain_iv.vol, config, rationale=reason,
                              surface=self.analysis.surface,
                              target=None if pin is None else self.chain.spot * (1.0 + pin))


@pytest.fixture(scope="module")
def real(shared_data):
    return {symbol: RealInputs(symbol, shared_data / "cboe" / name) for symbol, name in CHAINS.items()}


def test_the_chains_market_conditions(real):
    spx, spy = real["SPX"], real["SPY"]
    # Contango on both: the front is not rich against the back.
    assert not spx.inverted and spx.atm_30d < spx.atm_90d
    assert not spy.inverted and spy.atm_30d < spy.atm_90d
    # SPX: dealers short gamma (spot under zero gamma): no pin; steep put skew.
    assert spx.chain.spot < float(spx.analysis.flow.zero_gamma_level) and spx.pin is None
    assert spx.rr25 < -0.04
    # SPY: dealers long gamma, max pain a bit over 1% below spot: a pin, below; mild put skew.
    assert spy.chain.spot > float(spy.analysis.flow.zero_gamma_level)
    assert -0.02 <= spy.pin <= -0.005
    assert -0.04 < spy.rr25 < 0


@pytest.mark.parametrize("symbol", list(CHAINS))
def test_which_new_structures_the_rules_can_reach_on_each_chain(real, symbol):
    inputs = real[symbol]
    reached = {}
    for price_view, vol_view, regime_name, iv_rank in itertools.product(
            ("bullish", "bearish", "neutral"), ("rich", "cheap", "neutral"), ("low_vol", "neutral", "high_vol", "crisis"),
            (None, 0.1, 0.3, 0.6, 0.9)):
        choice = inputs.choose(price_view, vol_view, regime_name, iv_rank)
        if choice.structure in NEW_STRUCTURES:
            reached.setdefault(choice.structure, set()).add((price_view, vol_view))
    assert set(reached) == set(REACHABLE[symbol]), f"{symbol}: the rules reach {sorted(reached)}"
    for structure, verdict in REACHABLE[symbol].items():
        assert verdict in reached[structure]


@pytest.mark.parametrize("symbol, structure", [(s, k) for s in CHAINS for k in REACHABLE[s]])
def test_reachable_structures_are_built_and_pass_the_naked_short_rule(real, symbol, structure):
    inputs = real[symbol]
    price_view, vol_view = REACHABLE[symbol][structure]
    choice = inputs.choose(price_view, vol_view)
    assert choice.structure == structure and choice.reason
    result = inputs.build(structure, choice.reason)
    assert result.ok, f"{symbol} {structure}: {result.code} {result.reason}"
    proposal = result.proposal
    _assert_well_formed(inputs, proposal)
    if structure.endswith("butterfly") and inputs.pin is not None:
        body = next(leg for leg in proposal.legs if leg.side == "sell")
        listed = np.unique(inputs.chain.strike[inputs.chain.expiry == np.datetime64(body.expiry, "D")])
        if structure.endswith("broken_wing_butterfly"):
            # The body at the listed strike nearest the pin (the selector's target).
            target = inputs.chain.spot * (1 + inputs.pin)
            assert float(body.strike) == listed[np.argmin(np.abs(listed - target))]
    _assert_gate(proposal)


def test_the_lizard_needs_cash_secured_puts_by_configuration(real):
    spx = real["SPX"]
    naked_config = DecisionConfig(jade_lizard_short_put="refuse")
    assert spx.choose("bullish", "rich", config=naked_config).structure == "bull_put_spread"
    refused = spx.build("jade_lizard", "forced", config=naked_config)
    assert refused.proposal is None and refused.code == "naked_short_refused"


THIN_SPX_WINGS = {("SPX", "call_broken_wing_butterfly"), ("SPX", "put_broken_wing_butterfly"), ("SPX", "put_butterfly")}


@pytest.mark.parametrize("symbol, structure, price_view, vol_view, flip", [
    # What each chain lacks for the structures it never reaches: the missing condition alone flips the choice.
    ("SPX", "call_calendar", "neutral", "rich", {"term_inverted": True}),
    ("SPX", "call_diagonal", "bullish", "rich", {"term_inverted": True}),
    ("SPX", "put_diagonal", "bearish", "rich", {"term_inverted": True}),
    ("SPX", "call_broken_wing_butterfly", "bullish", "neutral", {"pin": 0.01}),
    ("SPX", "put_broken_wing_butterfly", "bearish", "neutral", {"pin": -0.01}),
    ("SPX", "call_butterfly", "neutral", "neutral", {"pin": 0.01}),
    ("SPX", "put_butterfly", "neutral", "neutral", {"pin": -0.01}),
    ("SPY", "call_calendar", "neutral", "rich", {"term_inverted": True}),
    ("SPY", "put_diagonal", "bearish", "rich", {"term_inverted": True, "pin": None}),  # the pin's BWB comes first
    ("SPY", "call_diagonal", "bullish", "rich", {"term_inverted": True}),
    ("SPY", "call_broken_wing_butterfly", "bullish", "neutral", {"pin": 0.01}),
    ("SPY", "call_butterfly", "neutral", "neutral", {"pin": 0.01}),
    ("SPY", "jade_lizard", "bullish", "rich", {"risk_reversal": -0.06}),
])
def test_unreachable_structures_need_a_condition_the_chain_lacks(real, symbol, structure, price_view, vol_view, flip):
    inputs = real[symbol]
    assert inputs.choose(price_view, vol_view).structure != structure
    choice = inputs.choose(price_view, vol_view, **flip)
    assert choice.structure == structure, f"{symbol}: {flip} should choose {structure}, got {choice.structure}"
    # The builder does stage it on the real chain under that condition, and the gate passes it.
    config = CONFIG
    if (symbol, structure) in THIN_SPX_WINGS:
        # Finding: SPX's 5-point strikes at the target expiry carry (next to) no open interest, so
        # with default liquidity rules a pin on SPX would still stage no butterfly.
        refused = inputs.build(structure, choice.reason, pin=flip.get("pin"))
        assert refused.code == "illiquid_leg" and "open interest" in refused.reason
        config = CONFIG.with_overrides({"min_open_interest": 0})
    result = inputs.build(structure, choice.reason, pin=flip.get("pin"), config=config)
    assert result.ok, f"{symbol} {structure}: {result.code} {result.reason}"
    _assert_well_formed(inputs, result.proposal)
    _assert_gate(result.proposal)


def _assert_well_formed(inputs: RealInputs, proposal) -> None:
    assert proposal.max_profit.is_finite() and proposal.max_loss.is_finite()
    assert proposal.max_profit > 0 and proposal.max_loss > 0
    assert proposal.breakevens and all(np.isfinite(be) and be > 0 for be in proposal.breakevens)
    assert 0 < proposal.probability_of_profit < 1 and proposal.pop_model == "svi_density"
    chain = inputs.chain
    for leg in proposal.legs:  # every leg is a listed contract
        listed = (chain.expiry == np.datetime64(leg.expiry, "D")) & (chain.strike == float(leg.strike)) & (
            chain.is_call == (leg.right == "C"))
        assert listed.any(), f"{leg.expiry} {leg.strike} {leg.right} is not listed"


def _assert_gate(proposal) -> None:
    cash = proposal.max_loss * 10 + sum((leg.strike for leg in proposal.legs), Decimal(0)) * proposal.multiplier
    trade = SizedTrade(proposal=proposal, contracts=1, kelly_fraction=0.01, applied_fraction=0.01, win_rate=0.5,
                       payoff_ratio=1.0, capital_at_risk=proposal.max_loss)
    nlv = max(cash * 30, Decimal("100000"))  # big enough that only the structure can veto
    [decision] = post_trade([trade], account(nlv), [], regime(), permissive_matrix(), {proposal.ticker: "index"})
    assert "naked_short" not in [r.code for r in decision.vetoes]
    assert decision.approved, decision.vetoes
    if proposal.structure == "jade_lizard":
        assert proposal.cash_secured_puts
        [(put, n)] = uncovered_short_legs(proposal.legs)
        assert put.right == "P" and n == 1
        assert "cash_secured_put" in [r.code for r in decision.warnings]
        calls = [leg.strike for leg in proposal.legs if leg.right == "C"]
        assert -proposal.net_debit >= max(calls) - min(calls)  # no upside risk
        # Without the cash the short put is refused, never traded naked.
        needed = put.strike * proposal.multiplier
        [poor] = post_trade([trade], account(needed / 2), [], regime(), permissive_matrix(),
                            {proposal.ticker: "index"})
        assert "cash_secured_put_unfunded" in [r.code for r in poor.vetoes]
    else:
        assert uncovered_short_legs(proposal.legs) == []  # the gate's own rule, across expiries too
        if len({leg.expiry for leg in proposal.legs}) == 1:
            assert not has_naked_short(proposal.legs)
        assert not proposal.cash_secured_puts
