"""The order plots' numbers and their SVG: payoff against the structure's own max profit and loss,
and the markup's escaping and accessibility."""
from __future__ import annotations

from decimal import Decimal

import numpy as np

from service.charts import payoff_chart
from service.svg import Chart, Marker, Series, nice_ticks, render
from tests.test_approvals import AS_OF


def _bull_call_spread(quantity: int = 13) -> dict:
    legs = [{"strike": "165", "right": "C", "side": "buy", "ratio": 1, "iv": 0.33, "expiry": "2026-12-24"},
            {"strike": "175", "right": "C", "side": "sell", "ratio": 1, "iv": 0.33, "expiry": "2026-12-24"}]
    return {"ticker": "AMZN", "structure": "bull_call_spread", "quantity": quantity, "limit_price": "2.2600",
            "legs": legs, "underlying_price": 157.7, "breakevens": [167.26]}


def test_payoff_at_expiry_spans_max_loss_to_max_profit_and_today_lies_between():
    chart = payoff_chart(_bull_call_spread(), AS_OF)
    expiry, today = chart.series
    x, at_expiry = np.asarray(expiry.x), np.asarray(expiry.y)
    max_loss, max_profit = float(Decimal("2.26") * 100 * 13), float((Decimal("10") - Decimal("2.26")) * 100 * 13)
    assert np.isclose(at_expiry.min(), -max_loss) and np.isclose(at_expiry.max(), max_profit)  # plotted in float
    breakeven = x[np.argmin(np.abs(at_expiry))]
    assert abs(breakeven - 167.26) < (x[1] - x[0])
    # Before expiry a vertical is worth strictly between its bounds: time value smooths the corners.
    assert np.all(np.asarray(today.y) > -max_loss) and np.all(np.asarray(today.y) < max_profit)
    assert {m.label for m in chart.markers} >= {"spot 157.70", "K 165", "K 175", "BE 167.26"}


def test_svg_is_escaped_labelled_and_scales():
    chart = Chart(title='<script>alert("x")</script>', x_label="strike", y_label="vol",
                  series=[Series("a & b", [1, 2, 3], [0.1, 0.3, 0.2])], markers=[Marker(2, "K <2>")])
    svg = render(chart, chart_id="c1")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg and "K &lt;2&gt;" in svg
    assert svg.startswith('<svg class="chart" id="c1" viewBox=') and 'role="img"' in svg
    assert 'aria-labelledby="c1-title c1-desc"' in svg and "style=" not in svg  # CSP: no inline styles
    empty = render(Chart("nothing", "x", "y", []), chart_id="c2")
    assert "no data" in empty and "<polyline" not in empty


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(147.3, 181.9, 6) == [150, 160, 170, 180]  # a step of 5.8 rounds up to 10
    assert nice_ticks(0.12, 0.41) == [0.2, 0.3, 0.4]  # exact, not 0.30000000000000004
    assert nice_ticks(float("nan"), 1) == []
