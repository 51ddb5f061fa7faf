"""The gateway fed by the real featurizer: collector-style trades and books on the bus -> ``Featurizer`` -> its
feature batches -> the gateway -> a CURVE consumer granted one symbol, as typed slices with exact values."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis

from data_feed.access import store
from data_feed.access.client import Client, FeatureSlice
from data_feed.access.db import make_engine
from data_feed.access.gateway import Gateway
from data_feed.access.tables import Status
from data_feed.bus.wire import Proxy, Publisher, encode_rows, endpoints
from featurizer.role import Featurizer
from tests.access.harness import gateway_config
from tests.harness import wait_for

T0 = 1_700_000_000.0


def trade(sym: str, t: float, price: float, amount: float, side: str = "buy") -> list[Any]:
    return [sym, t, t + 0.001, 1, None, side, price, amount]


def test_consumer_receives_the_real_featurizers_slices_of_its_grant_only(tmp_path: Path, redis_url: str) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'access.db'}")
    cfg = gateway_config(tmp_path, engine)
    cfg = cfg.model_copy(update={"featurizer": cfg.featurizer.model_copy(update={"allowed_lateness_seconds": 1})})
    store.add_dataset(engine, "binance-1s", "features.1s.BINANCE.*", "ops")
    alice = store.add_consumer(engine, "alice", "ops")
    store.transition(engine, "alice", "binance-1s", Status.REQUESTED, "alice")
    store.transition(engine, "alice", "binance-1s", Status.GRANTED, "boss", scope="features.*.*.BTC-USDT")
    proxy = Proxy(cfg).start()
    gateway = Gateway(cfg, engine).start()
    featurizer = Featurizer(cfg, redis.Redis.from_url(redis_url))
    collector = Publisher(endpoints(cfg)[0], 10_000)
    client = Client(cfg.gateway.endpoint, gateway.public_key, alice.public_key, alice.secret_key, "alice",
                    on_control=lambda m: None)
    try:
        client.subscribe("features.")
        wait_for(lambda: [*client.batches(0.1)] == [] and client.control, 10, "the gateway's acknowledgement")
        for sym in ("BTC-USDT", "ETH-USDT"):
            collector.publish(f"trades.BINANCE.{sym}".encode(), encode_rows(
                [trade(sym, T0 + 0.1, 100.0, 1.0), trade(sym, T0 + 0.5, 102.0, 3.0, "sell")]))
            collector.publish(f"trades.BINANCE.{sym}".encode(), encode_rows([trade(sym, T0 + 3.5, 103.0, 1.0)]))
        got: list[tuple[str, FeatureSlice]] = []
        deadline = time.monotonic() + 15
        while not any(s.interval == "1s" for _, s in got) and time.monotonic() < deadline:
            featurizer.step(50)
            got += [(topic, s) for topic, slices in client.batches(0.2) for s in slices]
    finally:
        client.close()
        collector.close()
        featurizer.publisher.close()
        featurizer.subscriber.close()
        gateway.stop()
        proxy.stop()
    assert {topic for topic, _ in got} <= {"features.1s.BINANCE.BTC-USDT", "features.1m.BINANCE.BTC-USDT"}
    first = next(s for _, s in got if s.interval == "1s")
    assert (first.exchange, first.symbol, first.ts_event) == ("BINANCE", "BTC-USDT", int(T0) * 1_000_000_000)
    assert first.trade_count == 2 and first.vwap == pytest.approx((100.0 + 306.0) / 4.0, rel=1e-12)
    assert first.buy_volume == 1.0 and first.sell_volume == 3.0
    assert isinstance(first.first_trade_ts, int) and isinstance(first.ts_recv, int)
