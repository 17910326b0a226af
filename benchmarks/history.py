"""Historical-market benchmark: loading the shared history files, one as-of snapshot, one modelled chain.

Run: .venv/bin/python benchmarks/history.py
The last line is machine-readable key=value pairs:
    load_s=... snapshot_s=... chain_model_s=... first_snapshot_s=... dates=...

* load_s: `read_bar_directory` on ``../shared/data/history`` from cold (the per-process parse cache
  cleared): read, date parsing and vectorized validation of every file. Best of 3.
* first_snapshot_s: the first SPY snapshot of the process after loading (builds the NYSE calendar
  used for expiries once).
* snapshot_s: mean wall time of `HistoricalMarket.snapshot(["SPY"], as_of)` over `dates` session
  closes spread over 2012-2024 (bars window, IV history, modelled chain of ~7,000 quotes).
* chain_model_s: mean time of `build_surface` + `model_chain` alone for SPY on the same dates.
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
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "history"
sys.path.insert(0, str(REPO))

from tools.chain_model import build_surface, model_chain, session_close  # noqa: E402
from tools.providers import bar_files  # noqa: E402
from tools.providers.history import HistoricalMarket, as_of_from_date  # noqa: E402

N_DATES = 60


def main() -> None:
    loads = []
    for _ in range(3):
        bar_files._read_bar_file_cached.cache_clear()
        start = time.perf_counter()
        bar_files.read_bar_directory(DATA)
        loads.append(time.perf_counter() - start)
    load_s = min(loads)

    market = HistoricalMarket(DATA)
    sessions = market.files.bars("SPY").dates
    sessions = sessions[(sessions >= np.datetime64("2012-01-03")) & (sessions <= np.datetime64("2024-12-31"))]
    days = [d.astype(object) for d in sessions[np.linspace(0, len(sessions) - 1, N_DATES).astype(int)]]

    start = time.perf_counter()
    market.snapshot(["SPY"], as_of_from_date(days[0]))
    first_snapshot_s = time.perf_counter() - start

    start = time.perf_counter()
    for day in days:
        market.snapshot(["SPY"], as_of_from_date(day))
    snapshot_s = (time.perf_counter() - start) / len(days)

    inputs = [market.implied_inputs(np.datetime64(day, "D"))[0] for day in days]
    spots = [float(market.files.bars("SPY").close[np.searchsorted(sessions, np.datetime64(d, "D"))]) for d in days]
    start = time.perf_counter()
    for day, implied, spot in zip(days, inputs, spots):
        model_chain("SPY", build_surface(implied), spot, session_close(day), rate=0.02, dividend_yield=0.015)
    chain_model_s = (time.perf_counter() - start) / len(days)

    print(f"load_s={load_s:.3f} snapshot_s={snapshot_s:.4f} chain_model_s={chain_model_s:.4f} "
          f"first_snapshot_s={first_snapshot_s:.3f} dates={len(days)}")


if __name__ == "__main__":
    main()
