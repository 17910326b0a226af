"""The service app served by uvicorn in a background thread on 127.0.0.1 (browser and HTTP tests)."""
from __future__ import annotations

import socket
import threading
import time
from datetime import datetime

from service.api import create_app
from service.approvals import ServiceContext
from service.security import ServiceConfig
from storage.database import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving the app on 127.0.0.1:<free port> over the database at `url`; `now` is the
    service's wall clock, which a test may move."""

    def __init__(self, url: str, now: datetime, service_config: ServiceConfig | None = None):
        import uvicorn

        self.url = url
        self.now = now

        async def open_context() -> ServiceContext:
            return ServiceContext(db=await connect(url, max_size=6), clock=lambda: self.now)

        app = create_app(open_context, service_config=service_config or ServiceConfig(allowed_hosts=("127.0.0.1",)))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True  # the lifespan closes the context's pools
        self.thread.join(timeout=30)
