"""Greeks P&L attribution of a backtest's book: how much of each day's P&L the position Greeks
explain (delta, gamma, theta, vega), what the commissions cost, and what is left (residual).

Each position is valued at a chain of points: its opening fill, every mark, and the fill that
closed or settled it. Between two points a and b, with the Greeks of point a (whole position, in
`brokers.portfolio` units: delta in shares, gamma in shares per $1, theta in $ per calendar day,
vega in $ per vol point):

    delta·dS + ½·gamma·dS² + theta·dt + Σ_legs vega_leg·dσ_leg

where dS is the underlying's change, dt the calendar days between the points and dσ_leg each
leg's implied-vol change in vol points (vega per leg, because the legs of a spread move by
different amounts; their vegas sum to the position's). The actual change is that of the
position's P&L before commissions (realized on fills plus unrealized at the mark); residual =
actual − the four terms (higher orders, cross terms, skew and term moves the legs' vegas do not
see, fills away from the mark). Commissions are their own line, on the day of their fill, so the
components plus commissions plus residual are the position's P&L exactly.

Greeks at a mark are the ones the book stored with it; the legs' implied vols (and the Greeks at
the opening fill, which the book does not mark) are read from the same quote source the book
marks with (`ProviderQuotes` on the backtest's market at that instant). A partial close is not a
point of its own: its realized P&L shows in the next point's change (and so in the residual).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterable, Sequence

from tools.chain import NEW_YORK

COMPONENTS = ("delta", "gamma", "theta", "vega")
COLUMNS = (*COMPONENTS, "commissions", "residual", "actual")


@dataclass(frozen=True)
class Valuation:
    """A position at one instant: its P&L so far and the Greeks it had there."""

    at: datetime
    pnl: float  # dollars before commissions: realized on fills so far + unrealized at this point
    underlying: float | None
    delta: float | None = None
    gamma: float | None = None
    theta: float | None = None
    vega: float | None = None
    leg_vols: tuple[float | None, ...] = ()  # each leg's implied vol (0.20 = 20 vol points)
    leg_vegas: tuple[float | None, ...] = ()  # each leg's share of `vega`, $ per vol point


def explain(a: Valuation, b: Valuation) -> dict[str, float]:
    """The change from `a` to `b` split into delta, gamma, theta, vega (Greeks of `a`) and residual.
    A term whose inputs are unknown is 0 and its P&L falls into the residual."""
    ds = b.underlying - a.underlying if a.underlying is not None and b.underlying is not None else None
    dt = (b.at - a.at).total_seconds() / 86400.0
    out = {
        "delta": a.delta * ds if a.delta is not None and ds is not None else 0.0,
        "gamma": 0.5 * a.gamma * ds * ds if a.gamma is not None and ds is not None else 0.0,
        "theta": a.theta * dt if a.theta is not None else 0.0,
        "vega": sum(v * (s1 - s0) * 100.0 for v, s0, s1 in zip(a.leg_vegas, a.leg_vols, b.leg_vols)
                    if v is not None and s0 is not None and s1 is not None),
    }
    out["actual"] = b.pnl - a.pnl
    out["residual"] = out["actual"] - sum(out[c] for c in COMPONENTS)
    return out


def session_of(at: datetime) -> date:
    return at.astimezone(NEW_YORK).date()


def attribute(points_by_position: dict[str, Sequence[Valuation]],
              commissions: Iterable[tuple[datetime, float]] = ()) -> dict[str, Any]:
    """Sum `explain` over each position's consecutive points, by session (of the later point) and
    in total; `commissions` (instant, dollars paid) are charged to their session."""
    days: dict[date, dict[str, float]] = defaultdict(lambda: dict.fromkeys(COLUMNS, 0.0))
    for points in points_by_position.values():
        for a, b in zip(points, points[1:]):
            day = days[session_of(b.at)]
            for key, value in explain(a, b).items():
                day[key] += value
    for at, paid in commissions:
        day = days[session_of(at)]
        day["commissions"] -= paid
        day["actual"] -= paid
    by_day = [{"session": d.isoformat()} | {k: v[k] for k in COLUMNS} for d, v in sorted(days.items())]
    total = {k: sum(row[k] for row in by_day) for k in COLUMNS}
    return {"by_day": by_day, "total": total}


# ------------------------------------------------------------------ from a backtest's book
class QuotesAt:
    """The book's quote source at any instant of the backtest (one per instant, cached)."""

    def __init__(self, market):
        self.market = market
        self._at: dict[datetime, Any] = {}

    def __call__(self, at: datetime):
        from brokers.quote_source import ProviderQuotes

        if at not in self._at:
            self._at[at] = ProviderQuotes(self.market, lambda: at)
        return self._at[at]


def _legs(position: dict[str, Any]):
    from brokers.book import BookLeg

    return [BookLeg.from_json(leg) for leg in position["legs"]]


def _leg_view(position: dict[str, Any], quotes, units: int) -> tuple[list, tuple, tuple]:
    """(leg quotes, each leg's IV, each leg's whole-position vega) for `units` of the position."""
    legs = _legs(position)
    quoted = [quotes(leg.contract(position["ticker"], position["multiplier"])) for leg in legs]
    vols = tuple(q.iv if q is not None else None for q in quoted)
    vegas = tuple(q.vega * leg.sign * leg.ratio * units * position["multiplier"]
                  if q is not None and q.vega is not None else None for leg, q in zip(legs, quoted))
    return quoted, vols, vegas


def _spot(position: dict[str, Any], quotes) -> float | None:
    data = quotes.ticker_data(position["ticker"])
    return float(data.spot) if data is not None else None


def _greek_sum(position: dict[str, Any], quoted, units: int, name: str) -> float | None:
    total = 0.0
    for leg, q in zip(_legs(position), quoted):
        value = getattr(q, name, None) if q is not None else None
        if value is None:
            return None
        total += value * leg.sign * leg.ratio * units * position["multiplier"]
    return total


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def valuations(position: dict[str, Any], fills: Sequence[dict[str, Any]], marks: Sequence[dict[str, Any]],
               quotes_at) -> list[Valuation]:
    """The position's points: opening fill, marks, and (once closed) the fill that closed it."""
    points: list[Valuation] = []
    opened_at, units = position["opened_at"], position["units_opened"]
    quotes = quotes_at(opened_at)
    quoted, vols, vegas = _leg_view(position, quotes, units)
    points.append(Valuation(opened_at, 0.0, _spot(position, quotes),
                            *(_greek_sum(position, quoted, units, g) for g in ("delta", "gamma", "theta", "vega")),
                            leg_vols=vols, leg_vegas=vegas))
    for m in marks:
        realized = sum(float(f["gross_pnl"]) for f in fills if f["at"] <= m["marked_at"])
        quotes = quotes_at(m["marked_at"])
        _, vols, vegas = _leg_view(position, quotes, m["units"])
        underlying = _float(m["underlying_price"])
        points.append(Valuation(m["marked_at"], realized + float(m["unrealized_pnl"]),
                                underlying if underlying is not None else _spot(position, quotes),
                                _float(m["delta"]), _float(m["gamma"]), _float(m["theta"]), _float(m["vega"]),
                                leg_vols=vols, leg_vegas=vegas))
    if position["status"] != "open" and position["closed_at"] is not None:
        closed_at = position["closed_at"]
        quotes = quotes_at(closed_at)
        _, vols, _ = _leg_view(position, quotes, 0)
        points.append(Valuation(closed_at, sum(float(f["gross_pnl"]) for f in fills), _spot(position, quotes),
                                leg_vols=vols))
    points.sort(key=lambda p: p.at)  # a close at the same instant as a mark follows it
    return points


async def book_attribution(pool, account_id: str, market) -> dict[str, Any]:
    """`attribute` over every position the backtest account held, from its book in `pool`."""
    from storage.backtests import book_history

    positions, fills, marks = await book_history(pool, account_id)
    fills_of: dict[str, list] = defaultdict(list)
    marks_of: dict[str, list] = defaultdict(list)
    for f in fills:
        fills_of[f["position_id"]].append(f)
    for m in marks:
        marks_of[m["position_id"]].append(m)
    quotes_at = QuotesAt(market)
    points = {p["position_id"]: valuations(p, fills_of[p["position_id"]], marks_of[p["position_id"]], quotes_at)
              for p in positions}
    result = attribute(points, [(f["at"], float(f["commission"])) for f in fills if f["commission"] != Decimal(0)])
    result["positions"] = len(positions)
    return result
