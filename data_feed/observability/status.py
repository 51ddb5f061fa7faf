"""A role's own status, for whatever supervises it: the spawner, docker-compose or Kubernetes.

Every role process (``data-feed role ...``) serves ``/health`` (200 while it reports ``ok``, 503 while
``starting`` or ``degraded``, a JSON body with the reason) and ``/metrics`` on its own HTTP port, and,
when it uses Redis, keeps its report in its health key (``cache.health_key``, expiring), where the
spawner's ``/health`` and ``data-feed status`` read every role's at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from data_feed.cache.streams import HEALTH_TTL_SECONDS, health_key
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.status")

REPORT_SECONDS = 2.0
OK, STARTING, DEGRADED = "ok", "starting", "degraded"


class RoleStatus:
    """``starting`` until ``ready()``; then ``ok``, or ``degraded`` with a reason until ``ok()`` again."""

    def __init__(self, role: str, redis_url: str | None = None) -> None:
        self.role = role
        self.status = STARTING
        self.reason = ""
        self.started = time.time()
        self.port: int | None = None
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None
        self._http: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._reporter: threading.Thread | None = None

    # -- the role says -------------------------------------------------------------------------

    def ready(self) -> None:
        self._set(OK, "")

    def ok(self) -> None:
        self._set(OK, "")

    def degraded(self, reason: str) -> None:
        self._set(DEGRADED, reason)

    def _set(self, status: str, reason: str) -> None:
        changed = (status, reason) != (self.status, self.reason)
        self.status, self.reason = status, reason
        if changed:
            self.report()

    def body(self) -> dict[str, Any]:
        return {"role": self.role, "status": self.status, "reason": self.reason, "pid": os.getpid(),
                "port": self.port, "uptime_s": round(time.time() - self.started, 1), "at": time.time()}

    # -- where it is told ----------------------------------------------------------------------

    def report(self) -> None:
        """Write the health key now (the reporter thread also does, every REPORT_SECONDS)."""
        if self._client is None:
            return
        try:
            self._client.set(health_key(self.role), json.dumps(self.body()), ex=HEALTH_TTL_SECONDS)
        except (redis.RedisError, OSError) as err:  # Redis away: the roles' own logs and metrics say so
            LOG.debug("role=%s: health key not written (%s)", self.role, err)

    def serve(self, port: int | None, host: str = "127.0.0.1") -> RoleStatus:
        """Start reporting, and serve /health and /metrics on ``port`` (0: a free one; None: no HTTP)."""
        self._reporter = threading.Thread(target=self._report_loop, name="status-report", daemon=True)
        self._reporter.start()
        if port is not None:
            self._http = serve_http(host, port, lambda: (200 if self.status == OK else 503, self.body()))
            self.port = int(self._http.server_address[1])
            LOG.info("role=%s: /health and /metrics on http://%s:%d", self.role, host, self.port)
        return self

    def _report_loop(self) -> None:
        while not self._stop.wait(REPORT_SECONDS):
            self.report()

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._client is not None:
            with contextlib.suppress(redis.RedisError, OSError):  # Redis already gone: the key expires
                self._client.delete(health_key(self.role))


Health = Callable[[], tuple[int, dict[str, Any]]]  # (HTTP code, JSON body) of /health


def serve_http(host: str, port: int, health: Health,
               extra: Callable[[], list[Any]] | None = None) -> ThreadingHTTPServer:
    """/health (``health()``) and /metrics (every role's, in multiprocess mode, and what the ``extra()``
    collectors compute at the scrape) in a daemon thread."""
    server = ThreadingHTTPServer((host, port), _handler(health, extra or (lambda: [])))
    threading.Thread(target=server.serve_forever, name="status-http", daemon=True).start()
    return server


def _handler(health: Health, extra: Callable[[], list[Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, metrics.render_latest(*extra()), "text/plain; version=0.0.4")
            elif self.path == "/health":
                code, body = health()
                self._send(code, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found: try /metrics or /health\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            LOG.debug("http: " + fmt, *args)

    return Handler
