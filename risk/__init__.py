"""The one risk service: hard limits, the per-regime risk matrix, regime classification, Kelly
sizing, VaR and the pre-/post-trade gate. See risk/gate.py for the conventions."""
from risk.gate import post_trade, pre_trade, uncovered_short_legs
from risk.kelly import (
    PayoffDistribution,
    journal_estimate,
    log_optimal_fraction,
    shrunk_distribution,
    size_trade,
)
from risk.limits import HARD_LIMITS, HardLimits, RiskMatrix, RiskMatrixError, load_risk_matrix
from risk.regime import classify_regime
from risk.var import delta_gamma_normal_var, historical_var

__all__ = [
    "HARD_LIMITS", "HardLimits", "RiskMatrix", "RiskMatrixError", "load_risk_matrix",
    "classify_regime", "PayoffDistribution", "log_optimal_fraction", "journal_estimate",
    "shrunk_distribution", "size_trade", "delta_gamma_normal_var", "historical_var", "pre_trade",
    "post_trade", "uncovered_short_legs",
]
