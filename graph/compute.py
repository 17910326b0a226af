"""CPU-heavy instrument work off the event loop and across cores.

A chain analysis (implied vols, SVI fits, gamma sweep) is pure NumPy/Python over one chain; run in
threads it would serialize on the GIL, so it runs in a small process pool instead. The pool uses
the forkserver start method: forking the server process (which imported the numeric stack once)
is fast, and unlike a plain fork it never copies this process's threads and open connections.
"""
from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

_PRELOAD = ["tools.chain_analysis"]
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
            _pool = ProcessPoolExecutor(max_workers=workers(), mp_context=context)
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool


async def run_cpu(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(compute_pool(), fn, *args)
