"""What the spawner says about a run: its ``/health`` body, the collectors' state and the run summary.

Read from the roles' documented endpoints only: the Redis health key each role keeps
(``cache.health_key``), the collector state hashes, the aggregators' written totals and the
streams' lag. The spawner (``data_feed.runtime.spawner``) serves the body on ``/health`` and prints the
summary at stop; ``data-feed run`` shows the states in its live table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any, Protocol

import redis

from data_feed.cache.streams import (
    AGGREGATOR_WRITTEN_KEY,
    collector_state_key,
    configured_streams,
    health_key,
    stream_lag,
)
from data_feed.contracts.config import Config


class SupervisedRole(Protocol):
    """What the status needs of a supervised role (``spawner.Role``)."""

    name: str
    http_port: int
    started_at: float
    restarts: int

    @property
    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...


def written_totals(client: redis.Redis) -> dict[str, int]:
    """``{channel}:{rows|files|bytes}`` -> what the aggregators landed since the cache was created."""
    raw: dict[bytes, bytes] = client.hgetall(AGGREGATOR_WRITTEN_KEY)  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in raw.items()}


def run_summary(now: dict[str, int], at_start: dict[str, int]) -> dict[str, dict[str, int]]:
    """Rows, files and bytes each channel landed between two readings of ``written_totals``."""
    out: dict[str, dict[str, int]] = {}
    for key, value in now.items():
        channel, what = key.rsplit(":", 1)
        totals = out.setdefault(channel, {"rows": 0, "files": 0, "bytes": 0})
        totals[what] = value - at_start.get(key, 0)
    return out


def collector_states(client: redis.Redis, exchanges: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each exchange's collector state hash (``cache.STATE_*`` fields), as text."""
    out = {}
    for ex in exchanges:
        raw: dict[bytes, bytes] = client.hgetall(collector_state_key(ex))  # type: ignore[assignment]
        out[ex] = {k.decode(): v.decode() for k, v in raw.items()}
    return out


def reported_health(client: redis.Redis | None, names: list[str]) -> dict[str, dict[str, str]]:
    """What each role says of itself in its Redis health key (expired keys say nothing)."""
    if client is None:
        return {}
    try:
        raw = client.mget([health_key(name) for name in names])
    except (redis.RedisError, OSError):
        return {}
    return {name: json.loads(value) for name, value in zip(names, raw, strict=True) if value}


def health(cfg: Config, client: redis.Redis | None, roles: list[SupervisedRole], started: float,
           stopping: bool) -> dict[str, Any]:
    """The spawner's ``/health`` body: ok, degraded (with every reason) or stopping; each role; the lag."""
    now = time.time()
    reported = reported_health(client, [r.name for r in roles])
    rows = [
        {"role": r.name, "pid": r.pid, "alive": r.alive(), "http_port": r.http_port,
         "uptime_s": round(now - r.started_at, 1) if r.alive() else 0.0, "restarts": r.restarts,
         "status": reported.get(r.name, {}).get("status", "ok" if r.alive() else "down"),
         "reason": reported.get(r.name, {}).get("reason", "" if r.alive() else "not running")}
        for r in roles
    ]
    reasons = [f"{r['role']}: {r['reason'] or r['status']}" for r in rows if not r["alive"] or r["status"] != "ok"]
    lag: dict[str, int] = {}
    try:
        if client is not None:
            lag = {key: stream_lag(client, key) for key in configured_streams(cfg)}
    except (redis.RedisError, OSError) as err:
        reasons.append(f"redis: unreachable ({err})")
    status = "stopping" if stopping else ("degraded" if reasons else "ok")
    return {"status": status, "reasons": reasons, "pid": os.getpid(), "uptime_s": round(now - started, 1),
            "roles": rows, "lag": lag}
