"""Quant-core benchmark: implied-vol throughput (ours vs vollib), SVI fit time per expiry, and
whole-chain analysis time on the real SPX chain.

Run: .venv/bin/python benchmarks/quant.py
The last line is machine-readable key=value pairs:
    iv_per_s=... vollib_iv_per_s=... svi_ms_per_expiry=... spx_chain_s=... density_pop_ms=...

* iv_per_s: Black-76 implied vols solved per second by `tools.implied_vol.implied_vol_black76`
  on 1,000,000 synthetic options in one vectorized call, one core (BLAS/OpenMP pinned to one
  thread before numpy loads). Best of 3 runs.
* vollib_iv_per_s: `vollib.black.implied_volatility` (py_lets_be_rational, one option per call)
  timed on a 20,000-option subsample of the same options in the same run, extrapolated.
* svi_ms_per_expiry: `tools.svi.fit_svi_many` over every expiry of the SPX 2022-02-04 chain that
  `tools.surface.build_surface` fits (same points and weights), wall time divided by the number
  of expiries; best of 5 runs.
* spx_chain_s: `tools.chain_analysis.analyze_chain` on that chain after it has been read (quote
  validation, forwards, IVs, surface, mispriced quotes, flow totals); best of 3 runs.
* density_pop_ms: for an SPX iron condor on the fitted smile of the expiry nearest 35 days, the
  exact skew-aware probability of profit plus the P&L distribution on the default grid, under a
  view tilt with a dispersion scale (the allocator's work per proposal); best of 20 runs.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
sys.path.insert(0, str(REPO))

from tools.cboe import implied_forwards, read_cboe_quote_table  # noqa: E402
from tools.density import SmileDensity, View, pnl_distribution, probability_of_profit  # noqa: E402
from tools.structures import LegSpec  # noqa: E402
from tools.chain_analysis import analyze_chain  # noqa: E402
from tools.implied_vol import IVFailure, chain_implied_vol, implied_vol_black76  # noqa: E402
from tools.pricing import black76_price  # noqa: E402
from tools.surface import smile_inputs  # noqa: E402
from tools.svi import fit_svi_many  # noqa: E402

N_OPTIONS = 1_000_000
VOLLIB_SAMPLE = 20_000
SPX_FILE = DATA / "cboe" / "spx_quotedata_2022-02-04.csv"


def _best_of(runs: int, fn) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def synthetic_options(n: int, seed: int = 2024):
    """Forwards near 100, strikes over +-2 standard deviations, 1 day to 3 years, 5%-150% vol."""
    rng = np.random.default_rng(seed)
    forward = rng.uniform(50.0, 150.0, n)
    t = np.exp(rng.uniform(np.log(1 / 365), np.log(3.0), n))
    vol = rng.uniform(0.05, 1.5, n)
    strike = forward * np.exp(rng.uniform(-2.0, 2.0, n) * vol * np.sqrt(t))
    rate = rng.uniform(0.0, 0.05, n)
    is_call = rng.random(n) < 0.5
    price = black76_price(forward, strike, t, rate, vol, is_call)
    return price, forward, strike, t, rate, is_call, vol


def bench_iv() -> tuple[float, float, float]:
    price, forward, strike, t, rate, is_call, vol = synthetic_options(N_OPTIONS)
    result = implied_vol_black76(price, forward, strike, t, rate, is_call)
    ok = result.reason == IVFailure.OK
    max_error = float(np.max(np.abs(result.vol[ok] - vol[ok])))
    seconds = _best_of(3, lambda: implied_vol_black76(price, forward, strike, t, rate, is_call))
    ours = N_OPTIONS / seconds
    print(f"ours: {N_OPTIONS:,} IVs in {seconds:.3f} s = {ours:,.0f}/s "
          f"({ok.mean():.4%} solved, max |vol error| {max_error:.1e})")

    from vollib.black.implied_volatility import implied_volatility

    flags = np.where(is_call, "c", "p")
    sample = range(VOLLIB_SAMPLE)
    start = time.perf_counter()
    vollib_vols = []
    for i in sample:
        try:
            vollib_vols.append(implied_volatility(price[i], forward[i], strike[i], rate[i], t[i], flags[i]))
        except Exception:  # vollib raises on prices it cannot invert; count the time, not the value
            vollib_vols.append(np.nan)
    elapsed = time.perf_counter() - start
    theirs = VOLLIB_SAMPLE / elapsed
    agree = np.nanmax(np.abs(np.array(vollib_vols) - result.vol[:VOLLIB_SAMPLE]))
    print(f"vollib: {VOLLIB_SAMPLE:,} IVs in {elapsed:.3f} s = {theirs:,.0f}/s "
          f"(max |ours - vollib| {agree:.1e} on the subsample)")
    return ours, theirs, max_error


def bench_svi(chain) -> float:
    forwards = implied_forwards(chain)
    chain_iv = chain_implied_vol(chain, forwards.forwards_by_expiry(), forwards.discounts_by_expiry())
    inputs = [data for _, data in smile_inputs(chain, chain_iv)]
    fits = fit_svi_many(inputs)
    seconds = _best_of(5, lambda: fit_svi_many(inputs))
    per_expiry_ms = 1e3 * seconds / len(inputs)
    rmse = [f.rmse_vol_points for f in fits]
    print(f"SVI: {len(inputs)} SPX expiries in {seconds * 1e3:.1f} ms = {per_expiry_ms:.2f} ms/expiry "
          f"(RMSE on mids: max {max(rmse):.2f}, median {np.median(rmse):.2f} vol points)")
    return per_expiry_ms


def bench_chain(chain) -> float:
    best = None
    for _ in range(3):
        start = time.perf_counter()
        analysis = analyze_chain(chain)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, analysis)
    seconds, analysis = best
    stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in analysis.timings.items() if k != "total")
    print(f"SPX chain analysis ({len(chain):,} rows): {seconds:.3f} s  [{stages}]")
    return seconds


def bench_density(chain) -> float:
    surface = analyze_chain(chain).surface
    sl = min(surface.fitted_slices, key=lambda s: abs(s.t - 35 / 365))
    density = SmileDensity(sl.params, sl.t, sl.forward)
    f = sl.forward
    legs = [LegSpec(round(f * 0.90, -1), "P", "buy"), LegSpec(round(f * 0.93, -1), "P", "sell"),
            LegSpec(round(f * 1.04, -1), "C", "sell"), LegSpec(round(f * 1.07, -1), "C", "buy")]
    view = View(drift=0.1, vol_scale=0.8)

    def work():
        probability_of_profit(legs, -20.0, density, view)
        pnl_distribution(legs, -20.0, density, view)

    ms = 1e3 * _best_of(20, work)
    print(f"Skew-aware PoP + P&L distribution (SPX condor, {sl.expiry}, view tilt): {ms:.2f} ms")
    return ms


def main() -> None:
    if not SPX_FILE.is_file():
        raise SystemExit(f"SPX chain not found at {SPX_FILE}: ../shared must sit beside the repo")
    ours, theirs, _ = bench_iv()
    chain = read_cboe_quote_table(SPX_FILE)
    svi_ms = bench_svi(chain)
    chain_s = bench_chain(chain)
    density_ms = bench_density(chain)
    print(f"iv_per_s={ours:.0f} vollib_iv_per_s={theirs:.0f} svi_ms_per_expiry={svi_ms:.2f} spx_chain_s={chain_s:.3f} "
          f"density_pop_ms={density_ms:.2f}")


if __name__ == "__main__":
    main()
