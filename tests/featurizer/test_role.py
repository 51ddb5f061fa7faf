"""The featurizer role against a real bus proxy and a real redis-server: batches in, features out on both paths."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import zmq
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry

from data_feed.bus.wire import Proxy, Publisher, Subscriber, decode_rows, encode_rows, endpoints
from data_feed.cache.streams import decode_batch, stream_key
from data_feed.contracts.config import Config
from data_feed.contracts.schemas import batch_columns
from featurizer.role import REDIS_RETRY_SECONDS, Featurizer
from tests.conftest import make_config
from tests.harness import wait_for

T0 = 1_700_000_000.0
SETTLE_SECONDS = 0.3


@pytest.fixture()
def rig(tmp_path: Path, redis_url: str) -> Iterator[dict[str, Any]]:
    cfg: Config = make_config(tmp_path, featurizer={"intervals": ["1s", "2s"], "allowed_lateness_seconds": 1})
    Path(cfg.spawner.run_dir).mkdir(parents=True)
    proxy = Proxy(cfg).start()
    ctx: zmq.Context[Any] = zmq.Context()
    pub_ep, sub_ep = endpoints(cfg)
    client = redis.Redis.from_url(redis_url)
    fz = Featurizer(cfg, client)
    consumer = Subscriber(sub_ep, [b"features."], 10_000, ctx)
    collector = Publisher(pub_ep, 10_000, ctx)
    time.sleep(SETTLE_SECONDS)
    try:
        yield {"cfg": cfg, "fz": fz, "collector": collector, "consumer": consumer, "client": client}
    finally:
        for sock in (collector, consumer, fz.publisher, fz.subscriber):
            sock.close()
        proxy.stop()
        ctx.destroy(linger=0)


def trade(sym: str, t: float, price: float, amount: float, side: str = "buy") -> list[Any]:
    return [sym, t, t + 0.001, 1, None, side, price, amount]


def pump(fz: Featurizer, rounds: int = 5) -> None:
    for _ in range(rounds):
        fz.step(50)


def received(consumer: Subscriber) -> dict[bytes, list[list[Any]]]:
    out: dict[bytes, list[list[Any]]] = {}
    while (msg := consumer.recv(300)) is not None:
        out.setdefault(msg[0], []).extend(decode_rows(msg[1]))
    return out


def test_closed_slices_are_published_on_the_bus_and_written_to_the_features_stream(rig: dict[str, Any]) -> None:
    fz, pub = rig["fz"], rig["collector"]
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0),
                                                         trade("BTC-USDT", T0 + 0.5, 102.0, 3.0, "sell")]))
    book = [["BTC-USDT", T0 + 0.2, T0 + 0.2, "bid", 99.0, 2.0, True, 1],
            ["BTC-USDT", T0 + 0.2, T0 + 0.2, "ask", 101.0, 2.0, True, 1]]
    pub.publish(b"l2_book.BINANCE.BTC-USDT", encode_rows(book))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 3.5, 103.0, 1.0)]))  # watermark
    pump(fz)
    got = received(rig["consumer"])
    ones = got[b"features.1s.BINANCE.BTC-USDT"]
    cols = {name: i for i, name in enumerate(("symbol", "ts_event", "ts_recv", "interval", "trade_count", "open",
                                              "high", "low", "close", "volume", "buy_volume", "sell_volume",
                                              "notional", "vwap"))}
    first = ones[0]
    assert first[cols["ts_event"]] == T0 and first[cols["trade_count"]] == 2
    assert first[cols["vwap"]] == pytest.approx((100.0 + 306.0) / 4.0, rel=1e-12)
    assert first[cols["buy_volume"]] == 1.0 and first[cols["sell_volume"]] == 3.0
    assert [r[cols["ts_event"]] for r in ones] == [T0, T0 + 1]  # the empty second too; [T0+2, T0+3) waits
    assert [r[cols["trade_count"]] for r in got[b"features.2s.BINANCE.BTC-USDT"]] == [2]  # merged 1s slices
    entries = rig["client"].xrange(stream_key("BINANCE", "features"))
    tables = [decode_batch("features", fields) for _, fields in entries]
    landed = sum(t.num_rows for t in tables)
    assert landed == len(ones) + 1
    assert tables[0].column("ts_event")[0].as_py() == int(T0) * 1_000_000_000


def test_a_slice_is_published_as_soon_as_the_batch_closing_it_is_read_not_after_the_rest_of_a_burst(
        rig: dict[str, Any]) -> None:
    fz, pub = rig["fz"], rig["collector"]
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0)]))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 2.2, 101.0, 1.0)]))  # closes [T0, +1)
    for i in range(20):  # the rest of the burst, queued behind it
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 2.3 + i * 0.01, 101.0, 1.0)]))
    wait_for(lambda: fz.subscriber.sock.poll(0), 10, "the burst on the featurizer's socket")
    time.sleep(SETTLE_SECONDS)
    assert fz.step(1000) == 2  # it stopped reading at the batch that closed a slice
    assert fz.records_in == 2
    first = rig["consumer"].recv(2000)
    assert first is not None and first[0] == b"features.1s.BINANCE.BTC-USDT"
    assert decode_rows(first[1])[0][1] == T0
    pump(fz)
    assert fz.records_in == 22


def test_late_trade_is_counted_and_logged_and_a_bad_batch_is_skipped(rig: dict[str, Any],
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    fz, pub = rig["fz"], rig["collector"]
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 10, 100.0, 1.0)]))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 1, 100.0, 1.0)]))  # 9 s late
    pub.publish(b"trades.BINANCE.BTC-USDT", b"\xc1 not msgpack")
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 10.5, 101.0, 1.0)]))
    with caplog.at_level(logging.WARNING):
        pump(fz)
    assert fz.exchanges["BINANCE"].late_trades == 1
    assert fz.bad_batches == 1
    assert any("1 records arrived after their slice closed" in r.message and "symbol=BTC-USDT" in r.message
               for r in caplog.records)
    assert any("bad bus batch skipped" in r.message for r in caplog.records)


def test_stop_drains_the_bus_and_flushes_every_open_slice(rig: dict[str, Any]) -> None:
    fz, pub = rig["fz"], rig["collector"]
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0)]))
    pub.publish(b"trades.BINANCE.ETH-USDT", encode_rows([trade("ETH-USDT", T0 + 0.2, 10.0, 2.0)]))
    time.sleep(SETTLE_SECONDS)
    fz.request_stop()
    fz.drain()  # nothing had closed: the watermark never passed a slice end plus the lateness
    got = received(rig["consumer"])
    assert {t for t in got if t.startswith(b"features.1s.")} == {b"features.1s.BINANCE.BTC-USDT",
                                                                 b"features.1s.BINANCE.ETH-USDT"}
    assert rig["client"].xlen(stream_key("BINANCE", "features")) == 4  # 1s and 2s per symbol


def test_features_are_kept_while_redis_is_unreachable_and_written_once_it_answers(rig: dict[str, Any]) -> None:
    fz, pub = rig["fz"], rig["collector"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    fz.prepare()
    fz.sink.client = redis.Redis(port=dead_port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0),
                                                         trade("BTC-USDT", T0 + 5.0, 100.0, 1.0)]))
    pump(fz)
    assert fz.pending and b"features.1s.BINANCE.BTC-USDT" in received(rig["consumer"])  # the bus did not wait
    fz.sink.client = rig["client"]
    time.sleep(REDIS_RETRY_SECONDS)
    pump(fz, 1)
    assert not fz.pending and rig["client"].xlen(stream_key("BINANCE", "features")) > 0


def test_an_outage_announced_open_keeps_its_symbols_slices_incomplete_until_its_row_ends_it(
        rig: dict[str, Any]) -> None:
    """The chaos run's race: a collector restarts, its first records are another symbol's and move the
    exchange's watermark past slices of a symbol whose restart gap is only written with that symbol's next
    record. The collector announces the gap open at once (``GapTracker.open_notice``, bus only); every slice
    of the symbol from the outage's start stays incomplete until the row that ends it, and only those."""
    from data_feed.cache.streams import Mark
    from data_feed.collector.gaps import GapTracker
    from data_feed.contracts.schemas import GapReason

    fz, pub = rig["fz"], rig["collector"]
    tracker = GapTracker()
    tracker.marks[("trades", "ETH-USDT")] = Mark(T0 + 1.5, 7, T0 + 1.5)  # the last ETH trade that reached Redis
    pub.publish(b"trades.BINANCE.ETH-USDT", encode_rows([trade("ETH-USDT", T0 + 0.2, 10.0, 1.0),
                                                         trade("ETH-USDT", T0 + 1.2, 10.0, 1.0)]))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.3, 100.0, 1.0)]))
    tracker.open_gap("trades", "ETH-USDT", GapReason.RESTART, T0 + 4.0, "collector not running")
    pub.publish(b"gaps.BINANCE.ETH-USDT", encode_rows([tracker.open_notice("trades", "ETH-USDT")]))
    # BTC resumes first, well after the restart was detected (4.0): the watermark closes ETH's slices up to 5
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 7.0, 100.0, 1.0)]))
    pump(fz)
    (ended,) = tracker.observe("trades", [("ETH-USDT", T0 + 7.6, T0 + 7.601, 9, None, "buy", 10.0, 1.0)])
    pub.publish(b"gaps.BINANCE.ETH-USDT", encode_rows([ended]))
    pub.publish(b"trades.BINANCE.ETH-USDT", encode_rows([trade("ETH-USDT", T0 + 7.6, 10.0, 1.0)]))
    pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 10.5, 100.0, 1.0)]))
    pump(fz)
    got = received(rig["consumer"])
    complete = {sym: {round(r[1] - T0): r[-1] for r in got[f"features.1s.BINANCE.{sym}".encode()]}
                for sym in ("ETH-USDT", "BTC-USDT")}
    # ETH: slice 0 before the outage's start (the mark at 1.5) is whole; 1 to 7 touch the outage (7 holds its
    # end, 7.6; 5 and 6 lie after its detection at 4.0 and closed before its row came); 8 is after it.
    assert complete["ETH-USDT"] == {0: True, 1: False, 2: False, 3: False, 4: False, 5: False, 6: False, 7: False,
                                    8: True}
    assert all(complete["BTC-USDT"].values()), complete["BTC-USDT"]
    assert fz.open_windows == {}


def test_provisional_updates_show_the_open_slice_building_up_on_the_bus_only_and_the_final_one_follows(
        rig: dict[str, Any]) -> None:
    base: Config = rig["cfg"]
    cfg = base.model_copy(update={"featurizer": base.featurizer.model_copy(update={"provisional_ms": 1})})
    fz, pub, consumer, client = Featurizer(cfg, rig["client"]), rig["collector"], rig["consumer"], rig["client"]
    try:
        time.sleep(SETTLE_SECONDS)
        topic, final_topic = b"features.open-1s.BINANCE.BTC-USDT", b"features.1s.BINANCE.BTC-USDT"
        shown: list[list[Any]] = []
        for t, price, amount in ((0.1, 100.0, 1.0), (0.4, 102.0, 3.0)):
            pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + t, price, amount)]))
            wait_for(lambda: fz.subscriber.sock.poll(0), 10, "the trade on the featurizer's socket")
            time.sleep(0.01)
            fz.step(100)
            got = received(consumer)
            assert list(got) == [topic]  # nothing has closed: only the open slice, as it stands
            shown += got[topic]
        cols = {name: i for i, name in enumerate(batch_columns("features"))}
        assert [r[cols["trade_count"]] for r in shown] == [1, 2]
        assert all(r[cols["ts_event"]] == T0 and r[cols["interval"]] == "1s" and r[cols["complete"]] is False
                   for r in shown)
        assert shown[-1][cols["vwap"]] == pytest.approx((100.0 + 306.0) / 4.0, rel=1e-12)
        time.sleep(0.01)
        fz.step(50)
        assert received(consumer) == {}  # unchanged since the last update: not sent again
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 2.5, 101.0, 1.0)]))
        pump(fz)
        got = received(consumer)
        final = got[final_topic][0]
        assert final[cols["ts_event"]] == T0 and final[cols["complete"]] is True
        value_columns = [c for c in cols if c not in ("ts_recv", "complete")]
        np.testing.assert_equal([final[cols[c]] for c in value_columns], [shown[-1][cols[c]] for c in value_columns])
        assert [(r[cols["ts_event"]], r[cols["trade_count"]]) for r in got[topic]] == [(T0 + 2, 1)]
        landed = [decode_batch("features", f) for _, f in client.xrange(stream_key("BINANCE", "features"))]
        finals = len(got[final_topic]) + len(got.get(b"features.2s.BINANCE.BTC-USDT", []))
        assert sum(t.num_rows for t in landed) == finals
        assert all(t.column("complete").to_pylist() == [True] * t.num_rows for t in landed)
        assert REGISTRY.get_sample_value("data_feed_feature_provisional_total",
                                         {"exchange": "BINANCE", "interval": "1s"}) >= 3
    finally:
        fz.publisher.close()
        fz.subscriber.close()


def _on_receipt(rig: dict[str, Any]) -> Featurizer:
    """A featurizer for collectors that publish on receipt (``bus.publish_on_receipt``), on the rig's bus."""
    base: Config = rig["cfg"]
    fz = Featurizer(base.model_copy(update={"bus": base.bus.model_copy(update={"publish_on_receipt": True})}),
                    rig["client"])
    time.sleep(SETTLE_SECONDS)
    return fz


def _landed(client: redis.Redis, interval: str = "1s") -> dict[float, bool]:
    """Slice start (s after T0) -> complete, of the features the featurizer cached."""
    out = {}
    for _, fields in client.xrange(stream_key("BINANCE", "features")):
        table = decode_batch("features", fields).to_pylist()
        out.update({r["ts_event"] / 1e9 - T0: r["complete"] for r in table if r["interval"] == interval})
    return out


def test_on_receipt_a_slice_is_published_at_once_and_lands_when_its_collector_confirms_the_cache_has_its_rows(
        rig: dict[str, Any]) -> None:
    fz, pub, client = _on_receipt(rig), rig["collector"], rig["client"]
    try:
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0),
                                                             trade("BTC-USDT", T0 + 2.5, 101.0, 1.0)]))
        pump(fz)
        got = received(rig["consumer"])
        assert [(r[1] - T0, r[-1]) for r in got[b"features.1s.BINANCE.BTC-USDT"]] == [(0, True)]  # at once
        assert _landed(client) == {}  # not before the collector says its cache has the rows
        pub.publish(b"confirmed.BINANCE.-", encode_rows([(T0 + 0.101,)]))  # a flush took only the first row
        pump(fz)
        assert _landed(client) == {}
        pub.publish(b"confirmed.BINANCE.-", encode_rows([(T0 + 2.501,)]))
        pump(fz)
        assert _landed(client) == {0: True}
    finally:
        fz.publisher.close()
        fz.subscriber.close()


def test_on_receipt_a_slice_whose_collector_restarted_before_caching_its_rows_lands_incomplete(
        rig: dict[str, Any]) -> None:
    """The kill between publish and flush: the slice went out complete on the bus, built on rows the lake never
    gets; the restarted collector announces its restart gap before confirming anything, so the slice lands
    incomplete, as backfill over the lake sees it."""
    from data_feed.cache.streams import Mark
    from data_feed.collector.gaps import GapTracker
    from data_feed.contracts.schemas import GapReason

    fz, pub, client = _on_receipt(rig), rig["collector"], rig["client"]
    try:
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0)]))
        pub.publish(b"confirmed.BINANCE.-", encode_rows([(T0 + 0.101,)]))  # cached: the mark is this row
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.7, 100.0, 1.0),
                                                             trade("BTC-USDT", T0 + 2.5, 101.0, 1.0)]))
        pump(fz)  # the collector dies here: 0.7 and 2.5 never reach Redis
        tracker = GapTracker()
        tracker.marks[("trades", "BTC-USDT")] = Mark(T0 + 0.101, 1, T0 + 0.1)
        tracker.open_gap("trades", "BTC-USDT", GapReason.RESTART, T0 + 5.0, "collector not running")
        pub.publish(b"gaps.BINANCE.BTC-USDT", encode_rows([tracker.open_notice("trades", "BTC-USDT")]))
        (ended,) = tracker.observe("trades", [("BTC-USDT", T0 + 5.2, T0 + 5.201, 9, None, "buy", 100.0, 1.0)])
        pub.publish(b"gaps.BINANCE.BTC-USDT", encode_rows([ended]))
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 5.2, 100.0, 1.0)]))
        pub.publish(b"confirmed.BINANCE.-", encode_rows([(T0 + 5.201,)]))  # the new incarnation's first flush
        pump(fz)
        published = {r[1] - T0: r[-1] for r in received(rig["consumer"])[b"features.1s.BINANCE.BTC-USDT"]}
        assert published[0] is True  # what live subscribers saw at once
        landed = _landed(client)
        assert landed[0] is False and all(v is False for v in landed.values())
    finally:
        fz.publisher.close()
        fz.subscriber.close()


def test_on_receipt_a_slice_never_confirmed_lands_incomplete_after_the_hold_and_at_stop(
        rig: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    fz, pub, client = _on_receipt(rig), rig["collector"], rig["client"]
    try:
        fz.holding.hold_seconds = 0.2
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 0.1, 100.0, 1.0),
                                                             trade("BTC-USDT", T0 + 2.5, 101.0, 1.0)]))
        with caplog.at_level(logging.WARNING):
            pump(fz)
            time.sleep(0.3)
            pump(fz)
        assert _landed(client) == {0: False}
        assert any("never confirmed cached" in r.message and "symbol=BTC-USDT" in r.message for r in caplog.records)
        pub.publish(b"trades.BINANCE.BTC-USDT", encode_rows([trade("BTC-USDT", T0 + 3.5, 101.0, 1.0)]))
        fz.holding.hold_seconds = 3600
        pump(fz)  # closes [1, 2): held
        fz.request_stop()
        fz.drain()  # its collector stopped without confirming: incomplete, like everything the stop flushed
        assert set(_landed(client)) >= {0, 1, 2, 3} and not any(_landed(client).values())
    finally:
        fz.publisher.close()
        fz.subscriber.close()
