"""ZMQ bus: the one place that names topics and endpoints and encodes bus batches.

Data flow: collectors (and the featurizer) PUB batches -> the ``bus`` role's XSUB/XPUB proxy
-> any number of SUB sockets (the featurizer, gateways, ad-hoc listeners). Topics are
``{channel}.{exchange}.{symbol}`` for market data and ``features.{interval}.{exchange}.{symbol}``
for signals; a payload is a msgpack list of row tuples, exactly the rows of a Redis stream
entry (``cache.encode_batch``), so live and cached batches decode alike.

The bus is for live consumers; the Redis streams are the durable path. ZMQ pub/sub never
blocks a publisher: a batch that meets a full queue is dropped. So every message carries a
third frame, the publisher's per-topic sequence number, and a ``Subscriber`` counts the
batches missing from the sequence (``data_feed_bus_dropped_batches_total``) and logs them
with their topic: loss on the bus is seen, never silent.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgpack
import zmq

from data_feed.contracts.config import FEATURES_CHANNEL, Config

LOG = logging.getLogger("data_feed.bus")

PUBLISH_SOCKET_NAME = "bus-publish.sock"  # in spawner.run_dir, when no endpoint is configured
SUBSCRIBE_SOCKET_NAME = "bus-subscribe.sock"
TOPIC_SEPARATOR = "."
PROXY_STOP_TIMEOUT_SECONDS = 5.0
PUBLISHER_LINGER_MS = 1000  # at close, how long queued batches may still go out
CONNECT_TIMEOUT_MS = 5000  # a new publisher waits this long at most for its connection to the proxy
SUBSCRIPTIONS_SETTLE_SECONDS = 0.1  # then this long for the proxy to pass it the subscriptions
SEQUENCE = struct.Struct(">QQQ")  # (publisher id, its start in ns, sequence number of this topic from it)


def endpoints(cfg: Config) -> tuple[str, str]:
    """(publish endpoint, subscribe endpoint): the proxy's XSUB and XPUB sides."""
    run_dir = Path(cfg.spawner.run_dir).resolve()
    publish = cfg.bus.publish_endpoint or f"ipc://{run_dir / PUBLISH_SOCKET_NAME}"
    subscribe = cfg.bus.subscribe_endpoint or f"ipc://{run_dir / SUBSCRIBE_SOCKET_NAME}"
    return publish, subscribe


# The gateway's topics for signal consumers (``access.gateway``, ``access.client``): everything for a
# consumer is under its own prefix c/<consumer>/: the features topics themselves, @<dataset>/<topic> (a
# dataset by name), preview/<topic> (previews) and control (JSON notes: denied, granted, revoked).
CONSUMER_PREFIX = "c/"
CONTROL = "control"
DATASET = "@"
PREVIEW = "preview/"


def consumer_topic(consumer: str, topic: str) -> bytes:
    return f"{CONSUMER_PREFIX}{consumer}/{topic}".encode()


def split_consumer_topic(topic: str) -> tuple[str, str] | None:
    """(consumer, rest) of ``c/<consumer>/<rest>``, or None."""
    if not topic.startswith(CONSUMER_PREFIX) or "/" not in topic[len(CONSUMER_PREFIX):]:
        return None
    consumer, rest = topic[len(CONSUMER_PREFIX):].split("/", 1)
    return consumer, rest


def market_topic(channel: str, exchange: str, symbol: str) -> bytes:
    return TOPIC_SEPARATOR.join((channel, exchange, symbol)).encode()


def features_topic(interval: str, exchange: str, symbol: str) -> bytes:
    return TOPIC_SEPARATOR.join((FEATURES_CHANNEL, interval, exchange, symbol)).encode()


CONFIRMED = "confirmed"  # confirmed.E.-: a collector's rows received up to a time are cached (bus.publish_on_receipt)
CONFIRMED_SYMBOL = "-"


def confirmed_topic(exchange: str) -> bytes:
    """Where a collector that publishes on receipt says, after each flush, up to which receive time its rows are
    cached (in Redis or its spill) or accounted as gaps rows: ``confirmed.EXCHANGE.-``."""
    return market_topic(CONFIRMED, exchange, CONFIRMED_SYMBOL)


PROVISIONAL_PREFIX = "open-"  # features.open-1s.E.S: the open 1s slice so far (featurizer.provisional_ms)


def provisional_topic(interval: str, exchange: str, symbol: str) -> bytes:
    """Where the featurizer publishes the open slice of ``interval`` as it stands: ``features.open-1s.E.S``. A
    subscription to ``features.1s.`` never sees it; ``features.open-`` is every provisional update."""
    return features_topic(PROVISIONAL_PREFIX + interval, exchange, symbol)


def channel_prefix(channel: str) -> bytes:
    """Subscription prefix for every exchange and symbol of a channel."""
    return (channel + TOPIC_SEPARATOR).encode()


def parse_market_topic(topic: bytes) -> tuple[str, str, str]:
    """(channel, exchange, symbol) of a market-data topic; symbols contain no dots."""
    parts = topic.decode().split(TOPIC_SEPARATOR)
    if len(parts) != 3:
        raise ValueError(f"not a market-data topic: {topic!r}")
    return parts[0], parts[1], parts[2]


def parse_features_topic(topic: bytes) -> tuple[str, str, str]:
    """(interval, exchange, symbol) of a features topic."""
    parts = topic.decode().split(TOPIC_SEPARATOR)
    if len(parts) != 4 or parts[0] != FEATURES_CHANNEL:
        raise ValueError(f"not a features topic: {topic!r}")
    return parts[1], parts[2], parts[3]


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    return msgpack.packb(rows, use_bin_type=True)  # type: ignore[no-any-return]


def decode_rows(payload: bytes) -> list[list[Any]]:
    rows: list[list[Any]] = msgpack.unpackb(payload, raw=False)
    return rows


def group_by_symbol(rows: Sequence[Sequence[Any]]) -> dict[str, Sequence[Sequence[Any]]]:
    """Rows of a cached batch (symbol first) split per symbol, keeping their order."""
    symbols = set(map(itemgetter(0), rows))
    if len(symbols) == 1:  # the common case on the collector's flush: no per-row Python work
        return {symbols.pop(): rows}
    groups: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        group = groups.get(row[0])
        if group is None:
            group = groups[row[0]] = []
        group.append(row)
    return dict(groups)


class Publisher:
    """A PUB socket connected to the proxy; numbers its messages per topic so subscribers see loss."""

    def __init__(self, endpoint: str, high_water_mark: int, ctx: zmq.Context[Any] | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, high_water_mark)
        self.sock.setsockopt(zmq.LINGER, PUBLISHER_LINGER_MS)
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.sock.connect(endpoint)
        self._await_handshake(monitor, endpoint)
        self.publisher_id = (os.getpid() << 20) ^ (id(self) & 0xFFFFF)
        self.started_ns = time.time_ns()
        self.sequence: dict[bytes, int] = {}

    def _await_handshake(self, monitor: zmq.Socket[Any], endpoint: str) -> None:
        """Until the proxy's end of the connection is up and its subscriptions had a moment to arrive: a PUB
        drops what it sends before (ZMQ's slow joiner), and a subscriber would count those batches lost."""
        try:
            if monitor.poll(CONNECT_TIMEOUT_MS):
                monitor.recv_multipart()
                time.sleep(SUBSCRIPTIONS_SETTLE_SECONDS)
            else:
                LOG.warning("bus: no connection to %s after %d ms; publishing anyway (subscribers count what is "
                            "lost)", endpoint, CONNECT_TIMEOUT_MS)
        finally:
            self.sock.disable_monitor()
            monitor.close(linger=0)

    def publish(self, topic: bytes, payload: bytes) -> None:
        seq = self.sequence.get(topic, 0) + 1
        self.sequence[topic] = seq
        self.sock.send_multipart([topic, payload, SEQUENCE.pack(self.publisher_id, self.started_ns, seq)])

    def publish_batches(self, exchange: str, batches: dict[str, list[tuple[Any, ...]]]) -> None:
        """Publish each channel's rows as one batch per symbol (the collector's flush)."""
        for channel, rows in batches.items():
            for symbol, group in group_by_symbol(rows).items():
                self.publish(market_topic(channel, exchange, symbol), encode_rows(group))

    def close(self) -> None:
        self.sock.close()


class Subscriber:
    """A SUB socket on the proxy's XPUB side; yields batches and counts those missing from a sequence."""

    def __init__(self, endpoint: str, prefixes: Iterable[bytes], high_water_mark: int,
                 ctx: zmq.Context[Any] | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, high_water_mark)
        self.sock.connect(endpoint)
        for prefix in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, prefix)
        self.last: dict[tuple[bytes, int], int] = {}
        self.missing = 0
        self.started_ns = time.time_ns()  # a publisher started after this whose first batch is not 1 lost some
        self.on_loss: Callable[[bytes, int], None] | None = None  # (topic, batches lost): e.g. mark slices
        self.last_sequence = b""  # the sequence frame of the batch recv() returned last (the gateway passes it on)

    def recv(self, timeout_ms: int) -> tuple[bytes, bytes] | None:
        """(topic, payload) of the next batch, or None after ``timeout_ms`` without one."""
        if not self.sock.poll(timeout_ms):
            return None
        frames = self.sock.recv_multipart()
        if len(frames) != 3:
            raise ValueError(f"bus message with {len(frames)} frames, expected topic, payload, sequence")
        topic, payload, seq_frame = frames
        self._check_sequence(topic, *SEQUENCE.unpack(seq_frame))
        self.last_sequence = seq_frame
        return topic, payload

    def _check_sequence(self, topic: bytes, publisher: int, publisher_started_ns: int, seq: int) -> None:
        """Batches missing from a publisher's sequence are lost; so are the first ones of a publisher that
        started after this subscriber (sent before its connection to the proxy had the subscriptions)."""
        from data_feed.observability import metrics

        key = (topic, publisher)
        last = self.last.get(key)
        self.last[key] = seq
        if last is None:
            last = 0 if publisher_started_ns > self.started_ns else seq - 1
        if seq == last + 1:
            return
        lost = seq - last - 1
        self.missing += lost
        metrics.BUS_DROPPED.labels(topic.decode().split(TOPIC_SEPARATOR)[0]).inc(lost)
        LOG.error("topic=%s: %d bus batches lost before this subscriber read them (queue full); %d lost so far",
                  topic.decode(), lost, self.missing)
        if self.on_loss is not None:
            self.on_loss(topic, lost)

    def close(self) -> None:
        self.sock.close(linger=0)


class Proxy:
    """The bus itself: XSUB (publishers connect) <-> XPUB (subscribers connect), in a thread of its process."""

    def __init__(self, cfg: Config) -> None:
        self.publish_endpoint, self.subscribe_endpoint = endpoints(cfg)
        self.high_water_mark = cfg.bus.high_water_mark
        self.ctx: zmq.Context[Any] = zmq.Context()
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._error: Exception | None = None

    def start(self) -> Proxy:
        self._thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)
        self._thread.start()
        self._bound.wait(PROXY_STOP_TIMEOUT_SECONDS)
        if self._error is not None:
            raise RuntimeError(f"bus proxy could not bind {self.publish_endpoint} / {self.subscribe_endpoint}: "
                               f"{self._error}") from self._error
        LOG.info("bus: publish to %s, subscribe at %s", self.publish_endpoint, self.subscribe_endpoint)
        return self

    def _run(self) -> None:
        xsub = self.ctx.socket(zmq.XSUB)
        xpub = self.ctx.socket(zmq.XPUB)
        try:
            for sock in (xsub, xpub):
                sock.setsockopt(zmq.RCVHWM, self.high_water_mark)
                sock.setsockopt(zmq.SNDHWM, self.high_water_mark)
                sock.setsockopt(zmq.LINGER, 0)
            xsub.bind(self.publish_endpoint)
            xpub.bind(self.subscribe_endpoint)
        except zmq.ZMQError as err:
            self._error = err
            self._close(xsub, xpub)
            return
        self._bound.set()
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:  # stop(): terminating the context is how a zmq.proxy ends
            pass
        finally:
            self._close(xsub, xpub)

    def _close(self, *socks: zmq.Socket[Any]) -> None:
        for sock in socks:
            sock.close(linger=0)
        self._bound.set()

    def run_until_stopped(self, status: Any = None) -> None:
        """The ``bus`` role: the proxy until SIGTERM/SIGINT (``status``, a ``status.RoleStatus``, says ready
        once both sides are bound)."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        if status is not None:
            status.ready()
        stop.wait()
        LOG.info("bus: stop requested; closing the proxy")
        self.stop()

    def stop(self) -> None:
        if self._thread is None:
            return
        self.ctx.term()  # returns once the proxy thread has closed its sockets
        self._thread.join(PROXY_STOP_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            LOG.error("bus proxy did not stop within %.0fs", PROXY_STOP_TIMEOUT_SECONDS)
        self._thread = None
