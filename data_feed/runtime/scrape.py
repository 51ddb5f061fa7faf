"""Metrics the spawner reads from Redis when ``/metrics`` is scraped: how old the oldest entry the aggregator
has not acknowledged is, per stream, and how old each symbol's newest cached record is.

Read at scrape time, not reported by the roles, so that they keep growing while the aggregator or a
collector is stopped, stuck or dead (a role's own gauge would freeze at its last value). Entry ids carry
no time (a writer's ids keep the millisecond of its start, ``data_feed.cache.streams``), so an entry's age is
the receive time of its first record. A scrape costs two pipelined round trips for the streams and
one ``HGETALL`` per exchange.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from data_feed.cache.streams import (
    CONSUMER_GROUP,
    ENTRY_PAYLOAD_FIELD,
    collector_state_key,
    configured_streams,
    mark_field,
    parse_stream_key,
)
from data_feed.contracts.config import Config
from data_feed.contracts.schemas import batch_columns
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.scrape")

REDIS_TIMEOUT_SECONDS = 2.0  # a scrape must answer even when Redis does not
RECV_COLUMN = "ts_recv"


class RedisAges(Collector):
    """A prometheus-client collector over the pipeline's Redis (``started``: the run's start, the age's
    origin for a symbol with nothing cached yet)."""

    def __init__(self, cfg: Config, redis_url: str, started: float) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self.streams = configured_streams(cfg)
        self.symbols = {ex: {name: ch.symbols for name, ch in exc.channels().items()}
                        for ex, exc in cfg.exchanges.items()}
        self.started = started
        self._failing = False

    def collect(self) -> Iterable[GaugeMetricFamily]:
        ages, cache = metrics.STREAM_OLDEST_AGE.family(), metrics.SYMBOL_CACHE_AGE.family()
        now = time.time()
        try:
            for key, age in self.stream_ages(now).items():
                ages.add_metric([key], age)
            for (exchange, channel, symbol), age in self.cache_ages(now).items():
                cache.add_metric([exchange, channel, symbol], age)
            self._failing = False
        except (redis.RedisError, OSError) as err:
            if not self._failing:
                LOG.warning("/metrics: Redis unreachable (%s); stream and cache ages left out until it answers", err)
            self._failing = True
        return [ages, cache]

    def stream_ages(self, now: float) -> dict[str, float]:
        """Per stream: now minus the receive time of its oldest unacknowledged entry; 0 when there is none."""
        pipe = self.client.pipeline(transaction=False)
        for key in self.streams:
            pipe.xpending(key, CONSUMER_GROUP)
            pipe.xinfo_groups(key)
        replies = pipe.execute(raise_on_error=False)
        pipe = self.client.pipeline(transaction=False)
        for i, key in enumerate(self.streams):
            pipe.xrange(key, min=_oldest_unacked(replies[2 * i], replies[2 * i + 1]), max="+", count=1)
        out = {}
        for key, found in zip(self.streams, pipe.execute(raise_on_error=False), strict=True):
            recv = None if isinstance(found, Exception) or not found else _first_recv(key, found[0][1])
            out[key] = 0.0 if recv is None else max(0.0, now - recv)
        return out

    def cache_ages(self, now: float) -> dict[tuple[str, str, str], float]:
        """Per configured (exchange, channel, symbol): now minus the receive time of the newest cached record
        (the collector's mark), or minus the run's start when there is none."""
        from data_feed.cache.streams import Mark

        pipe = self.client.pipeline(transaction=False)
        for exchange in self.symbols:
            pipe.hgetall(collector_state_key(exchange))
        out = {}
        for (exchange, channels), state in zip(self.symbols.items(), pipe.execute(), strict=True):
            for channel, symbols in channels.items():
                for symbol in symbols:
                    raw = state.get(mark_field(channel, symbol).encode())
                    recv = Mark.unpack(raw.decode()).ts_recv if raw else self.started
                    out[(exchange, channel, symbol)] = max(0.0, now - recv)
        return out


def _oldest_unacked(pending: Any, groups: Any) -> str:
    """The XRANGE start of a stream's oldest unacknowledged entry: the oldest pending one, else the first
    after the group's last delivered one (the whole stream when there is no group yet)."""
    if isinstance(pending, dict) and pending.get("pending"):
        return _text(pending["min"])
    for group in groups if isinstance(groups, list) else []:
        if _text(group["name"]) == CONSUMER_GROUP:
            return "(" + _text(group["last-delivered-id"])
    return "-"


def _first_recv(key: str, fields: dict[bytes, bytes]) -> float | None:
    """Receive time of an entry's first record, unpacking nothing else of the batch."""
    column = batch_columns(parse_stream_key(key)[1]).index(RECV_COLUMN)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(fields.get(ENTRY_PAYLOAD_FIELD, b""))
    try:
        if unpacker.read_array_header() == 0:
            return None
        return float(unpacker.unpack()[column])
    except (msgpack.OutOfData, ValueError, TypeError, IndexError) as err:
        LOG.warning("stream %s: an entry's first record has no receive time (%s)", key, err)
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
