"""A short, deterministic reflection on how a remembered situation turned out.

Used when no LLM is configured (and as the fallback when one fails), so the same situation and
outcome always produce the same sentence, e.g.

    bull_put_spread on SPY in neutral regime: thesis dealers short gamma, put skew rich;
    outcome +1.20% underlying, P&L +$85.00: thesis held

Outcome conventions: `underlying_return` is a fraction (0.012 is +1.2%) of the underlying from the
situation's as-of to the outcome; `pnl` is dollars for the whole position (positive is a gain).
The verdict uses P&L when it is known (what the trade earned is what counts); otherwise the sign of
the underlying's move against the structure's direction.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

BULLISH_STRUCTURES = frozenset({
    "bull_put_spread", "bull_call_spread", "long_call", "short_put", "cash_secured_put",
    "put_credit_spread", "call_debit_spread",
})
BEARISH_STRUCTURES = frozenset({
    "bear_call_spread", "bear_put_spread", "long_put", "short_call",
    "call_credit_spread", "put_debit_spread",
})
THESIS_CHARS = 160  # keep the reflection short enough to quote into a debate prompt


def reflection_for(situation: Any, outcome: Mapping[str, Any]) -> str:
    """One line: what was done, in which regime, on what thesis, what happened, and the verdict.

    `situation` is a `memory.store.Memory` or a mapping with `ticker`, `regime`, `thesis` and
    `trade` (a dict with `structure`, or with `proposal.structure` for a sized trade; None when no
    trade was taken). Raises ValueError when the outcome has neither `pnl` nor `underlying_return`,
    or either is not a finite number.
    """
    ticker = _field(situation, "ticker")
    regime = _field(situation, "regime")
    thesis = " ".join(str(_field(situation, "thesis") or "").split()) or "none stated"
    if len(thesis) > THESIS_CHARS:
        thesis = thesis[: THESIS_CHARS - 1].rstrip() + "…"
    structure = _structure(_field(situation, "trade"))

    underlying_return = _finite_float(outcome.get("underlying_return"), "underlying_return")
    pnl = _decimal(outcome.get("pnl"), "pnl")
    if underlying_return is None and pnl is None:
        raise ValueError("an outcome needs a finite 'pnl' (dollars) or 'underlying_return' (fraction)")

    parts = []
    if underlying_return is not None:
        parts.append(f"{underlying_return * 100:+.2f}% underlying")
    if pnl is not None:
        sign = "-" if pnl < 0 else "+"
        parts.append(f"P&L {sign}${abs(pnl):,.2f}")
    what = structure if structure else "no trade"
    return (f"{what} on {ticker} in {regime} regime: thesis {thesis}; "
            f"outcome {', '.join(parts)}: {_verdict(structure, underlying_return, pnl)}")


def _verdict(structure: str | None, underlying_return: float | None, pnl: Decimal | None) -> str:
    if structure is None:
        return "no trade taken"
    if pnl is not None:
        return "thesis held" if pnl > 0 else "thesis failed" if pnl < 0 else "flat, no edge shown"
    direction = 1 if structure in BULLISH_STRUCTURES else -1 if structure in BEARISH_STRUCTURES else 0
    if direction == 0:
        # A range or volatility structure is judged by what it earned, which is unknown here.
        return "inconclusive without P&L"
    move = direction * underlying_return
    return "thesis held" if move > 0 else "thesis failed" if move < 0 else "flat, no edge shown"


def _field(situation: Any, name: str) -> Any:
    if isinstance(situation, Mapping):
        if name not in situation:
            raise ValueError(f"situation has no {name!r}")
        return situation[name]
    if not hasattr(situation, name):
        raise ValueError(f"situation has no {name!r}")
    return getattr(situation, name)


def _structure(trade: Any) -> str | None:
    if trade is None:
        return None
    if hasattr(trade, "model_dump"):
        trade = trade.model_dump(mode="json")
    if not isinstance(trade, Mapping):
        raise ValueError(f"trade must be a mapping or None, got {type(trade).__name__}")
    if isinstance(trade.get("proposal"), Mapping):
        trade = trade["proposal"]
    structure = trade.get("structure")
    return str(structure) if structure else "trade"


def _finite_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def _decimal(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{name} must be a number of dollars, got {value!r}") from exc
    if not number.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number
