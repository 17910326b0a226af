"""How far the modelled chain (`tools.chain_model`) is from real Cboe chains on the same day.

For each recorded quote table (``<ticker>_quotedata_<YYYY-MM-DD>.csv``) the model is built from
that session's VIX9D / VIX / VIX3M / SKEW closes and compared with the market's own surface
(`tools.chain_analysis`: parity forwards, Black-76 implied vols, SVI per expiry) on every fitted
expiry from 7 to 370 days:

* ATM vol error: model ATM vol minus the market's fitted ATM vol, vol points (mean and max |.|);
* 25-delta risk-reversal error: model RR25 minus the market's, vol points (mean |.|);
* RMSE in vol points of model vol minus market implied vol over liquid strikes: usable quotes
  (valid two-sided, an implied vol) within 2 ATM standard deviations with open interest.

The quotes are valued at 16:00 on the file's session date (as Cboe's own IV column is), not at
the export time in the header, which for the 2022-02-04 files is the next evening. NDX has no
history series here, so its level is the S&P 500 model times ``NDX_TO_SPX_VOL`` (a stated typical
VXN/VIX ratio), not a realized-vol ratio.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np

from tools.cboe import read_cboe_quote_table
from tools.chain_analysis import analyze_chain
from tools.chain_model import (CURVATURE, RHO, SKEW_TO_SLOPE, ImpliedInputs, ModelSurface, build_surface,
                               session_close)
from tools.providers.bar_files import BarDirectory, read_bar_directory

NDX_TO_SPX_VOL = 1.25
MIN_DAYS, MAX_DAYS = 7.0, 370.0
LIQUID_SD = 2.0
_FILE_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class CalibrationResult:
    file: str
    underlying: str
    session: str
    priced_from: str
    expiries_compared: int
    strikes_compared: int
    atm_error_mean: float  # vol points, signed mean (model - market)
    atm_error_mean_abs: float
    atm_error_max_abs: float
    rr25_error_mean: float  # signed
    rr25_error_mean_abs: float
    rmse_vol_points: float

    def line(self) -> str:
        return (f"{self.file}: {self.expiries_compared} expiries, {self.strikes_compared} strikes; ATM error "
                f"mean {self.atm_error_mean:+.2f} |mean| {self.atm_error_mean_abs:.2f} max {self.atm_error_max_abs:.2f}; "
                f"RR25 error mean {self.rr25_error_mean:+.2f} |mean| {self.rr25_error_mean_abs:.2f}; "
                f"RMSE {self.rmse_vol_points:.2f} vol pts")


def implied_inputs(directory: BarDirectory, session: date) -> ImpliedInputs:
    """The indices' closes on `session` (NaN for an index not published that day)."""
    day = np.datetime64(session, "D")

    def close(symbol: str) -> float:
        bars = directory.bars(symbol)
        if bars is None:
            return float("nan")
        i = int(np.searchsorted(bars.dates, day))
        return float(bars.close[i]) if i < len(bars) and bars.dates[i] == day else float("nan")

    return ImpliedInputs(session=session, vix9d=close("VIX9D") / 100.0, vix=close("VIX") / 100.0,
                         vix3m=close("VIX3M") / 100.0, skew_index=close("SKEW"))


@dataclass(frozen=True)
class _MarketSmiles:
    file: str
    underlying: str
    session: date
    t: np.ndarray  # per compared expiry
    atm: np.ndarray
    rr25: np.ndarray
    row_t: np.ndarray  # per liquid strike
    row_k: np.ndarray
    row_vol: np.ndarray


def _market_smiles(path: Path) -> _MarketSmiles:
    match = _FILE_DATE.search(path.name)
    if match is None:
        raise ValueError(f"{path.name}: no YYYY-MM-DD session date in the file name")
    session = date.fromisoformat(match.group(1))
    chain = read_cboe_quote_table(path)
    chain = replace(chain, as_of=session_close(session))
    analysis = analyze_chain(chain, include_flow=False)
    t, atm, rr, row_t, row_k, row_vol = [], [], [], [], [], []
    for s in analysis.surface.fitted_slices:
        if not MIN_DAYS <= s.t * 365.0 <= MAX_DAYS:
            continue
        t.append(s.t)
        atm.append(s.atm_vol)
        rr.append(s.risk_reversal_25d)
        rows = s.rows
        k = np.log(chain.strike[rows] / s.forward)
        liquid = (np.abs(k) <= LIQUID_SD * s.atm_vol * np.sqrt(s.t)) & (chain.open_interest[rows] > 0)
        row_t.append(np.full(int(liquid.sum()), s.t))
        row_k.append(k[liquid])
        row_vol.append(analysis.chain_iv.vol[rows][liquid])
    return _MarketSmiles(path.name, chain.underlying, session, np.array(t), np.array(atm), np.array(rr),
                         np.concatenate(row_t), np.concatenate(row_k), np.concatenate(row_vol))


def _model_for(market: _MarketSmiles, directory: BarDirectory, **shape) -> ModelSurface:
    inputs = implied_inputs(directory, market.session)
    ratio = NDX_TO_SPX_VOL if market.underlying == "NDX" else 1.0
    return build_surface(inputs, vol_ratio=ratio, **shape)


def _compare(market: _MarketSmiles, model: ModelSurface) -> CalibrationResult:
    atm_err = 100.0 * (model.atm_vol(market.t) - market.atm)
    rr_model = np.array([model.risk_reversal_25d(t) for t in market.t])
    rr_err = 100.0 * (rr_model - market.rr25)
    rr_err = rr_err[np.isfinite(rr_err)]
    resid = 100.0 * (model.implied_vol(market.row_k, market.row_t) - market.row_vol)
    resid = resid[np.isfinite(resid)]
    return CalibrationResult(
        file=market.file, underlying=market.underlying, session=market.session.isoformat(),
        priced_from=model.inputs.describe(), expiries_compared=len(market.t), strikes_compared=len(resid),
        atm_error_mean=float(np.mean(atm_err)), atm_error_mean_abs=float(np.mean(np.abs(atm_err))),
        atm_error_max_abs=float(np.max(np.abs(atm_err))),
        rr25_error_mean=float(np.mean(rr_err)) if len(rr_err) else float("nan"),
        rr25_error_mean_abs=float(np.mean(np.abs(rr_err))) if len(rr_err) else float("nan"),
        rmse_vol_points=float(np.sqrt(np.mean(resid**2))),
    )


def calibrate(cboe_dir: str | Path, history_dir: str | Path, **shape) -> list[CalibrationResult]:
    """The model's errors against every quote table in `cboe_dir` (module constants unless `shape`
    overrides skew_to_slope / curvature / rho)."""
    directory = read_bar_directory(history_dir)
    markets = [_market_smiles(p) for p in sorted(Path(cboe_dir).glob("*_quotedata_*.csv"))]
    return [_compare(m, _model_for(m, directory, **shape)) for m in markets]


def fit_shape_constants(cboe_dir: str | Path, history_dir: str | Path) -> dict[str, float]:
    """Least-squares (skew_to_slope, curvature, rho) over the S&P 500 chains' liquid strikes (SPX and
    SPY; NDX is left out of sample). Reproduces the module constants of `tools.chain_model`."""
    from scipy.optimize import minimize

    directory = read_bar_directory(history_dir)
    markets = [_market_smiles(p) for p in sorted(Path(cboe_dir).glob("*_quotedata_*.csv"))]
    markets = [m for m in markets if m.underlying in ("SPX", "SPY")]

    def loss(p):
        shape = dict(skew_to_slope=p[0], curvature=p[1], rho=float(np.clip(p[2], -0.95, -0.05)))
        total = 0.0
        for m in markets:
            model = _model_for(m, directory, **shape)
            resid = model.implied_vol(m.row_k, m.row_t) - m.row_vol
            total += float(np.nanmean(resid**2))
        return total

    best = minimize(loss, x0=[SKEW_TO_SLOPE, CURVATURE, RHO], method="Nelder-Mead",
                    options={"xatol": 1e-3, "fatol": 1e-9, "maxiter": 300})
    return {"skew_to_slope": float(best.x[0]), "curvature": float(best.x[1]),
            "rho": float(np.clip(best.x[2], -0.95, -0.05))}
