"""A run whose process is killed (SIGKILL) mid-run resumes from its last checkpoint in another
process and stages each order exactly once; the dead process's run lock died with it."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from graph.runner import execute_run
from service.operations import default_account
from tests.test_decision_run import TICKERS, CountingProvider, count, request

CHILD = textwrap.dedent('''
    import asyncio, sys
    from agents.debate import DeterministicDebater
    from graph.runner import execute_run
    from service.operations import default_account
    from storage.database import connect
    from tests.test_decision_run import request
    from tools.providers.simulated import SimulatedMarket

    class DebaterThatHangs(DeterministicDebater):
        async def debate(self, *args, **kwargs):
            await asyncio.sleep(3600)  # the process is killed while it waits here

    async def main():
        db = await connect(sys.argv[1], max_size=4)
        await execute_run(db, request(), SimulatedMarket(7), account=default_account(), debater=DebaterThatHangs())

    asyncio.run(main())
''')


async def test_a_killed_run_resumes_and_stages_each_order_once(db):
    env = dict(os.environ, HEDGEGRAPH_WORKERS="1")
    child = subprocess.Popen([sys.executable, "-c", CHILD, db.url], env=env, cwd=os.getcwd(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_id = request().run_id
    try:
        deadline = time.monotonic() + 120
        # Wait until the analysts' superstep is checkpointed (aggregate_signals stored the signals).
        while await count(db, "SELECT count(*) FROM signals WHERE run_id = $1", run_id) < 4 * len(TICKERS):
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child run never reached the debate"
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert await count(db, "SELECT count(*) FROM runs WHERE run_id = $1 AND status = 'running'", run_id) == 1
    assert await count(db, "SELECT count(*) FROM orders") == 0

    provider = CountingProvider()
    outcome = await execute_run(db, request(), provider, account=default_account())
    assert outcome.resumed and outcome.run.status == "awaiting_approval"
    assert provider.calls == 0  # the market came from the dead run's recording
    assert outcome.orders and await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)
    again = await execute_run(db, request(), CountingProvider(), account=default_account())
    assert not again.executed and await count(db, "SELECT count(*) FROM orders") == len(outcome.orders)
