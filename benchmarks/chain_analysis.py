"""Chain-analysis benchmark: CPU time of one `tools.chain_analysis.analyze_chain` call on the
backtest's simulated chains and on the real Cboe quote tables, in total and per stage.

Run: PYTHONPATH=. .venv/bin/python benchmarks/chain_analysis.py [--days N] [--repeats R]
The last line is machine-readable key=value pairs:
    sim_ms=... sim_forwards_ms=... sim_implied_vol_ms=... sim_surface_ms=... sim_mispriced_ms=...
    sim_flow_ms=... spx_ms=... ndx_ms=... spy_ms=... chains=...

* sim_ms: mean over the 20 backtest tickers (SimulatedMarket(seed=7)) on the first N sessions of
  January 2022 at 10:30 New York, of each chain's best-of-R CPU time (process time, one thread:
  BLAS/OpenMP pinned before numpy loads) for a whole analyze_chain (what the backtest pays per
  ticker per decision run). sim_<stage>_ms: the same for each stage of `ChainAnalysis.timings`
  (wall time of the stage inside the best run).
* spx_ms, ndx_ms, spy_ms: best-of-R CPU time on the Cboe SPX and NDX 2022-02-04 and SPY
  2023-09-14 quote tables in ../shared/data/cboe (chains already read).
The chains are the ones tests/test_chain_analysis_speed_equivalence.py checks the outputs of.

Measured on the shared 2-core machine (default arguments, best of two runs each, alternating):
    before the speed work (ff31ceb):  sim_ms=56.4 forwards 4.5 implied_vol 2.0 surface 40.1 flow 9.0;
                                      spx_ms=312 ndx_ms=238 spy_ms=161
    after:                            sim_ms=38.2 forwards 2.7 implied_vol 1.8 surface 31.2 flow 2.6;
                                      spx_ms=176 ndx_ms=134 spy_ms=103
Every output is unchanged bit for bit (the golden test, and full-precision comparisons of 243
chains). What remains is mostly the SVI search (`tools.svi.fit_svi_many`, ~26 ms of a simulated
chain): a fixed sequence of a few hundred small vectorized steps whose results depend on the exact
shapes of its batched products, so making it cheaper again means changing the search itself.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chain_analysis_cases import cboe_chains, simulated_chains  # noqa: E402
from tools.chain import NEW_YORK  # noqa: E402
from tools.chain_analysis import analyze_chain  # noqa: E402

STAGES = ("forwards", "implied_vol", "surface", "mispriced", "flow")


def _sessions(n: int) -> list[datetime]:
    day, out = datetime(2022, 1, 3, 10, 30, tzinfo=NEW_YORK), []
    while len(out) < n:
        if day.weekday() < 5 and day.date() != datetime(2022, 1, 17).date():  # MLK day
            out.append(day)
        day += timedelta(days=1)
    return out


def best_run(chain, repeats: int) -> tuple[float, dict]:
    """(CPU seconds, stage timings) of the fastest of `repeats` analyses."""
    best = (float("inf"), {})
    for _ in range(repeats):
        start = time.process_time()
        analysis = analyze_chain(chain)
        seconds = time.process_time() - start
        if seconds < best[0]:
            best = (seconds, analysis.timings)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3, help="simulated sessions (20 chains each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per chain; the fastest counts")
    args = parser.parse_args()
    if args.days < 1 or args.repeats < 1:
        raise SystemExit("--days and --repeats must be at least 1")

    sim = simulated_chains(_sessions(args.days))
    cboe = cboe_chains()
    analyze_chain(sim[0][1])  # imports and first-call caches out of the timing

    total, stages = 0.0, dict.fromkeys(STAGES, 0.0)
    for _, chain in sim:
        seconds, timings = best_run(chain, args.repeats)
        total += seconds
        for stage in STAGES:
            stages[stage] += timings.get(stage, 0.0)
    n = len(sim)
    figures = {"sim_ms": 1e3 * total / n}
    figures |= {f"sim_{stage}_ms": 1e3 * stages[stage] / n for stage in STAGES}
    print(f"simulated: {n} chains ({args.days} sessions x 20 tickers), {figures['sim_ms']:.1f} ms per analysis  ["
          + ", ".join(f"{s} {figures[f'sim_{s}_ms']:.1f} ms" for s in STAGES) + "]")
    for name, chain in cboe:
        seconds, timings = best_run(chain, args.repeats)
        key = name.split(":")[1][:3] + "_ms"
        figures[key] = 1e3 * seconds
        print(f"{name} ({len(chain):,} rows): {1e3 * seconds:.0f} ms  ["
              + ", ".join(f"{s} {1e3 * timings.get(s, 0.0):.0f} ms" for s in STAGES) + "]")
    figures["chains"] = n + len(cboe)
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
