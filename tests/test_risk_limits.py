"""Hard limits are constants; the risk matrix YAML is validated and can never loosen them."""
from __future__ import annotations

import copy
import dataclasses
from decimal import Decimal

import pytest
import yaml

from risk.gate import post_trade
from risk.limits import (
    HARD_LIMITS,
    HardLimits,
    RiskMatrixError,
    load_risk_matrix,
    parse_risk_matrix,
)
from tests.risk_factories import account, proposal, raw_matrix, regime, sized


def write(tmp_path, raw) -> str:
    path = tmp_path / "risk_matrix.yaml"
    path.write_text(yaml.safe_dump(raw) if not isinstance(raw, str) else raw, encoding="utf-8")
    return path


def test_hard_limit_values_are_the_spec_values():
    assert HARD_LIMITS.daily_loss_halt_nlv == Decimal("0.03")
    assert HARD_LIMITS.position_cap_nlv("neutral") == Decimal("0.05")
    assert HARD_LIMITS.position_cap_nlv("high_vol") == Decimal("0.05")
    assert HARD_LIMITS.position_cap_nlv("crisis") == Decimal("0.02")
    assert HARD_LIMITS.max_sector_nlv == Decimal("0.15")
    assert HARD_LIMITS.min_free_margin_nlv == Decimal("0.20")
    assert HARD_LIMITS.max_contracts_without_ack == 10
    assert HARD_LIMITS.allow_naked_short_options is False


def test_hard_limits_cannot_be_constructed_looser_or_mutated():
    with pytest.raises(TypeError):
        HardLimits(max_position_nlv=Decimal("0.5"))  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        HARD_LIMITS.max_position_nlv = Decimal("0.5")  # type: ignore[misc]
    assert HardLimits() == HARD_LIMITS


def test_packaged_matrix_loads_with_all_regimes():
    matrix = load_risk_matrix()
    assert matrix.for_regime("crisis").allow_new_trades is False
    assert matrix.for_regime("neutral").account_rules.session.start.isoformat() == "09:30:00"
    assert matrix.for_regime("neutral").account_rules.session.end.isoformat() == "16:00:00"
    assert matrix.for_regime("neutral").account_rules.session.timezone == "America/New_York"
    assert matrix.regimes.crisis.classify.vix_at_or_above == 35.0
    assert matrix.regimes.crisis.classify.term_ratio_above == 1.10
    # Tighter in worse regimes, never looser than the hard cap.
    caps = [matrix.for_regime(n).kelly_cap_nlv for n in ("low_vol", "neutral", "high_vol", "crisis")]
    assert caps == sorted(caps, reverse=True)
    assert all(cap <= HARD_LIMITS.position_cap_nlv(n)
               for cap, n in zip(caps, ("low_vol", "neutral", "high_vol", "crisis")))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RiskMatrixError, match="cannot read risk matrix .*nope.yaml"):
        load_risk_matrix(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "version: 1\nregimes: [unclosed\n")
    with pytest.raises(RiskMatrixError, match="not valid YAML"):
        load_risk_matrix(path)


def test_non_mapping_is_rejected(tmp_path):
    with pytest.raises(RiskMatrixError, match="must be a mapping"):
        load_risk_matrix(write(tmp_path, "- just\n- a list\n"))


def test_missing_regime_names_the_key(tmp_path):
    raw = raw_matrix()
    del raw["regimes"]["crisis"]
    with pytest.raises(RiskMatrixError, match=r"regimes\.crisis: Field required"):
        load_risk_matrix(write(tmp_path, raw))


def test_unknown_key_is_rejected(tmp_path):
    raw = raw_matrix()
    raw["regimes"]["neutral"]["soft_limits"]["vega_limit_typo"] = {"limit": 1, "action": "warn"}
    with pytest.raises(RiskMatrixError, match="vega_limit_typo"):
        load_risk_matrix(write(tmp_path, raw))


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda r: r["regimes"]["neutral"]["soft_limits"]["vega_nlv"].update(action="block"), "action"),
        (lambda r: r["regimes"]["neutral"]["soft_limits"]["vega_nlv"].update(limit=-1), "greater than 0"),
        (lambda r: r["regimes"]["neutral"]["soft_limits"]["correlation"].update(limit=1.5), "correlation"),
        (lambda r: r["regimes"]["neutral"]["account_rules"].update(max_trades_per_day="many"), "max_trades_per_day"),
        (lambda r: r["regimes"]["neutral"]["account_rules"]["session"].update(start="16:30"), "before end"),
        (lambda r: r["regimes"]["neutral"]["account_rules"]["session"].update(timezone="Mars/Olympus"), "time zone"),
        (lambda r: r["regimes"]["high_vol"]["classify"].update(vix_at_or_above=40.0), "VIX thresholds"),
        (lambda r: r["regimes"]["low_vol"]["classify"].update(term_ratio_below=1.05), "term-ratio"),
        (lambda r: r.update(version=2), "version"),
    ],
)
def test_malformed_values_give_a_clear_error(tmp_path, mutate, pattern):
    raw = raw_matrix()
    mutate(raw)
    with pytest.raises(RiskMatrixError, match=pattern):
        load_risk_matrix(write(tmp_path, raw))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(hard_limits={"daily_loss_halt_nlv": 0.10}),
        lambda r: r["regimes"]["crisis"].update(max_position_nlv=0.10),
        lambda r: r["regimes"]["neutral"]["soft_limits"].update(max_contracts_without_ack=100),
        lambda r: r["regimes"]["neutral"].update(min_free_margin_nlv=0.0),
    ],
)
def test_yaml_naming_a_hard_limit_is_rejected(tmp_path, mutate):
    raw = raw_matrix()
    mutate(raw)
    with pytest.raises(RiskMatrixError, match="hard limits cannot be set in the risk matrix"):
        load_risk_matrix(write(tmp_path, raw))


@pytest.mark.parametrize(
    "regime_name, key, value, pattern",
    [
        ("neutral", "kelly_cap_nlv", 0.08, "looser than the hard single-position limit 0.05"),
        ("crisis", "kelly_cap_nlv", 0.03, "looser than the hard single-position limit 0.02"),
        ("neutral", "daily_realized_loss_lockout_nlv", 0.05, "looser than the hard daily-loss halt"),
    ],
)
def test_yaml_loosening_a_hard_limit_is_rejected(tmp_path, regime_name, key, value, pattern):
    raw = raw_matrix()
    block = raw["regimes"][regime_name]
    (block if key in block else block["account_rules"])[key] = value
    with pytest.raises(RiskMatrixError, match=pattern):
        load_risk_matrix(write(tmp_path, raw))


def test_loosest_allowed_matrix_still_cannot_pass_a_hard_breach():
    # Soft limits wide open and the Kelly cap at the hard cap: a 6% position is still vetoed.
    raw = copy.deepcopy(raw_matrix())
    block = raw["regimes"]["neutral"]
    block["kelly_cap_nlv"] = 0.05
    for limit in block["soft_limits"].values():
        limit.update(limit=1.0 if limit is block["soft_limits"]["correlation"] else 1e9, action="warn")
    matrix = parse_risk_matrix(raw)
    trade = sized(proposal(max_loss="600"), 10)  # $6,000 at risk on $100,000 NLV
    [decision] = post_trade([trade], account(), [], regime("neutral"), matrix, {"SPY": "index"})
    assert not decision.approved
    assert [v.code for v in decision.vetoes] == ["position_size"]
    assert decision.vetoes[0].hard and decision.vetoes[0].value == pytest.approx(0.06)
