"""How long the `hedgegraph` command takes, as a person types it: a fresh process each time.

Measures, each as the median of a few runs in subprocesses:
- `help_s`: `hedgegraph --help` (target < 0.5 s);
- `orders_list_s`: `hedgegraph orders list` on a warm database (target < 1 s) — an embedded
  Postgres kept running by this script, passed as DATABASE_URL;
- `run10_s`: a cold 10-ticker `hedgegraph run` (a new slot each time, so nothing is resumed or
  skipped; target < 5 s).
Prints one line: `help_s=… orders_list_s=… run10_s=…`, then the same with the CPU time (user +
system) of the command and its children, `*_cpu_s`: on a loaded machine wall time measures the
neighbours too. Measures, never asserts.
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from storage.embedded import start_embedded_server  # noqa: E402

TICKERS = "SPY,QQQ,IWM,AAPL,MSFT,NVDA,AMZN,TSLA,JPM,XLE"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `hedgegraph ARGS` in a fresh process."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], env=env, cwd=REPO_ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"hedgegraph {' '.join(args)} failed: {done.stderr.strip()}")
    return elapsed, _children_cpu() - cpu


def median_of(args_for, env, repeat: int) -> tuple[float, float]:
    samples = [timed(args_for(i), env) for i in range(repeat)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="hedgegraph-bench-cli-"))
    server = start_embedded_server(data_dir)  # kept warm by this process for the whole benchmark
    try:
        server.psql("CREATE DATABASE bench_cli;")
        url = urlunsplit(urlsplit(server.get_uri())._replace(path="/bench_cli"))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DATABASE_URL": url,
               "HEDGEGRAPH_HOME": str(data_dir / "home")}
        env.pop("OPENAI_API_KEY", None)
        env.pop("OPENAI_BASE_URL", None)
        timed(["db", "migrate"], env)  # the first connect migrates: not what is measured
        help_s, help_cpu = median_of(lambda i: ["--help"], env, 5)
        orders_s, orders_cpu = median_of(lambda i: ["orders", "list"], env, 5)
        # A different slot each time (hours apart on one day): every run is executed from scratch.
        run_s, run_cpu = median_of(
            lambda i: ["run", "--tickers", TICKERS, "--as-of", f"2026-11-20T1{i}:05", "--json"], env, 3)
        print(f"help_s={help_s:.2f} orders_list_s={orders_s:.2f} run10_s={run_s:.2f} "
              f"help_cpu_s={help_cpu:.2f} orders_list_cpu_s={orders_cpu:.2f} run10_cpu_s={run_cpu:.2f}")
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
