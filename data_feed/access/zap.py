"""Authentication for the gateway: a ZAP handler over a snapshot of the consumers table, the thread that
keeps that snapshot fresh, and the server keys.

libzmq asks the handler at ``inproc://zeromq.zap.01`` (ZAP, RFC 27) about every CURVE handshake. The
handler answers from the newest ``store.Snapshot`` in memory (never the database, so a handshake never
waits on SQL): 200 with User-Id = the consumer's name for an enabled consumer's public key, 400 for any
other key, mechanism or ZAP domain. The gateway's socket sets ``ZAP_ENFORCE_DOMAIN``, so that without a
handler answering, a handshake fails instead of being accepted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from sqlalchemy import Engine
from zmq.utils import z85

from data_feed.access import store
from data_feed.access.store import Snapshot
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.gateway")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"
POLL_MS = 100
KEY_FILE_MODE = 0o600
TOUCH_SECONDS = 10.0  # how often consumers' last_seen is written


def server_keys(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 CURVE keys of the gateway, made at the first start and kept in ``path`` (0600)."""
    if path.exists():
        public, secret = path.read_text().split()
        return public.encode(), secret.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    public_b, secret_b = zmq.curve_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(f"{public_b.decode()}\n{secret_b.decode()}\n")
    LOG.info("gateway: new CURVE server key pair in %s (public key %s)", path, public_b.decode())
    return public_b, secret_b


class ZapHandler:
    """Answers ZAP requests in a thread of its own, from ``current()`` (the gateway's newest snapshot)."""

    def __init__(self, ctx: zmq.Context[Any], domain: str, current: Callable[[], Snapshot]) -> None:
        self.ctx = ctx
        self.domain = domain.encode()
        self.current = current
        self.sock: zmq.Socket[Any] = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-zap", daemon=True)

    def start(self) -> ZapHandler:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.sock.poll(POLL_MS):
                    self.sock.send_multipart(self.answer(self.sock.recv_multipart()))
        finally:
            self.sock.close(linger=0)

    def answer(self, frames: list[bytes]) -> list[bytes]:
        _version, request_id, domain, address, _identity, mechanism, *credentials = frames
        user, refusal = self._decide(domain, mechanism, credentials)
        if refusal is None:
            return [ZAP_VERSION, request_id, b"200", b"OK", user.encode(), b""]
        self.failures += 1
        metrics.GATEWAY_HANDSHAKE_FAILURES.labels(refusal.split(":")[0]).inc()
        LOG.warning("gateway: handshake from %s refused: %s", address.decode(errors="replace"), refusal)
        return [ZAP_VERSION, request_id, b"400", refusal.encode(), b"", b""]

    def _decide(self, domain: bytes, mechanism: bytes, credentials: list[bytes]) -> tuple[str, str | None]:
        if domain != self.domain:
            return "", f"domain: {domain.decode(errors='replace')!r} is not {self.domain.decode()!r}"
        if mechanism != b"CURVE" or len(credentials) != 1:
            return "", f"mechanism: {mechanism.decode(errors='replace')} (only CURVE is accepted)"
        key = z85.encode(credentials[0]).decode()
        name = self.current().keys.get(key)
        if name is None:
            return "", f"unknown key: {key} is no enabled consumer's"
        return name, None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(POLL_MS * 5 / 1000)


class Refresher:
    """Re-reads the permission table every ``refresh_seconds`` into ``current`` (in a thread of its own)."""

    def __init__(self, engine: Engine, refresh_seconds: float) -> None:
        self.engine = engine
        self.refresh_seconds = refresh_seconds
        self.current: Snapshot = store.snapshot(engine)
        self.loaded = time.monotonic()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-refresh", daemon=True)

    def start(self) -> Refresher:
        self._thread.start()
        return self

    def _run(self) -> None:
        touched = time.monotonic()
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.current = store.snapshot(self.engine)
                self.loaded = time.monotonic()
                if time.monotonic() - touched > TOUCH_SECONDS:
                    seen, self.seen = self.seen, set()
                    store.touch(self.engine, seen)
                    touched = time.monotonic()
            except Exception as err:  # the database away: keep the last snapshot, say so, retry
                LOG.error("gateway: permission table not re-read (%s: %s); deciding from the one of %.1fs ago",
                          type(err).__name__, err, time.monotonic() - self.loaded)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
