"""Replay feeds alone (``data_feed.collector.exchanges.replay``): the class built over an exchange's quirk class
(or cryptofeed's own), its endpoints re-hosted at the replay server, and `RecordedTimeMixin` fed enveloped
frames (`data_feed.contracts.capture.wrap_frame`, the replay server's format) with no websocket and no Redis. The REST
book snapshot comes from a real local HTTP server (aiohttp) at the replay path. Proves: hosts swapped with
paths and queries kept, the envelope header asked for; the exchange's QUIRKS class kept; records get the
frame's recorded time as receive time (REST snapshots too, and records without an exchange time as their
time); the frame is acknowledged when asked, also when it could not be parsed."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Bitstamp

from data_feed.collector.exchanges import binance, coinbase, replay
from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.contracts.capture import ENVELOPE_HEADER, ack_frame, wrap_frame
from tests.collector.quirks import Conn, build, frame, json_body, rest_server

BTC = "BTC-USDT"
RECORDED = 1633998512.06
AGG_TRADE = frame({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT",
                   "a": 17, "p": "35000.01", "q": "0.01000000", "f": 17, "l": 17, "T": 1700000000120, "m": False}})
BOOK_TICKER = frame({"stream": "btcusdt@bookTicker", "data": {"u": 382569232, "s": "BTCUSDT", "b": "35000.00",
                     "B": "1.5", "a": "35000.02", "A": "2.0"}})  # spot's has no exchange time
DEPTH = frame({"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "E": 1700000000500, "s": "BTCUSDT",
               "U": 101, "u": 101, "b": [["35000.00", "1.5"]], "a": []}})


def replay_feed(sim: Endpoints) -> tuple[Any, Any, Any]:
    cls = replay.feed_class("BINANCE", binance, sim)
    return build(binance, "BINANCE", {BTC: "BTCUSDT"}, [TRADES, TICKER, L2_BOOK], {BTC: "spot"}, cls=cls)


def test_rehost_swaps_scheme_host_and_port_and_keeps_path_and_query() -> None:
    assert replay.rehost("wss://stream.binance.com:9443", "wss://localhost:8765/replay/BINANCE") == \
        "wss://localhost:8765/replay/BINANCE"
    assert replay.rehost("https://api.coinbase.com/api/v3/brokerage", "https://localhost:8765/replay/COINBASE/") == \
        "https://localhost:8765/replay/COINBASE/api/v3/brokerage"
    assert replay.rehost("wss://ws.okx.com:8443/ws/v5/public?brokerId=9999", "wss://h:1/replay/OKX") == \
        "wss://h:1/replay/OKX/ws/v5/public?brokerId=9999"


def test_the_replay_class_keeps_the_quirks_and_points_every_endpoint_at_the_replay_server() -> None:
    sim = Endpoints("https://localhost:8765", "wss://localhost:8765")
    cls = replay.feed_class("COINBASE", coinbase, sim)
    assert cls.__mro__[1:4] == (replay.RecordedTimeMixin, CollectorFeedMixin, coinbase.QUIRKS)
    for ep, original in zip(cls.websocket_endpoints, coinbase.QUIRKS.websocket_endpoints, strict=True):
        assert ep.address == replay.rehost(original.address, "wss://localhost:8765/replay/COINBASE")
        assert ep.sandbox is None and ep.options["additional_headers"][ENVELOPE_HEADER] == "1"
    for ep, original in zip(cls.rest_endpoints, coinbase.QUIRKS.rest_endpoints, strict=True):
        assert ep.address == replay.rehost(original.address, "https://localhost:8765/replay/COINBASE")
        assert ep.routes == original.routes and ep.sandbox is None


def test_an_exchange_without_a_module_replays_cryptofeeds_own_class_and_an_unknown_one_is_an_error() -> None:
    assert replay.base_class("BITSTAMP", None) is Bitstamp
    assert replay.feed_class("BITSTAMP", None, Endpoints("https://h:1", "wss://h:1")).__mro__[3] is Bitstamp
    with pytest.raises(ValueError, match="cryptofeed has no exchange 'NOPE'"):
        replay.base_class("NOPE", None)


def test_records_get_the_recorded_time_and_the_frame_is_acknowledged_when_asked() -> None:
    f, got, gaps = replay_feed(Endpoints("https://127.0.0.1:1", "wss://127.0.0.1:1"))
    conn = Conn("BINANCE.ws.1", {"aggTrade": ["BTCUSDT"]})
    asyncio.run(f.message_handler(wrap_frame(AGG_TRADE, RECORDED, 7, ack=True), conn, 1e9))
    asyncio.run(f.message_handler(wrap_frame(BOOK_TICKER, RECORDED + 1, 8, ack=False), conn, 1e9))
    (trade,), (ticker,) = got[TRADES], got[TICKER]
    assert trade.id == "17" and trade.timestamp == pytest.approx(1700000000.120, abs=1e-6)
    assert ticker.bid == Decimal("35000.00") and ticker.timestamp == RECORDED + 1  # no exchange time: recorded
    assert conn.sent == [ack_frame(7)] and f.replay_now == RECORDED + 1 and gaps.rows == []


def test_a_rest_snapshot_made_while_replaying_a_frame_gets_its_recorded_time() -> None:
    body = {"lastUpdateId": 100, "bids": [["34999.00", "2.0"]], "asks": [["35001.00", "3.0"]]}
    receipts: list[float] = []

    async def scenario() -> None:
        async with rest_server(json_body(body)) as server:
            f, got, gaps = replay_feed(Endpoints(server.url, "wss://127.0.0.1:1"))

            async def keep_receipt(obj: Any, receipt: float) -> None:
                receipts.append(receipt)

            f.callbacks[L2_BOOK].append(keep_receipt)
            await f.message_handler(wrap_frame(DEPTH, RECORDED, 3, ack=True), Conn("c", {}), 1e9)
            await f.http_conn.close()
            assert server.requests == ["/replay/BINANCE/api/v3/depth?symbol=BTCUSDT&limit=1000"]
            assert [b.delta is None for b in got[L2_BOOK]] == [True, False] and gaps.rows == []

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert receipts == [RECORDED, RECORDED]  # cryptofeed stamps the snapshot with time.time()


def test_a_frame_that_cannot_be_parsed_is_still_acknowledged_and_is_a_bad_frame_gap() -> None:
    f, got, gaps = replay_feed(Endpoints("https://127.0.0.1:1", "wss://127.0.0.1:1"))
    conn = Conn("BINANCE.ws.1", {"aggTrade": ["BTCUSDT"]})
    asyncio.run(f.message_handler(wrap_frame('{"stream": "btcusdt@aggTrade", "data": {"e": "aggTr', RECORDED, 9,
                                             ack=True), conn, 1e9))
    assert conn.sent == [ack_frame(9)] and got[TRADES] == []
    assert gaps.keys == [(BTC, "trades", "bad_frame", None, None)]


def test_a_frame_without_an_envelope_is_handled_with_its_own_receive_time() -> None:
    f, got, _ = replay_feed(Endpoints("https://127.0.0.1:1", "wss://127.0.0.1:1"))
    conn = Conn("BINANCE.ws.1", {})
    asyncio.run(f.message_handler(BOOK_TICKER, conn, 1700000001.5))
    assert got[TICKER][0].timestamp == 1700000001.5 and conn.sent == []
