"""Signal consumers' client: features from the gateway, over CURVE, as typed slices.

Data flow: gateway XPUB (``c/<consumer>/features.I.E.S``) -> this SUB socket -> ``FeatureSlice``.

A ZMQ SUB does not resend its subscriptions to a publisher that restarted (libzmq 4.3.5), so the client
watches its socket (``EVENT_DISCONNECTED``) and, on a disconnect, makes a new socket, connects and
subscribes again by itself. What the gateway refuses arrives on ``c/<consumer>/control``: a denial raises
``AccessDenied`` from the iterator, or goes to ``on_control`` when one is given.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from data_feed.bus.wire import CONTROL, DATASET, PREVIEW, SEQUENCE, TOPIC_SEPARATOR, consumer_topic
from data_feed.contracts.config import FEATURES_CHANNEL
from data_feed.contracts.schemas import NS_PER_SECOND, batch_columns

LOG = logging.getLogger("data_feed.client")

COLUMNS = batch_columns(FEATURES_CHANNEL)  # symbol, ts_event, ts_recv, interval, statistics..., complete
VALUE_NAMES = COLUMNS[4:-1]
WILDCARDS = "*?["
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.25, 5.0  # after a refused handshake (libzmq does not retry those)
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | \
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class AccessDenied(RuntimeError):
    """The gateway refused a subscription (or revoked a grant); ``message`` is its control message."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('type')}: {message.get('subscription') or message.get('dataset')}: "
                         f"{message.get('reason')}")
        self.message = message


@dataclass(frozen=True)
class FeatureSlice:
    """One closed feature slice; times are int64 ns UTC, statistics by name (``slice.vwap``, ``values``)."""

    exchange: str
    symbol: str
    interval: str
    ts_event: int  # slice start, exchange time
    ts_recv: int  # when the featurizer closed it
    complete: bool
    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


def decode_slices(topic: str, payload: bytes) -> list[FeatureSlice]:
    """A bus features batch (``featurizer.features.rows``, msgpack) as slices."""
    _, interval, exchange, _symbol = topic.split(TOPIC_SEPARATOR)
    out = []
    for row in msgpack.unpackb(payload, raw=False):
        symbol, start, recv, row_interval, *vals, complete = row
        out.append(FeatureSlice(exchange, symbol, row_interval or interval, round(start * NS_PER_SECOND),
                                round(recv * NS_PER_SECOND), bool(complete), dict(zip(VALUE_NAMES, vals, strict=True))))
    return out


def subscription_prefix(pattern: str) -> str:
    """The ZMQ prefix of a topic pattern: up to its first wildcard (the rest is matched here)."""
    cut = min((i for i, ch in enumerate(pattern) if ch in WILDCARDS), default=len(pattern))
    return pattern[:cut]


class Client:
    """``Client(endpoint, server_public_key, public_key, secret_key, consumer)``; ``subscribe``; iterate."""

    def __init__(self, endpoint: str, server_public_key: str | bytes, public_key: str | bytes,
                 secret_key: str | bytes, consumer: str, on_control: Callable[[dict[str, Any]], None] | None = None,
                 ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self.keys = tuple(k.encode() if isinstance(k, str) else k for k in (server_public_key, public_key, secret_key))
        self.consumer = consumer
        self.on_control = on_control
        self.ctx = ctx or zmq.Context.instance()
        self.patterns: list[str] = []
        self.reconnects = 0
        self.missing = 0  # batches missing from a publisher's sequence (loss between bus and here)
        self.control: list[dict[str, Any]] = []
        self._last: dict[tuple[str, int], int] = {}
        self.handshake_failures = 0
        self._retry_in = RETRY_FIRST_SECONDS
        self._retry_at: float | None = None
        self.sock, self.monitor = self._connect()

    def _prefix(self, rest: str) -> bytes:
        return consumer_topic(self.consumer, rest)

    def _connect(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        sock: zmq.Socket[Any] = self.ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self.keys
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED)
        self.connected = False
        sock.connect(self.endpoint)
        sock.setsockopt(zmq.SUBSCRIBE, self._prefix(CONTROL))
        for pattern in self.patterns:
            sock.setsockopt(zmq.SUBSCRIBE, self._prefix(subscription_prefix(pattern)))
        return sock, monitor

    def subscribe(self, dataset_or_pattern: str) -> None:
        """Features of a dataset by name (``binance-1s``: what of it is granted), or whose topic matches a
        pattern (``features.1s.BINANCE.*``; a plain prefix also works)."""
        pattern = dataset_or_pattern if TOPIC_SEPARATOR in dataset_or_pattern else f"{DATASET}{dataset_or_pattern}/"
        self.patterns.append(pattern)
        self.sock.setsockopt(zmq.SUBSCRIBE, self._prefix(subscription_prefix(pattern)))

    def subscribe_preview(self, pattern: str) -> None:
        """The declared preview of datasets covering ``pattern`` (down-sampled, delayed, maybe normalized);
        its batches come with topics ``preview/features....``."""
        self.subscribe(PREVIEW + pattern)

    def _reconnect(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
        self.sock, self.monitor = self._connect()
        self._retry_at = None
        self.reconnects += 1
        LOG.warning("client %s: disconnected from %s; reconnected and subscribed again (%d so far)",
                    self.consumer, self.endpoint, self.reconnects)

    def batches(self, timeout: float) -> Iterator[tuple[str, list[FeatureSlice]]]:
        """(topic, slices) of each batch until ``timeout`` seconds pass without one."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if self._retry_at is not None:
                left = min(left, max(0.0, self._retry_at - time.monotonic()))
            ready = dict(poller.poll(max(1, int(left * 1000))))
            due = self._retry_at is not None and time.monotonic() >= self._retry_at
            if due or (self.monitor in ready and self._lost_connection()):
                self._reconnect()
                poller = zmq.Poller()
                poller.register(self.sock, zmq.POLLIN)
                poller.register(self.monitor, zmq.POLLIN)
                continue
            if self.sock in ready:
                got = self._message(self.sock.recv_multipart())
                if got is not None:
                    deadline = time.monotonic() + timeout
                    yield got

    def _lost_connection(self) -> bool:
        """Whether the monitor says an established connection went away. A refused handshake (a key the
        gateway does not know yet, or any more) is tried again later, with a backoff."""
        event = recv_monitor_message(self.monitor)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected = True
            self._retry_in, self._retry_at = RETRY_FIRST_SECONDS, None
            return False
        if event & HANDSHAKE_FAILED:
            self.handshake_failures += 1
            self._retry_at = time.monotonic() + self._retry_in
            self._retry_in = min(self._retry_in * 2, RETRY_MAX_SECONDS)
            LOG.warning("client %s: handshake with %s refused; trying again in %.2fs", self.consumer,
                        self.endpoint, self._retry_at - time.monotonic())
            return False
        return bool(event == zmq.EVENT_DISCONNECTED and self.connected)

    def __iter__(self) -> Iterator[FeatureSlice]:
        for _, slices in self.batches(float("inf")):
            yield from slices

    def _message(self, frames: list[bytes]) -> tuple[str, list[FeatureSlice]] | None:
        topic = frames[0].decode().split("/", 2)[2]
        if topic == CONTROL:
            self._on_control(json.loads(frames[1]))
            return None
        if self.patterns and not any(fnmatchcase(topic, p) or topic.startswith(p) for p in self.patterns):
            return None
        if len(frames) == 3:
            self._check_sequence(topic, frames[2])
        bus_topic = topic.removeprefix(PREVIEW).split("/", 1)[1] if topic.startswith(DATASET) else \
            topic.removeprefix(PREVIEW)
        return topic, decode_slices(bus_topic, frames[1])

    def _check_sequence(self, topic: str, frame: bytes) -> None:
        publisher, _started, seq = SEQUENCE.unpack(frame)
        last = self._last.get((topic, publisher))
        self._last[(topic, publisher)] = seq
        if last is not None and seq != last + 1:
            self.missing += seq - last - 1

    def _on_control(self, message: dict[str, Any]) -> None:
        self.control.append(message)
        if self.on_control is not None:
            self.on_control(message)
        elif message.get("type") in ("denied", "revoked"):
            raise AccessDenied(message)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)
