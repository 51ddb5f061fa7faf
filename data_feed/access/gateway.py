"""Gateway role: the bus's features re-published to the consumers the permission table entitles.

Data flow: featurizer -> bus (``features.`` topics) -> SUB here -> one copy per entitled consumer ->
XPUB (CURVE server, ZAP-authenticated, ``data_feed.access.zap``) -> ``data_feed.access.client``.

How access is enforced, step by step:

1. A handshake succeeds only for an enabled consumer's public key; the ZAP handler sets the connection's
   User-Id to the consumer's name.
2. A consumer subscribes under its own prefix: ``c/<consumer>/features....`` by topic, ``c/<consumer>/@<dataset>/``
   by dataset name, ``c/<consumer>/preview/features....`` for previews (``access.preview``), and
   ``c/<consumer>/control``.
   With ``XPUB_MANUAL`` every subscription frame comes here first; its User-Id is read and a subscription
   outside the consumer's own prefix is refused (never applied). One inside it is applied: only the gateway
   publishes under that prefix, and only what is granted.
3. Each bus batch on ``features.I.E.S`` is sent as ``c/<consumer>/features.I.E.S`` once per consumer that
   subscribed to a prefix of it and holds an effective grant covering it (``access.patterns.covered``).
   So narrowing a subscription to the grant, and stopping data on revocation, never depends on dropping a
   connection (libzmq cannot drop one peer of a socket): the next batch is simply not copied.
4. The permission table is re-read every ``gateway.refresh_seconds`` (in a thread: SQL never blocks the
   loop); entitlements are recomputed at each refresh, so a revocation, an expiry or a disabled consumer
   stops its data within ``refresh_seconds`` plus one poll.
5. Whatever is refused is told on ``c/<consumer>/control`` as JSON (what and why), counted and logged.

Unsubscriptions made by libzmq when a peer disconnects carry no User-Id; the consumer is read from the
topic's prefix and the gateway's own (consumer, topic) counts are kept in step.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import zmq
from sqlalchemy import Engine
from zmq.utils.monitor import recv_monitor_message

from data_feed.access import store
from data_feed.access.patterns import covered, may_overlap
from data_feed.access.preview import Previewer, PreviewSpec, spec_for, specs
from data_feed.access.store import Grant, Snapshot
from data_feed.access.zap import Refresher, ZapHandler, server_keys
from data_feed.bus.wire import (
    CONSUMER_PREFIX,
    CONTROL,
    DATASET,
    PREVIEW,
    Subscriber,
    channel_prefix,
    consumer_topic,
    endpoints,
    split_consumer_topic,
)
from data_feed.contracts.config import FEATURES_CHANNEL, Config
from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.gateway")

POLL_MS = 20
START_TIMEOUT_SECONDS = 10.0
SUBSCRIBE, UNSUBSCRIBE = 1, 0
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class Gateway:
    """The role: bind, serve until ``stop()``; ``start()`` runs it in a thread (tests, the bench)."""

    def __init__(self, cfg: Config, engine: Engine | None = None) -> None:
        self.cfg = cfg.gateway
        self.engine = engine or store_engine(cfg)
        self.bus_endpoint = endpoints(cfg)[1]
        self.bus_hwm = cfg.bus.high_water_mark
        self.public_key, self.secret_key = server_keys(cfg.gateway_key_file())
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.subscriptions: dict[str, Counter[str]] = {}  # consumer -> applied prefix (after c/<consumer>/) -> n
        self.effective: dict[str, tuple[Grant, ...]] = {}
        self.routes: dict[bytes, list[tuple[str, bytes, int | None]]] = {}
        self.preview_routes: dict[str, list[bytes]] = {}  # bus topic -> the preview topics of its subscribers
        self.previews: list[PreviewSpec] = []
        self.previewer = Previewer()
        self.last_delivery: dict[str, float] = {}
        self.delivered: Counter[str] = Counter()  # not yet in the metric
        self.deliveries: Counter[str] = Counter()  # since the start, per consumer
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.zap: ZapHandler | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Gateway:
        self._thread = threading.Thread(target=self._run_catching, name="gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._error is not None:
            raise RuntimeError(f"gateway did not start on {self.cfg.endpoint}: {self._error}")
        return self

    def _run_catching(self) -> None:
        try:
            self.run()
        except BaseException as err:
            self._error = err
            self._ready.set()
            raise

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def run_until_stopped(self, status: Any = None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.run(status)

    def run(self, status: Any = None) -> None:
        refresher = Refresher(self.engine, self.cfg.refresh_seconds).start()
        zap = self.zap = ZapHandler(self.ctx, self.cfg.zap_domain, lambda: refresher.current).start()
        xpub = self._bind()
        monitor = xpub.get_monitor_socket(HANDSHAKE_FAILED)
        bus = Subscriber(self.bus_endpoint, [channel_prefix(FEATURES_CHANNEL)], self.bus_hwm, self.ctx)
        LOG.info("gateway: serving %s (CURVE, ZAP domain %s) from the bus at %s", self.cfg.endpoint,
                 self.cfg.zap_domain, self.bus_endpoint)
        self._ready.set()
        if status is not None:
            status.ready()
        try:
            self._loop(xpub, bus, refresher, monitor)
        finally:
            LOG.info("gateway: stopping")
            xpub.disable_monitor()
            monitor.close(linger=0)
            bus.close()
            xpub.close(linger=0)
            zap.stop()
            refresher.stop()
            self.ctx.term()

    def _bind(self) -> zmq.Socket[Any]:
        xpub: zmq.Socket[Any] = self.ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.SNDHWM, self.cfg.high_water_mark)
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.curve_server = True
        xpub.curve_secretkey = self.secret_key
        xpub.zap_domain = self.cfg.zap_domain.encode()
        xpub.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        xpub.bind(self.cfg.endpoint)
        return xpub

    def _loop(self, xpub: zmq.Socket[Any], bus: Subscriber, refresher: Refresher, monitor: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        for sock in (xpub, bus.sock, monitor):
            poller.register(sock, zmq.POLLIN)
        snap, checked = refresher.current, time.monotonic()
        self._entitle(xpub, snap)
        while not self._stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            # Entitlements first: the ZAP handler admitted a subscriber from ``refresher.current``, so its
            # subscription is decided on that snapshot too (a consumer made a moment ago is not told "denied").
            if refresher.current is not snap or time.monotonic() - checked > self.cfg.refresh_seconds:
                snap, checked = refresher.current, time.monotonic()
                self._entitle(xpub, snap)
                self.flush_metrics()
            if xpub in ready:
                self._subscription(xpub, xpub.recv(copy=False), refresher)
            if monitor in ready:
                self._handshake_failed(recv_monitor_message(monitor))
            if bus.sock in ready:
                self._drain_bus(xpub, bus)
            self._send_previews(xpub)

    def _handshake_failed(self, event: Any) -> None:
        """CURVE failures the ZAP handler never saw (a client with the wrong server key, garbage); the ZAP
        handler counts its own refusals."""
        if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            metrics.GATEWAY_HANDSHAKE_FAILURES.labels("protocol").inc()
            LOG.warning("gateway: handshake failed from %s (%s)", event.get("endpoint", b"").decode(errors="replace"),
                        zmq.Event(event["event"]).name)

    # -- subscriptions -------------------------------------------------------------------------------------

    def _subscription(self, xpub: zmq.Socket[Any], frame: zmq.Frame, refresher: Refresher) -> None:
        data = frame.bytes
        if not data or data[0] not in (SUBSCRIBE, UNSUBSCRIBE):
            return
        topic = data[1:].decode(errors="replace")
        try:
            user: str | None = str(frame.get("User-Id")) or None
        except zmq.ZMQError:  # libzmq's own unsubscriptions at a disconnect carry no metadata
            user = None
        parsed = split_consumer_topic(topic)
        if data[0] == UNSUBSCRIBE:
            self._unsubscribe(xpub, parsed, live=user is not None)
            return
        if user is None or parsed is None or parsed[0] != user:
            self._deny(xpub, user, topic, "subscriptions must be under the consumer's own prefix "
                       f"{CONSUMER_PREFIX}{user}/")
            return
        xpub.setsockopt(zmq.SUBSCRIBE, data[1:])  # decided before the next receive: it applies to this peer
        refresher.seen.add(user)
        self.subscriptions.setdefault(user, Counter())[parsed[1]] += 1
        self._invalidate()
        metrics.GATEWAY_CONNECTED.set(len(self.subscriptions))
        if parsed[1] != CONTROL:
            self._tell_subscription(xpub, user, parsed[1])

    def _invalidate(self) -> None:
        self.routes.clear()
        self.preview_routes.clear()

    def _tell_subscription(self, xpub: zmq.Socket[Any], user: str, prefix: str) -> None:
        if prefix.startswith(PREVIEW):
            self._tell_preview(xpub, user, prefix)
            return
        if prefix.startswith(DATASET):
            self._tell_dataset(xpub, user, prefix)
            return
        grants = [g for g in self.effective.get(user, ()) if may_overlap(prefix, g.pattern)
                  and may_overlap(prefix, g.scope)]
        if not grants:
            self._deny(xpub, user, prefix, "no GRANTED, unexpired permission of this consumer covers it")
            return
        scopes = sorted({f"{g.dataset}:{g.scope}" for g in grants})
        self._control(xpub, user, {"type": "subscribed", "subscription": prefix, "narrowed_to": scopes})

    def _tell_dataset(self, xpub: zmq.Socket[Any], user: str, prefix: str) -> None:
        dataset = prefix[1:-1]
        scopes = sorted({g.scope for g in self.effective.get(user, ()) if g.dataset == dataset})
        if not prefix.endswith("/") or not scopes:
            self._deny(xpub, user, prefix, f"dataset {dataset!r} is not granted to this consumer (GRANTED, unexpired)")
            return
        self._control(xpub, user, {"type": "subscribed", "subscription": prefix, "narrowed_to": scopes})

    def _tell_preview(self, xpub: zmq.Socket[Any], user: str, prefix: str) -> None:
        offered = [p for p in self.previews if may_overlap(prefix[len(PREVIEW):], p.pattern)]
        if not offered:
            self._deny(xpub, user, prefix, "no dataset declares a preview covering it")
            return
        self._control(xpub, user, {"type": "subscribed", "subscription": prefix, "previews": [
            {"dataset": p.dataset, "interval_seconds": p.interval_seconds, "delay_seconds": p.delay_seconds,
             "normalized": p.normalize} for p in offered]})

    def _unsubscribe(self, xpub: zmq.Socket[Any], parsed: tuple[str, str] | None, live: bool) -> None:
        if parsed is None:
            return
        consumer, prefix = parsed
        counts = self.subscriptions.get(consumer)
        if counts is None or counts[prefix] <= 0:
            return
        if live:
            xpub.setsockopt(zmq.UNSUBSCRIBE, consumer_topic(consumer, prefix))
        counts[prefix] -= 1
        if counts[prefix] == 0:
            del counts[prefix]
        if not counts:
            del self.subscriptions[consumer]
        self._invalidate()
        metrics.GATEWAY_CONNECTED.set(len(self.subscriptions))

    def _deny(self, xpub: zmq.Socket[Any], user: str | None, what: str, why: str) -> None:
        metrics.GATEWAY_DENIALS.labels(user or "").inc()
        LOG.warning("gateway: consumer=%s subscription %r refused: %s", user, what, why)
        if user is not None:
            self._control(xpub, user, {"type": "denied", "subscription": what, "reason": why})

    def _control(self, xpub: zmq.Socket[Any], user: str, message: dict[str, Any]) -> None:
        message = {"consumer": user, "at": datetime.now(UTC).isoformat(), **message}
        xpub.send_multipart([consumer_topic(user, CONTROL), json.dumps(message).encode()])

    # -- entitlements --------------------------------------------------------------------------------------

    def _entitle(self, xpub: zmq.Socket[Any], snap: Snapshot) -> None:
        """Recompute who gets what now; tell and count each entitlement lost since the last time."""
        at = datetime.now(UTC)
        previews = specs(snap.datasets)
        if previews != self.previews:
            self.previews = previews
            self._invalidate()
        effective = {name: tuple(snap.grants_of(name, at)) for name in snap.known}
        if effective == self.effective:
            return
        for name, before in self.effective.items():
            kept = {g.dataset for g in effective.get(name, ())}  # a grant changed in place (its expiry) is kept
            for grant in before:
                if grant.dataset not in kept:
                    self._revoked(xpub, snap, name, grant, at)
        for name in self.subscriptions.keys() & effective.keys():
            had = {g.dataset for g in self.effective.get(name, ())}
            for grant in (g for g in effective[name] if g.dataset not in had):
                self._control(xpub, name, {"type": "granted", "dataset": grant.dataset, "scope": grant.scope})
        self.effective = effective
        self._invalidate()

    def _revoked(self, xpub: zmq.Socket[Any], snap: Snapshot, name: str, grant: Grant, at: datetime) -> None:
        if name in snap.disabled:
            why, since = "consumer disabled", snap.changed_at.get(name, at)
        elif grant.expires_at is not None and grant.expires_at <= at:
            why, since = "grant expired", grant.expires_at
        else:
            why, since = "grant revoked", snap.permission_changed.get((name, grant.dataset), at)
        last = self.last_delivery.get(name)
        lag = max(0.0, last - since.timestamp()) if last is not None else 0.0
        metrics.GATEWAY_REVOCATIONS.labels(name).inc()
        metrics.GATEWAY_REVOCATION_LAG.observe(lag)
        LOG.info("gateway: consumer=%s dataset=%s: %s; last delivery %.3fs after it", name, grant.dataset, why, lag)
        self._control(xpub, name, {"type": "revoked", "dataset": grant.dataset, "scope": grant.scope, "reason": why})

    def _route(self, topic: bytes) -> list[tuple[str, bytes, int | None]]:
        """(consumer, its topic, deadline ns or None) for every consumer subscribed to and entitled to it: by
        topic prefix (``c/<consumer>/features...``) or by dataset name (``c/<consumer>/@<dataset>/``)."""
        text = topic.decode()
        out = []
        for name, prefixes in self.subscriptions.items():
            grants = [g for g in self.effective.get(name, ()) if covered(text, g.pattern, g.scope)]
            if not grants:
                continue
            if any(text.startswith(p) for p in prefixes if _is_topic_prefix(p)):
                out.append((name, consumer_topic(name, text), _deadline(grants)))
            for p in prefixes:
                if p.startswith(DATASET) and (mine := [g for g in grants if g.dataset == p[1:-1]]):
                    out.append((name, consumer_topic(name, p + text), _deadline(mine)))
        self.routes[topic] = out
        return out

    def _preview_route(self, topic: str) -> list[bytes]:
        out = [consumer_topic(name, PREVIEW + topic) for name, prefixes in self.subscriptions.items()
               if any(p.startswith(PREVIEW) and topic.startswith(p[len(PREVIEW):]) for p in prefixes)]
        self.preview_routes[topic] = out
        return out

    def _send_previews(self, xpub: zmq.Socket[Any]) -> None:
        for topic, body in self.previewer.due(time.time()):
            for out in self.preview_routes.get(topic) or self._preview_route(topic):
                xpub.send_multipart([out, body])

    # -- fan-out -------------------------------------------------------------------------------------------

    def _drain_bus(self, xpub: zmq.Socket[Any], bus: Subscriber) -> None:
        for _ in range(1000):  # then back to subscriptions and refreshes
            got = bus.recv(0)
            if got is None:
                return
            topic, payload = got
            self._fan_out(xpub, topic, payload, bus.last_sequence)

    def _fan_out(self, xpub: zmq.Socket[Any], topic: bytes, payload: bytes, seq: bytes) -> None:
        if self.previews:
            self._offer_preview(topic.decode(), payload)
        routes = self.routes.get(topic)
        if routes is None:
            routes = self._route(topic)
        if not routes:
            return
        now_ns = time.time_ns()
        for name, out, deadline in routes:
            if deadline is not None and now_ns >= deadline:
                continue
            xpub.send_multipart([out, payload, seq], copy=False)
            self.delivered[name] += 1
            self.deliveries[name] += 1
            self.last_delivery[name] = now_ns / NS_PER_SECOND

    def _offer_preview(self, topic: str, payload: bytes) -> None:
        routes = self.preview_routes.get(topic)
        if routes is None:
            routes = self._preview_route(topic)
        spec = spec_for(topic, self.previews) if routes else None
        if spec is not None:
            self.previewer.offer(topic, payload, spec, time.time())

    def flush_metrics(self) -> None:
        """Deliveries per consumer into the counter: one inc per consumer and refresh, not per batch."""
        for name, n in self.delivered.items():
            metrics.GATEWAY_DELIVERIES.labels(name).inc(n)
        self.delivered.clear()


def _is_topic_prefix(prefix: str) -> bool:
    return prefix != CONTROL and not prefix.startswith((PREVIEW, DATASET))


def _deadline(grants: list[Grant]) -> int | None:
    """Until when (ns) any of ``grants`` lasts; None for ever."""
    expiries = [g.expires_at for g in grants]
    return None if None in expiries else max(int(e.timestamp() * NS_PER_SECOND) for e in expiries if e)


def store_engine(cfg: Config) -> Engine:
    from data_feed.access.db import make_engine

    engine = make_engine(cfg.database.url)
    store.migrate(engine)
    return engine


def run(cfg: Config, status: Any) -> None:
    """The ``gateway`` role (``data-feed role gateway``)."""
    Gateway(cfg).run_until_stopped(status)
