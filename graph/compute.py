"""CPU-heavy instrument work off the event loop and across cores.

A chain analysis (implied vols, SVI fits, gamma sweep) is pure NumPy/Python over one chain; run in
threads it would serialize on the GIL, so it runs in a small process pool instead. The pool uses
the forkserver start method: forking the server process (which imported the numeric stack once)
is fast, and unlike a plain fork it never copies this process's threads and open connections.

Workers must not outlive the run that started them, even when it is killed with SIGKILL (no
atexit, no pool shutdown). Left alone they would: each waits on a queue whose write end it holds
itself, and each holds the forkserver's "alive" pipe, which keeps the forkserver (and the resource
tracker) running too. So every worker watches the process that made the pool and exits when it is
gone; the forkserver and the resource tracker then see their pipes close and exit by themselves.
On Linux a worker also asks the kernel to kill it with its parent, the forkserver.

Workers run at a lower CPU priority (nice +WORKER_NICENESS). What waits on them waits whatever
their priority: a run that needs an analysis has nothing else to do meanwhile. But analyses started
ahead of time (the backtest's next slot, `agents.chain_analyses.prefetch`) had both cores, and the
event loop, Postgres and the embedder thread, all on the critical path, queued behind them.
Measured on the 20-ticker backtest benchmark, 2 cores: 1,387 -> 1,298 ms per simulated day.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from tools.processes import process_alive

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL_S = 0.5

_PRELOAD = ["tools.chain_analysis"]
WORKER_NICENESS = 10
_pool: Executor | None = None


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, int(os.environ.get("HEDGEGRAPH_WORKERS", "0")) or (os.cpu_count() or 1)))


def compute_pool() -> Executor:
    """The process-wide pool; HEDGEGRAPH_WORKERS=1 runs in a thread instead (debugging, profiling)."""
    global _pool
    if _pool is None:
        if workers() == 1:
            _pool = ThreadPoolExecutor(max_workers=1)
        else:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_PRELOAD)
            _pool = ProcessPoolExecutor(max_workers=workers(), mp_context=context,
                                        initializer=_start_worker, initargs=(os.getpid(),))
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool


def _start_worker(owner_pid: int) -> None:
    """Worker initializer: yield the CPU to the pool's owner (see the module docstring) and die
    with it."""
    os.nice(WORKER_NICENESS)
    die_with_parent(owner_pid)


def die_with_parent(owner_pid: int) -> None:
    """Worker initializer: end this worker when `owner_pid` (the process that made the pool) or
    this worker's own parent (the forkserver) dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before prctl took effect: nobody will signal us
            os._exit(1)
    threading.Thread(target=_watch_owner, args=(owner_pid,), name="owner-watchdog", daemon=True).start()


def _watch_owner(owner_pid: int) -> None:
    while process_alive(owner_pid):
        time.sleep(_WATCH_INTERVAL_S)
    os._exit(1)
