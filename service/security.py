"""HTTP hardening of the service: body-size limit before parsing, trusted Host headers, security
headers on every response, and a throttle on failed sign-ins and bearer tokens.

All are plain ASGI middleware (no request body is buffered by them), configured from
`config/service.yaml` (`ServiceConfig`).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from config.settings import load_yaml

# The page and the API use only their own scripts and styles; SVG is inline markup, not script.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def docs_csp(page: str) -> str:
    """The Content-Security-Policy of the Swagger UI page: the site's, plus its one inline start-up
    script allowed by its SHA-256 (Swagger UI's own files are served from this origin)."""
    inline = [m.group(1) for m in re.finditer(r"<script>(.*?)</script>", page, re.S)]
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline)
    return CSP.replace("script-src 'self'", f"script-src 'self' {hashes}")


@dataclass(frozen=True)
class ServiceConfig:
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
    max_body_bytes: int = 65536
    docs_public: bool = False
    session_hours: float = 12.0
    cookie_secure: bool = False
    max_login_failures: int = 5
    login_window_seconds: float = 300.0

    @classmethod
    def load(cls) -> "ServiceConfig":
        raw = load_yaml("service.yaml")
        hosts = os.environ.get("HEDGEGRAPH_ALLOWED_HOSTS")
        docs = os.environ.get("HEDGEGRAPH_DOCS_PUBLIC")
        throttle = raw.get("login_throttle") or {}
        return cls(
            allowed_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()) if hosts
            else tuple(str(h) for h in raw.get("allowed_hosts", cls.allowed_hosts)),
            max_body_bytes=int(raw.get("max_body_bytes", cls.max_body_bytes)),
            docs_public=(docs.lower() in ("1", "true", "yes")) if docs else bool(raw.get("docs_public", False)),
            session_hours=float(raw.get("session_hours", cls.session_hours)),
            cookie_secure=bool(raw.get("cookie_secure", False)),
            max_login_failures=int(throttle.get("max_failures", cls.max_login_failures)),
            login_window_seconds=float(throttle.get("window_seconds", cls.login_window_seconds)),
        )


async def _send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class HardeningMiddleware:
    """Outermost layer: Host check, body limit (declared and streamed), security headers."""

    def __init__(self, app, config: ServiceConfig):
        self.app, self.config = app, config
        self.hosts = {h.lower() for h in config.allowed_hosts}

    def _host_allowed(self, scope) -> bool:
        if "*" in self.hosts:
            return True
        raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
        host = raw[1:raw.index("]")] if raw.startswith("[") and "]" in raw else raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
        return host in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # A route may set its own policy (only /docs does: it adds its start-up script's hash).
        security = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin")]
        if not self._host_allowed(scope):
            return await _send_json(send, 400, "invalid Host header", security)
        limit = self.config.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await _send_json(send, 400, "invalid Content-Length", security)
            if too_big:
                return await _send_json(send, 413, f"request body larger than {limit} bytes", security)
        received = 0
        overflowed = False  # the body outgrew the limit: the app saw it cut short, the client gets 413
        replaced = False

        async def limited_receive():
            nonlocal received, overflowed
            if overflowed:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def secured_send(message):
            nonlocal replaced
            if overflowed:  # whatever the app made of a truncated body, the answer is 413
                if not replaced:
                    replaced = True
                    await _send_json(send, 413, f"request body larger than {limit} bytes", security)
                return
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [h for h in security if h[0] not in names]
            await send(message)

        await self.app(scope, limited_receive, secured_send)


@dataclass
class LoginThrottle:
    """Failed authentications per client address in a sliding window; over the limit, refuse."""

    max_failures: int
    window_seconds: float
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 10_000  # addresses remembered at most: a flood of addresses cannot grow it unbounded
    _failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))

    def _trim(self, client: str) -> deque:
        q = self._failures[client]
        cutoff = self.clock() - self.window_seconds
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def blocked(self, client: str) -> float:
        """Seconds until `client` may try again (0: it may now)."""
        q = self._trim(client)
        if len(q) < self.max_failures:
            if not q:
                self._failures.pop(client, None)
            return 0.0
        return max(q[0] + self.window_seconds - self.clock(), 1.0)

    def failed(self, client: str) -> None:
        if len(self._failures) >= self.max_clients and client not in self._failures:
            for stale in [c for c in self._failures if not self._trim(c)]:
                del self._failures[stale]
            if len(self._failures) >= self.max_clients:  # all recent: forget the oldest address
                del self._failures[min(self._failures, key=lambda c: self._failures[c][-1])]
        self._trim(client).append(self.clock())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def client_address(request) -> str:
    return request.client.host if request.client else "unknown"
