"""The one regime service: VIX level, VIX term structure and realized vol -> a named regime.

Rules (thresholds from `config/risk_matrix.yaml`, checked in this order, first match wins):
- crisis   when ANY of: VIX >= crisis.vix_at_or_above, VIX/VIX3M > crisis.term_ratio_above,
           realized vol >= crisis.realized_vol_at_or_above (when known);
- high_vol when ANY of the same triggers at the high_vol thresholds (term ratio > 1 is
           backwardation);
- low_vol  when ALL of: VIX < low_vol.vix_below, VIX/VIX3M < low_vol.term_ratio_below
           (contango), realized vol < low_vol.realized_vol_below (tested only when known);
- neutral  otherwise.
Every rule that fired (or, for neutral, why nothing fired) is recorded in `Regime.reasons`.
"""
from __future__ import annotations

import math

import numpy as np

from domain.decision import Regime
from risk.limits import RiskMatrix, StressTriggers, load_risk_matrix
from tools.providers.base import MarketSnapshot
from tools.volstats import close_to_close_vol

# Sanity bounds on the units: VIX is quoted in index points (all-time low ~9), realized vol as an
# annualized decimal. Values outside them are almost surely a unit mistake, not a market state.
_MIN_VIX_POINTS = 1.0
_MAX_REALIZED_VOL = 5.0


def _check_level(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if math.isnan(value):
        raise ValueError(f"{name} is NaN: cannot classify the regime without it")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite level, got {value}")
    if value < _MIN_VIX_POINTS:
        raise ValueError(
            f"{name}={value} looks like a decimal; VIX indices are quoted in points (e.g. 18.5)"
        )
    return value


def _check_realized(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        raise ValueError("realized_vol is NaN: pass None when it is unknown")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"realized_vol must be a finite non-negative number, got {value}")
    if value > _MAX_REALIZED_VOL:
        raise ValueError(
            f"realized_vol={value} looks like percent; it is an annualized decimal (0.20 = 20%)"
        )
    return value


def _stress_reasons(
    label: str, triggers: StressTriggers, vix: float, ratio: float, realized: float | None
) -> list[str]:
    reasons = []
    if vix >= triggers.vix_at_or_above:
        reasons.append(f"{label}: VIX {vix:.2f} >= {triggers.vix_at_or_above:.2f}")
    if ratio > triggers.term_ratio_above:
        reasons.append(
            f"{label}: VIX/VIX3M {ratio:.4f} > {triggers.term_ratio_above:.4f}"
            + (" (backwardation)" if triggers.term_ratio_above >= 1.0 else "")
        )
    if (
        realized is not None
        and triggers.realized_vol_at_or_above is not None
        and realized >= triggers.realized_vol_at_or_above
    ):
        reasons.append(
            f"{label}: realized vol {realized:.4f} >= {triggers.realized_vol_at_or_above:.4f}"
        )
    return reasons


def classify_regime(
    vix_close: float,
    vix3m_close: float,
    realized_vol: float | None = None,
    matrix: RiskMatrix | None = None,
) -> Regime:
    """Classify the market regime from closes of VIX and VIX3M (index points) and, optionally,
    SPY realized vol (annualized decimal). Raises ValueError on NaN, non-positive or
    wrong-unit inputs. `matrix` defaults to `config/risk_matrix.yaml`."""
    vix = _check_level("vix_close", vix_close)
    vix3m = _check_level("vix3m_close", vix3m_close)
    realized = _check_realized(realized_vol)
    matrix = matrix if matrix is not None else load_risk_matrix()
    # Rounded so float noise cannot move a quote pair across a threshold: 22.11 / 20.1 is exactly
    # 1.1 but divides to 1.0999999999999999, and 15.77 / 16.6 to 0.9499999999999998.
    ratio = round(vix / vix3m, 10)

    def regime(name, reasons: list[str]) -> Regime:
        if realized is None:
            reasons = reasons + ["realized vol unknown: classified on VIX level and term structure"]
        return Regime(
            name=name, vix=vix, vix3m=vix3m, term_ratio=ratio, realized_vol=realized, reasons=reasons
        )

    crisis = _stress_reasons("crisis", matrix.regimes.crisis.classify, vix, ratio, realized)
    if crisis:
        return regime("crisis", crisis)
    high = _stress_reasons("high_vol", matrix.regimes.high_vol.classify, vix, ratio, realized)
    if high:
        return regime("high_vol", high)

    calm = matrix.regimes.low_vol.classify
    failed = []
    if not vix < calm.vix_below:
        failed.append(f"VIX {vix:.2f} not < {calm.vix_below:.2f}")
    if not ratio < calm.term_ratio_below:
        failed.append(f"VIX/VIX3M {ratio:.4f} not < {calm.term_ratio_below:.4f} (no contango)")
    if realized is not None and calm.realized_vol_below is not None and not realized < calm.realized_vol_below:
        failed.append(f"realized vol {realized:.4f} not < {calm.realized_vol_below:.4f}")
    if not failed:
        reasons = [
            f"low_vol: VIX {vix:.2f} < {calm.vix_below:.2f}",
            f"low_vol: VIX/VIX3M {ratio:.4f} < {calm.term_ratio_below:.4f} (contango)",
        ]
        if realized is not None and calm.realized_vol_below is not None:
            reasons.append(f"low_vol: realized vol {realized:.4f} < {calm.realized_vol_below:.4f}")
        return regime("low_vol", reasons)
    return regime("neutral", ["neutral: no stress trigger fired; not low_vol because " + "; ".join(failed)])


def regime_of(snapshot: MarketSnapshot, matrix=None) -> Regime:
    """The regime from the snapshot's last VIX and VIX3M closes and the benchmark's 20-day realized vol."""
    benchmark_close = snapshot.benchmark.close
    realized = close_to_close_vol(benchmark_close, window=20)[-1] if len(benchmark_close) > 21 else None
    realized = None if realized is None or not np.isfinite(realized) else float(realized)
    return classify_regime(float(snapshot.vix.close[-1]), float(snapshot.vix3m.close[-1]), realized, matrix)
