"""Nothing a killed process started outlives it: compute workers, and the embedded Postgres."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import REPO_ROOT
from tools.processes import process_alive


def _python(code: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if process_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_compute_workers_die_when_their_run_is_killed():
    child = _python("""
        import os, time
        from concurrent.futures import wait
        from graph import compute

        compute.workers = lambda: 2  # a process pool even on a one-core machine
        pool = compute.compute_pool()
        wait([pool.submit(time.sleep, 0.3) for _ in range(4)])  # every worker started
        from multiprocessing import forkserver
        helpers = [forkserver._forkserver._forkserver_pid]  # the forkserver, which workers keep alive
        print(" ".join(str(p) for p in [*pool._processes, *helpers]), flush=True)
        time.sleep(600)
    """)
    try:
        workers = [int(p) for p in child.stdout.readline().split()]
        assert len(workers) == 3 and all(process_alive(p) for p in workers), child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert _gone_within(workers, 10) == []
    finally:
        if child.poll() is None:
            child.kill()


def test_compute_workers_yield_the_cpu_to_the_process_that_owns_them():
    child = _python("""
        import os
        from graph import compute

        compute.workers = lambda: 2  # a process pool even on a one-core machine
        print(os.nice(0), compute.compute_pool().submit(os.nice, 0).result(), flush=True)
        compute.compute_pool().shutdown()
    """)
    owner, worker = (int(n) for n in child.communicate(timeout=60)[0].split())
    from graph.compute import WORKER_NICENESS
    assert worker == owner + WORKER_NICENESS


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_embedded_postgres_stops_after_its_last_live_user_though_another_was_killed(tmp_path):
    from storage.embedded import start_embedded_server

    data_dir = tmp_path / "pg"
    killed = _python(f"""
        import time
        from pathlib import Path
        from storage.embedded import start_embedded_server

        start_embedded_server(Path({str(data_dir)!r}))
        print("ready", flush=True)
        time.sleep(600)
    """)
    try:
        assert killed.stdout.readline().strip() == "ready", killed.stderr.read()
        postmaster = _postmaster_pid(data_dir)
        os.kill(killed.pid, signal.SIGKILL)  # never takes itself off pgserver's list of users
        killed.wait(timeout=10)
    finally:
        if killed.poll() is None:
            killed.kill()
    server = start_embedded_server(data_dir)  # joins the server the killed process started
    assert _postmaster_pid(data_dir) == postmaster
    assert "(1 row)" in server.psql("SELECT 1;")
    server.cleanup()  # the last live user leaves: the server stops
    assert _gone_within([postmaster], 20) == []
