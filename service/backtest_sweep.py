"""Parameter sweeps: independent backtests, one per combination of `--sweep key=v1,v2` values,
in parallel — local processes by default, Ray tasks with `--ray` or when `RAY_ADDRESS` is set
(a local Ray cluster when no address is given). Each backtest is a whole backtest (its own
database, account, index row and results folder), so they share nothing but the server.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from service.backtest import BacktestError, BacktestSpec

REPO_ROOT = Path(__file__).resolve().parents[1]


def parse_sweeps(items: Sequence[str]) -> dict[str, list[Any]]:
    """`["kelly_multiplier=0.25,0.5"]` → `{"kelly_multiplier": [0.25, 0.5]}`, each value typed and
    checked like `--set` (an unknown key or a bad value is a `BacktestError`)."""
    from graph.replay import ReplayError, parse_overrides

    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise BacktestError(f"--sweep takes key=v1,v2,..., got {item!r}")
        if key in out:
            raise BacktestError(f"--sweep {key} is given twice")
        try:
            out[key] = [parse_overrides([f"{key}={v.strip()}"])[key] for v in values.split(",") if v.strip()]
        except ReplayError as exc:
            raise BacktestError(str(exc)) from None
    return out


def sweep_specs(base: BacktestSpec, sweeps: dict[str, list[Any]]) -> list[BacktestSpec]:
    """One spec per combination (the cartesian product), each validated as a decision config."""
    keys = sorted(sweeps)
    clash = set(keys) & set(base.overrides)
    if clash:
        raise BacktestError(f"{', '.join(sorted(clash))} is both --set and --sweep")
    specs = [replace(base, overrides=base.overrides | dict(zip(keys, combo)))
             for combo in itertools.product(*(sweeps[k] for k in keys))]
    for spec in specs:
        try:
            spec.config()
        except ValueError as exc:
            raise BacktestError(f"sweep {spec.overrides}: {exc}") from None
    return specs


def run_one(spec: BacktestSpec, results_root: str) -> dict[str, Any]:
    """One backtest to its report, in this process (the body of a local worker or a Ray task)."""
    import asyncio

    # Each worker is one of several: chain analyses stay in-process instead of a pool per worker.
    os.environ.setdefault("HEDGEGRAPH_WORKERS", "1")

    async def go() -> dict[str, Any]:
        from config.settings import settings
        from service.backtest import finish_backtest, run_backtest
        from storage.database import open_database

        async with open_database(settings()) as db:
            result = await run_backtest(db, spec)
            report = await finish_backtest(db, result, Path(results_root))
        return {"backtest_id": report["backtest_id"], "overrides": spec.overrides, "metrics": report["metrics"],
                "baselines": report["baselines"], "results_dir": report["results_dir"], "worker_pid": os.getpid()}

    return asyncio.run(go())


def use_ray(flag: bool) -> bool:
    return flag or bool(os.environ.get("RAY_ADDRESS"))


def run_sweep(specs: Sequence[BacktestSpec], results_root: Path, *, workers: int = 2, ray: bool = False,
              on_done=None) -> list[dict[str, Any]]:
    """Run every spec; results in the order of `specs`. `on_done(result)` as each finishes."""
    if use_ray(ray):
        return _run_ray(specs, results_root, workers, on_done)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[dict[str, Any] | None] = [None] * len(specs)
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(specs))), initializer=_one_torch_thread,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, spec, str(results_root)): i for i, spec in enumerate(specs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_done is not None:
                on_done(results[futures[future]])
    return [r for r in results if r is not None]


def _one_torch_thread() -> None:
    # Members run side by side on few cores: torch's default of one spinning OpenMP thread per core
    # in each of them makes the memory embeddings several times slower than one thread each
    # (measured: benchmarks/memory.py "beside two busy processes"). Ray sets this itself per task.
    os.environ["OMP_NUM_THREADS"] = "1"


def _run_ray(specs, results_root: Path, workers: int, on_done) -> list[dict[str, Any]]:
    import ray

    # The tasks import this repository and reach the same database as this process.
    env = {k: v for k, v in os.environ.items() if k in ("DATABASE_URL", "HEDGEGRAPH_HOME")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        options = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        ray.init(runtime_env={"env_vars": env}, log_to_driver=False, **options)
    try:
        task = ray.remote(num_cpus=1)(run_one)
        refs = [task.remote(spec, str(results_root)) for spec in specs]
        results = []
        for ref in refs:
            results.append(ray.get(ref))
            if on_done is not None:
                on_done(results[-1])
        return results
    finally:
        if started_here:
            ray.shutdown()
