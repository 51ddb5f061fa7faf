"""The ZMQ bus: a real XSUB/XPUB proxy carries collector-style batches to every subscriber, by topic."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from data_feed.bus.wire import (
    Proxy,
    Publisher,
    Subscriber,
    channel_prefix,
    decode_rows,
    encode_rows,
    endpoints,
    features_topic,
    market_topic,
    parse_features_topic,
    parse_market_topic,
)
from tests.conftest import make_config

SUBSCRIBE_SETTLE_SECONDS = 0.3
RECV_TIMEOUT_MS = 5000


def subscriber(ctx: zmq.Context[Any], endpoint: str, prefix: bytes) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, prefix)
    return sock


def test_topics_round_trip_and_reject_foreign_topics() -> None:
    assert market_topic("trades", "BINANCE", "BTC-USDT") == b"trades.BINANCE.BTC-USDT"
    assert parse_market_topic(b"l2_book.COINBASE.ETH-USD") == ("l2_book", "COINBASE", "ETH-USD")
    assert parse_features_topic(features_topic("1m", "BINANCE", "BTC-USDT")) == ("1m", "BINANCE", "BTC-USDT")
    with pytest.raises(ValueError, match="features topic"):
        parse_features_topic(b"trades.BINANCE.BTC-USDT")
    with pytest.raises(ValueError, match="market-data topic"):
        parse_market_topic(b"features.1s.BINANCE.BTC-USDT")


def test_proxy_delivers_per_symbol_batches_to_every_subscriber_by_topic(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    (tmp_path / "run").mkdir()
    proxy = Proxy(cfg).start()
    pub_ep, sub_ep = endpoints(cfg)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        trades_a = subscriber(ctx, sub_ep, channel_prefix("trades"))
        trades_b = subscriber(ctx, sub_ep, channel_prefix("trades"))
        books = subscriber(ctx, sub_ep, channel_prefix("l2_book"))
        pub = Publisher(pub_ep, 1000, ctx)
        time.sleep(SUBSCRIBE_SETTLE_SECONDS)
        rows = [("BTC-USDT", 1.5, 1.6, 1, None, "buy", 100.0, 0.1), ("ETH-USDT", 1.5, 1.6, 2, None, "sell", 10.0, 1.0),
                ("BTC-USDT", 1.7, 1.8, 3, None, "sell", 101.0, 0.2)]
        book = [("BTC-USDT", 1.5, 1.6, "bid", 99.0, 1.0, True, 7)]
        pub.publish_batches("BINANCE", {"trades": rows, "l2_book": book})
        for sock in (trades_a, trades_b):
            got = {bytes(t): decode_rows(p) for t, p, _ in (sock.recv_multipart(), sock.recv_multipart())}
            assert got == {b"trades.BINANCE.BTC-USDT": [list(rows[0]), list(rows[2])],
                           b"trades.BINANCE.ETH-USDT": [list(rows[1])]}
        topic, payload, _ = books.recv_multipart()
        assert topic == b"l2_book.BINANCE.BTC-USDT" and decode_rows(payload) == [list(book[0])]
        books.setsockopt(zmq.RCVTIMEO, 200)
        with pytest.raises(zmq.Again):  # the trades never reached the book subscriber
            books.recv_multipart()
    finally:
        proxy.stop()
        ctx.destroy(linger=0)


def test_subscriber_counts_batches_lost_to_a_full_queue_instead_of_losing_them_silently(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, bus={"high_water_mark": 10})
    (tmp_path / "run").mkdir()
    proxy = Proxy(cfg).start()
    pub_ep, sub_ep = endpoints(cfg)
    ctx: zmq.Context[Any] = zmq.Context()
    received: list[float] = []
    try:
        slow = Subscriber(sub_ep, [channel_prefix("trades")], 10, ctx)  # a tiny queue, read only at the end
        pub = Publisher(pub_ep, 100_000, ctx)
        time.sleep(SUBSCRIBE_SETTLE_SECONDS)
        sent = 3_000
        for i in range(sent):  # 60 MB: far more than the socket buffers and queues hold
            pub.publish(b"trades.X.Y", encode_rows([["Y", float(i), "x" * 20_000]]))
        time.sleep(SUBSCRIBE_SETTLE_SECONDS)
        while (msg := slow.recv(200)) is not None:
            received.append(decode_rows(msg[1])[0][1])
        pub.publish(b"trades.X.Y", encode_rows([["Y", float(sent)]]))  # the stream goes on: the gap shows
        while (msg := slow.recv(1000)) is not None:
            received.append(decode_rows(msg[1])[0][1])
        pub.close()
        slow.close()
    finally:
        proxy.stop()
        ctx.destroy(linger=0)
    assert 0 < len(received) < sent and received[-1] == sent
    assert slow.missing == sent + 1 - len(received)


def test_proxy_start_fails_clearly_when_its_endpoint_is_taken(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = f"tcp://127.0.0.1:{holder.getsockname()[1]}"
    cfg = make_config(tmp_path, bus={"publish_endpoint": taken})
    (tmp_path / "run").mkdir()
    try:
        with pytest.raises(RuntimeError, match="could not bind"):
            Proxy(cfg).start()
    finally:
        holder.close()
