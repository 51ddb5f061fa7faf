"""A real bus proxy, a publisher sending feature batches exactly as the featurizer encodes them, the gateway, and
consumers with their keys."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from data_feed.access import store
from data_feed.access.client import Client
from data_feed.access.gateway import Gateway
from data_feed.bus.wire import Proxy, Publisher, encode_rows, endpoints, features_topic
from data_feed.cache.redis_server import free_port
from data_feed.contracts.config import Config
from data_feed.contracts.schemas import NS_PER_SECOND
from featurizer._kernels import SLICE_DTYPE
from featurizer.features import rows
from tests.conftest import make_config
from tests.harness import wait_for

TOPICS = [("BINANCE", "BTC-USDT"), ("BINANCE", "ETH-USDT"), ("KRAKEN", "BTC-USDT")]
PUBLISH_EVERY_SECONDS = 0.005
T0_NS = 1_700_000_000 * NS_PER_SECOND
PREVIEW_INTERVAL_SECONDS, PREVIEW_DELAY_SECONDS = 0.5, 0.5  # of the dataset features-1s


def feature_payload(symbol: str, start_ns: int, close: float) -> bytes:
    """One closed 1s slice as the featurizer publishes it (``featurizer.features.rows`` + ``bus.encode_rows``)."""
    slices = np.zeros(1, dtype=SLICE_DTYPE)
    slices["start"] = start_ns
    slices["n_trades"] = 3
    for name in ("open", "high", "low", "close"):
        slices[name] = close
    slices["volume"] = 2.5
    slices["notional"] = 2.5 * close
    return encode_rows(rows(symbol, "1s", slices, time.time(), np.ones(1, dtype=bool)))


class FeaturePublisher:
    """Publishes one batch per topic every PUBLISH_EVERY_SECONDS on the bus, in a thread, until stopped."""

    def __init__(self, endpoint: str, topics: list[tuple[str, str]] = TOPICS) -> None:
        self.pub = Publisher(endpoint, 100_000)
        self.topics = topics
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FeaturePublisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(PUBLISH_EVERY_SECONDS):
            for exchange, symbol in self.topics:
                close = 100.0 + i * 0.001
                self.pub.publish(features_topic("1s", exchange, symbol),
                                 feature_payload(symbol, T0_NS + i * NS_PER_SECOND, close))
            self.sent += 1
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.pub.close()


@dataclass
class Stack:
    cfg: Config
    engine: sa.Engine
    proxy: Proxy
    publisher: FeaturePublisher
    gateway: Gateway
    clients: list[Client] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.cfg.gateway.endpoint

    def consumer(self, name: str, *grants: tuple[str, str]) -> store.Secrets:
        """A consumer with (dataset, scope) grants, requested by itself and granted by ``boss``."""
        made = store.add_consumer(self.engine, name, "ops")
        for dataset, scope in grants:
            store.transition(self.engine, name, dataset, store.Status.REQUESTED, name)
            store.transition(self.engine, name, dataset, store.Status.GRANTED, "boss", scope=scope)
        self.wait_known(made.public_key, len(grants))
        return made

    def wait_known(self, public_key: str, grants: int = 0) -> None:
        """Until the gateway's snapshot has the key (a handshake before that is refused, and retried) and the
        consumer's ``grants`` grants: they are committed one by one, so a snapshot can hold the key alone."""
        zap = self.gateway.zap
        assert zap is not None

        def known() -> bool:
            snap = zap.current()
            name = snap.keys.get(public_key)
            return name is not None and len(snap.grants_of(name, datetime.now(UTC))) >= grants

        wait_for(known, 10, "the gateway to know the consumer and its grants", 0.02)

    def client(self, made: store.Secrets, **kwargs: Any) -> Client:
        client = Client(self.endpoint, self.gateway.public_key, made.public_key, made.secret_key, made.consumer,
                        **kwargs)
        self.clients.append(client)
        return client

    def restart_gateway(self) -> None:
        self.gateway.stop()
        self.gateway = Gateway(self.cfg, self.engine).start()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.gateway.stop()
        self.publisher.stop()
        self.proxy.stop()


def gateway_config(tmp_path: Path, engine: sa.Engine, **gateway: Any) -> Config:
    (tmp_path / "run").mkdir(exist_ok=True)
    settings = {"enabled": True, "endpoint": f"tcp://127.0.0.1:{free_port()}", "refresh_seconds": 0.2, **gateway}
    return make_config(tmp_path, gateway=settings,
                       database={"url": engine.url.render_as_string(hide_password=False)})


def start_stack(tmp_path: Path, engine: sa.Engine, **gateway: Any) -> Stack:
    cfg = gateway_config(tmp_path, engine, **gateway)
    store.add_dataset(engine, "features-1s", "features.1s.*.*", "ops",
                      preview_interval_seconds=PREVIEW_INTERVAL_SECONDS, preview_delay_seconds=PREVIEW_DELAY_SECONDS,
                      preview_normalize=True)
    store.add_dataset(engine, "binance-1s", "features.1s.BINANCE.*", "ops")
    proxy = Proxy(cfg).start()
    gateway_ = Gateway(cfg, engine).start()
    publisher = FeaturePublisher(endpoints(cfg)[0]).start()
    return Stack(cfg, engine, proxy, publisher, gateway_)
