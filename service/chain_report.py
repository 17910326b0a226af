"""Human-readable report of a `tools.chain_analysis.ChainAnalysis` (`hedgegraph chain PATH`).

Rich tables: the surface per expiry (forward, ATM vol, SVI parameters, fit RMSE, arbitrage
flags, 25-delta risk reversal and butterfly), the term structure and calendar checks, the chain's
flow totals, the largest mispricings against the fit, and the quotes rejected by reason. With
``--json`` the CLI prints `ChainAnalysis.to_dict()` instead.
"""
from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.table import Table

from tools.chain_analysis import ChainAnalysis

MISPRICED_SHOWN = 10


def _num(value: float, fmt: str = "{:,.2f}", missing: str = "-") -> str:
    return missing if value is None or not math.isfinite(value) else fmt.format(value)


def _vol(value: float) -> str:
    """A decimal vol as percent: 0.2034 -> 20.34%."""
    return _num(100.0 * value if value is not None else float("nan"), "{:.2f}%")


def _points(value: float) -> str:
    """A decimal vol difference in vol points: -0.0512 -> -5.12."""
    return _num(100.0 * value if value is not None else float("nan"), "{:+.2f}")


def render_chain_report(analysis: ChainAnalysis, console: Console) -> None:
    """Print the analysis of one chain to ``console``."""
    surface = analysis.surface
    fitted = surface.fitted_slices
    console.print(
        f"[bold]{analysis.underlying}[/] chain as of {analysis.as_of:%Y-%m-%d %H:%M %Z}, spot "
        f"{analysis.spot:,.2f}: {analysis.n_rows:,} quotes, {analysis.n_usable_quotes:,} usable for the "
        f"surface, {len(fitted)} of {len(surface.slices)} expiries fitted "
        f"(analysis {analysis.timings.get('total', float('nan')):.2f} s)"
    )

    table = Table(title="Volatility surface (raw SVI per expiry)", title_justify="left")
    for name, justify in (("expiry", "left"), ("root", "left"), ("days", "right"), ("forward", "right"),
                          ("quotes", "right"), ("ATM vol", "right"), ("a", "right"), ("b", "right"),
                          ("rho", "right"), ("m", "right"), ("sigma", "right"), ("RMSE vol pts", "right"),
                          ("butterfly", "left"), ("25d RR pts", "right"), ("25d BF pts", "right")):
        table.add_column(name, justify=justify)
    for s in surface.slices:
        days = _num(s.t * 365.0, "{:.1f}")
        if not s.fitted:
            table.add_row(str(s.expiry), s.root or "", days, _num(s.forward), str(s.n_usable), "-", "-", "-", "-",
                          "-", "-", "-", f"[dim]{s.message}[/]", "-", "-")
            continue
        p = s.params
        rmse_style = "green" if s.rmse_vol_points < 1.5 else "red"
        butterfly = "[green]ok[/]" if s.butterfly_ok else f"[red]{s.butterfly_violation_k.size} pts[/]"
        table.add_row(
            str(s.expiry), s.root or "", days, _num(s.forward), str(s.n_usable), _vol(s.atm_vol),
            _num(p.a, "{:.5f}"), _num(p.b, "{:.4f}"), _num(p.rho, "{:+.3f}"), _num(p.m, "{:+.4f}"),
            _num(p.sigma, "{:.4f}"), f"[{rmse_style}]{s.rmse_vol_points:.2f}[/]", butterfly,
            _points(s.risk_reversal_25d), _points(s.butterfly_25d),
        )
    console.print(table)

    ts = surface.term_structure
    if ts.reason is None:
        console.print(f"Term structure: {ts.shape} — ATM vol 30d {_vol(ts.atm_vol_30d)}, 90d {_vol(ts.atm_vol_90d)}, "
                      f"slope {_points(ts.slope_per_year)} vol pts per year")
    else:
        console.print(f"Term structure: {ts.shape} ({ts.reason})")
    if surface.calendar_issues:
        cal = Table(title="Calendar arbitrage (total variance falls with maturity)", title_justify="left")
        for name in ("earlier", "later", "k from", "k to", "worst shortfall (w)"):
            cal.add_column(name)
        for c in surface.calendar_issues:
            cal.add_row(str(c.earlier), str(c.later), _num(c.k_min, "{:+.3f}"), _num(c.k_max, "{:+.3f}"),
                        _num(c.worst_shortfall, "{:.2e}"))
        console.print(cal)
    else:
        console.print("Calendar arbitrage: none between consecutive fitted expiries")

    flow = analysis.flow
    totals = Table(title="Chain totals", title_justify="left", show_header=False)
    totals.add_column("metric")
    totals.add_column("value", justify="right")
    if flow is None:
        totals.add_row("flow metrics", f"[red]unavailable: {analysis.flow_error}[/]")
    else:
        totals.add_row("dealer gamma exposure (USD per 1% move)", _num(flow.total_gamma_exposure, "{:,.0f}"))
        totals.add_row("zero-gamma level", _num(flow.zero_gamma_level) if flow.zero_gamma_reason is None
                       else f"- ({flow.zero_gamma_reason})")
        live = {s.expiry for s in surface.slices if s.t > 0}
        nearest = next((mp for mp in flow.max_pain if mp.expiry in live and np.isfinite(mp.strike)), None)
        if nearest is not None:
            totals.add_row(f"max pain ({nearest.expiry})", _num(nearest.strike))
        totals.add_row("put/call volume ratio", _num(flow.put_call_volume_ratio, "{:.3f}"))
        totals.add_row("put/call open-interest ratio", _num(flow.put_call_open_interest_ratio, "{:.3f}"))
    console.print(totals)

    m = analysis.mispriced
    if len(m):
        mis = Table(title=f"Largest mispricings against the fit ({len(m)} quotes at >= 1 vol point)",
                    title_justify="left")
        for name in ("expiry", "strike", "right", "market vol", "fit vol", "diff pts", "USD/contract", "fit outside bid-ask"):
            mis.add_column(name)
        for i in range(min(MISPRICED_SHOWN, len(m))):
            mis.add_row(str(m.expiry[i]), _num(m.strike[i]), "call" if m.is_call[i] else "put", _vol(m.market_vol[i]),
                        _vol(m.fitted_vol[i]), _num(m.vol_diff_points[i], "{:+.2f}"),
                        _num(m.dollars_per_contract[i], "{:+,.0f}"), "yes" if m.fit_outside_spread[i] else "no")
        console.print(mis)

    rejected = Table(title="Quotes not used", title_justify="left")
    rejected.add_column("reason")
    rejected.add_column("quotes", justify="right")
    for reason, count in sorted(analysis.quote_rejections.items(), key=lambda kv: -kv[1]):
        rejected.add_row(f"rejected: {reason}", f"{count:,}")
    for reason, count in sorted(analysis.iv_failures.items(), key=lambda kv: -kv[1]):
        rejected.add_row(f"no implied vol: {reason}", f"{count:,}")
    if not analysis.quote_rejections and not analysis.iv_failures:
        rejected.add_row("none", "0")
    console.print(rejected)
