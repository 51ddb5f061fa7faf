"""Simulator control from the outside, through its documented control API (``/_sim/*``) and the collectors'
state hashes in Redis: what the spawner does at a stop (and tests do anywhere).

At a stop the simulator is paused, then the spawner waits until every running collector has read every
frame written to the connections open now (the simulator's ``frames_sent_open`` against the collector's
``frames_open``: a restarted collector's count starts at 0 while the simulator's total does not), and saves
the simulator's account of what it sent (``sim/sent-at-stop.json``) for comparison with the lake.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from data_feed.cache.streams import STATE_FRAMES_FIELD, STATE_FRAMES_OPEN_FIELD, collector_state_key
from data_feed.contracts.config import Config

LOG = logging.getLogger("data_feed.simctl")

CATCH_UP_TIMEOUT_SECONDS = 15.0
SIM_ACCOUNT_FILE = "sent-at-stop.json"
SIM_ACCOUNT_BOOK_DEPTH = 20
REQUEST_TIMEOUT_SECONDS = 5


class SimulatorControl:
    def __init__(self, cfg: Config, base_url: str, cert: str, client: redis.Redis,
                 collector_alive: Callable[[str], bool]) -> None:
        self.cfg = cfg
        self.base_url = base_url
        self.cert = cert
        self.client = client
        self.collector_alive = collector_alive

    def request(self, method: str, path: str) -> dict[str, Any]:
        ctx = ssl.create_default_context(cafile=self.cert)
        data = b"" if method == "POST" else None
        req = urllib.request.Request(self.base_url + path, method=method, data=data)
        with urllib.request.urlopen(req, context=ctx, timeout=REQUEST_TIMEOUT_SECONDS) as resp:
            body: dict[str, Any] = json.loads(resp.read() or b"{}")
            return body

    def pause_and_catch_up(self, account_dir: Path) -> None:
        """Stop the simulated exchanges' input and wait until collectors have read every frame sent."""
        try:
            self.request("POST", "/_sim/pause")
        except OSError as err:
            LOG.error("could not pause the simulator (%s); frames in flight at stop may be lost", err)
            return
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECONDS
        behind = self.frames_behind()
        while behind and time.monotonic() < deadline:
            time.sleep(0.1)
            behind = self.frames_behind()
        if behind:
            LOG.error("collectors still behind the simulator at stop: %s frames", behind)
        self.save_account(account_dir / SIM_ACCOUNT_FILE)

    def frames_behind(self) -> dict[str, int]:
        """Frames the simulator wrote that a running collector has not read yet, per exchange."""
        stats = self.request("GET", "/_sim/stats")
        behind = {}
        for exchange in self.cfg.served():
            if not self.collector_alive(exchange):
                continue
            sim, state = stats.get(exchange, {}), self.collector_state(exchange)
            if "frames_sent_open" in sim:
                sent, received = int(sim["frames_sent_open"]), int(state.get(STATE_FRAMES_OPEN_FIELD, 0))
            else:  # a recorded session: one connection per recorded one, never reopened
                sent, received = int(sim.get("frames_sent", 0)), int(state.get(STATE_FRAMES_FIELD, 0))
            if received < sent:
                behind[exchange] = sent - received
        return behind

    def collector_state(self, exchange: str) -> dict[str, str]:
        raw: dict[bytes, bytes] = self.client.hgetall(collector_state_key(exchange))  # type: ignore[assignment]
        return {k.decode(): v.decode() for k, v in raw.items()}

    def save_account(self, path: Path) -> None:
        """What the simulator sent and its books at stop, for comparison with the lake."""
        account: dict[str, Any] = {"stats": self.request("GET", "/_sim/stats"), "books": {}}
        for exchange, ex in self.cfg.simulated().items():
            for symbol in ex.symbols():
                book = self.request("GET", f"/_sim/book/{exchange}/{symbol}?depth={SIM_ACCOUNT_BOOK_DEPTH}")
                account["books"].setdefault(exchange, {})[symbol] = book
        path.write_text(json.dumps(account))
        LOG.info("simulator's account of what it sent saved to %s", path)
