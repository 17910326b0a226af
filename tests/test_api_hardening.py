"""Hostile input against the API (body size, Host header, token guessing), the security headers,
the protected schema, and the trace / replay / fork / journal endpoints — on the embedded Postgres,
over the app itself and, where the transport matters, over a real socket to uvicorn."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from service.security import ServiceConfig
from tests.test_api import TEST_SERVICE, make_app, seeded, seeded_url, serving  # noqa: F401 (fixtures)


async def test_bodies_over_the_limit_are_refused_before_they_are_read(seeded, seeded_url):
    order = f"/orders/{seeded.order_id}/reject"
    async with serving(seeded_url) as (api, _):
        declared = await api.post(order, content=b"x" * 70_000, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and declared.json()["detail"] == "request body larger than 65536 bytes"

        async def chunks():  # no Content-Length: counted as it streams in, refused past the limit
            for _ in range(100):
                yield b"y" * 1000

        streamed = await api.post(order, content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        fine = await api.post(order, json={"reason": "small"}, headers=seeded.auth("approver"))
        assert fine.status_code == 200 and fine.json()["state"] == "REJECTED"


def test_a_300_mb_declared_body_is_answered_at_once_over_a_socket(seeded_url):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(seeded_url, ServiceConfig(allowed_hosts=("127.0.0.1",))),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            started = time.monotonic()
            conn.sendall(b"POST /orders/x/reject HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 314572800\r\n\r\n" + b"{" * 4096)
            answer = conn.recv(4096).decode()
            assert answer.startswith("HTTP/1.1 413") and time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(timeout=30)


async def test_unknown_hosts_are_refused_and_every_answer_has_security_headers(seeded, seeded_url):
    async with serving(seeded_url) as (api, _):
        evil = await api.get("/health", headers={"host": "evil.example"})
        assert evil.status_code == 400 and evil.json()["detail"] == "invalid Host header"
        for response in (evil, await api.get("/health"), await api.get("/runs", headers=seeded.auth("viewer")),
                         await api.get("/orders/nope", headers=seeded.auth("viewer")), await api.get("/login")):
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
            assert "default-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"


async def test_docs_and_schema_need_a_token_unless_configured_public(seeded, seeded_url):
    private = make_app(seeded_url, ServiceConfig(allowed_hosts=("api",)))
    async with private.router.lifespan_context(private), \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=private), base_url="http://api") as api:
        for path in ("/openapi.json", "/docs"):
            assert (await api.get(path)).status_code == 401
            assert (await api.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await api.get(path, headers=seeded.auth("viewer"))).status_code == 200
        assert "/orders/{order_id}/approve" in (await api.get("/openapi.json", headers=seeded.auth("viewer"))).json()["paths"]
    async with serving(seeded_url) as (api, _):  # TEST_SERVICE: docs_public
        assert TEST_SERVICE.docs_public and (await api.get("/openapi.json")).status_code == 200


async def test_docs_page_uses_only_its_own_vendored_assets(seeded, seeded_url):
    import base64
    import hashlib
    import re

    async with serving(seeded_url) as (api, _):  # TEST_SERVICE: docs public
        docs = await api.get("/docs")
        assert docs.status_code == 200
        html = docs.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sorted(assets) == ["/docs-assets/favicon.png", "/docs-assets/swagger-ui-bundle.js",
                                  "/docs-assets/swagger-ui.css"]
        assert "http" not in html.replace("http-equiv", "")  # no other origin named anywhere on the page
        for path in assets:
            served = await api.get(path)
            assert served.status_code == 200 and len(served.content) > 1000, path
        assert "SwaggerUIBundle" in (await api.get("/docs-assets/swagger-ui-bundle.js")).text
        # Its CSP lets exactly the page's one inline start-up script run, and nothing from elsewhere.
        csp = docs.headers["content-security-policy"]
        [inline] = re.findall(r"<script>(.*?)</script>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"script-src 'self' 'sha256-{digest}';" in csp and "unsafe-inline" not in csp and "http" not in csp
        assert "'sha256-" not in (await api.get("/login")).headers["content-security-policy"]  # only on /docs

async def test_failed_tokens_are_throttled_per_address(seeded, seeded_url):
    async with serving(seeded_url) as (api, _):
        codes = [(await api.get("/runs", headers={"Authorization": f"Bearer guess-{i}"})).status_code for i in range(6)]
        assert codes == [401] * 5 + [429]
        blocked = await api.get("/runs", headers=seeded.auth("admin"))  # even a good token waits it out
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert (await api.get("/health")).status_code == 200  # what needs no token is unaffected


async def test_trace_steps_replay_fork_and_journal_endpoints(seeded, seeded_url):
    run = f"/runs/{seeded.run_id}"
    async with serving(seeded_url) as (api, _):
        listed = {key: [r["run_id"] for r in (await api.get("/runs", params=params, headers=seeded.auth("viewer"))).json()]
                  for key, params in {"waiting": {"status": "awaiting_approval"}, "failed": {"status": "failed"},
                                      "amzn": {"q": "amzn"}, "spy": {"q": "SPY"}}.items()}
        assert listed == {"waiting": [seeded.run_id], "failed": [], "amzn": [seeded.run_id], "spy": []}
        steps = (await api.get(f"{run}/steps", headers=seeded.auth("viewer"))).json()
        nodes = [n for s in steps for n in s["nodes"]]
        assert nodes[:2] == ["__start__", "load_context"] and "stage_orders" in nodes and steps[-1]["status"] == "interrupted"
        staged_at = next(s["step"] for s in steps if s["nodes"] == ["stage_orders"])
        state = (await api.get(f"{run}/steps/{staged_at}", headers=seeded.auth("viewer"))).json()
        assert state["run_id"] == seeded.run_id and "await_approval" in state["next"] and state["values"]["staged"]
        assert (await api.get(f"{run}/steps/99999", headers=seeded.auth("viewer"))).status_code == 404
        assert (await api.get("/runs/nope/steps", headers=seeded.auth("viewer"))).status_code == 404

        assert (await api.post(f"{run}/replay", headers=seeded.auth("viewer"))).status_code == 403
        replay = await api.post(f"{run}/replay", headers=seeded.auth("approver"))
        assert replay.status_code == 200 and replay.json()["matched"], replay.json()["differing_nodes"]
        bad = await api.post(f"{run}/fork", json={"at": "debate", "set": ["no_such_setting=1"]},
                             headers=seeded.auth("approver"))
        assert bad.status_code == 422 and "unknown decision setting" in bad.json()["detail"]
        fork = await api.post(f"{run}/fork", json={"at": "kelly_allocator", "set": ["kelly_multiplier=0.1"]},
                              headers=seeded.auth("approver"))
        assert fork.status_code == 200 and fork.json()["overrides"] == {"kelly_multiplier": 0.1}

        assert (await api.get("/journal", headers=seeded.auth("viewer"))).json() == []
        approved = await api.post(f"/orders/{seeded.order_id}/approve", json={"acknowledge": True},
                                  headers=seeded.auth("approver"))
        assert approved.json()["state"] == "FILLED"
        journal = (await api.get("/journal", params={"ticker": "AMZN"}, headers=seeded.auth("viewer"))).json()
        assert [(e["order_id"], e["approver"]) for e in journal] == [(seeded.order_id, "alice")]
