"""Wall time per node, recorded into the state's `node_timings` (for benchmarks and traces)."""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone

from domain.decision import NodeTiming


def timed(node: str):
    """Wrap an async node so its update carries how long it took (per ticker for analysts)."""

    def decorate(fn):
        @functools.wraps(fn)
        async def wrapper(state, runtime):
            started = datetime.now(timezone.utc)
            t0 = time.perf_counter()
            update = await fn(state, runtime)
            ticker = state.get("ticker") if isinstance(state, dict) else None
            timing = NodeTiming(node=node, ticker=ticker, started_at=started,
                                duration_ms=(time.perf_counter() - t0) * 1000.0)
            return {**(update or {}), "node_timings": [timing]}

        return wrapper

    return decorate
