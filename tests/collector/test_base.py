"""The mixin every collector feed has (``data_feed.collector.exchanges.base.CollectorFeedMixin``), on cryptofeed's
real ``Binance`` class: a malformed frame is counted, logged with the exchange and an excerpt, written as one
``bad_frame`` gap per (channel, symbol) the connection carried, and does not raise (cryptofeed would tear the
connection down); a second subscribe of one connection is an opened ``disconnect`` gap, or ``stall`` when it had
been silent for at least 0.9 of the watchdog's timeout. Reconnects use cryptofeed's real websocket connection
objects, reopened against a closed local port (the refusal is real); silence is set through their
``last_message``, the time cryptofeed itself keeps."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from cryptofeed.connection import WSAsyncConn
from cryptofeed.defines import L2_BOOK, TRADES
from prometheus_client import REGISTRY

from data_feed.collector.exchanges import binance
from data_feed.collector.exchanges.base import FRAME_EXCERPT_CHARS, STALL_FRACTION_OF_WATCHDOG, Endpoints
from tests.collector.quirks import Conn, Gaps, Got, build

BTC, ETH = "BTC-USDT", "ETH-USDT"
SYMBOLS = {BTC: "BTCUSDT", ETH: "ETHUSDT"}
TYPES = {BTC: "spot", ETH: "spot"}
WATCHDOG_SECONDS = 10.0
CLOSED_PORT = Endpoints("https://127.0.0.1:1", "wss://127.0.0.1:1")  # nothing listens on port 1: refused at once
AGG_TRADE = ('{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1700000000123,"s":"BTCUSDT","a":18,'
             '"p":"35000.01","q":"0.01","f":18,"l":18,"T":1700000000120,"m":true}}')


def bad_frames() -> float:
    return REGISTRY.get_sample_value("data_feed_bad_frames_total", {"exchange": "BINANCE"}) or 0.0


@pytest.fixture()
def feed() -> tuple[Any, Got, Gaps]:
    return build(binance, "BINANCE", SYMBOLS, [TRADES, L2_BOOK], TYPES, sim=CLOSED_PORT, timeout=WATCHDOG_SECONDS)


def test_a_malformed_frame_is_counted_logged_a_bad_frame_row_per_carried_stream_and_does_not_raise(
        feed: Any, caplog: pytest.LogCaptureFixture) -> None:
    f, got, gaps = feed
    conn = Conn("BINANCE.ws.1", {"aggTrade": ["BTCUSDT", "ETHUSDT"], "depth": ["BTCUSDT"]})
    malformed = '{"stream": "btcusdt@aggTrade", "data": ' + "x" * 300 + "TAIL"
    before = bad_frames()
    with caplog.at_level(logging.ERROR, logger="data_feed.collector"):
        asyncio.run(f.message_handler(malformed, conn, 1.0))
    assert bad_frames() == before + 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "exchange=BINANCE" in record.getMessage() and "conn=BINANCE.ws.1" in record.getMessage()
    assert repr(malformed[:FRAME_EXCERPT_CHARS]) in record.getMessage() and "TAIL" not in record.getMessage()
    assert sorted(gaps.keys) == [(BTC, "l2_book", "bad_frame", None, None), (BTC, "trades", "bad_frame", None, None),
                                 (ETH, "trades", "bad_frame", None, None)]
    assert not any(g.opened for g in gaps.rows)  # written at once, not opened
    asyncio.run(f.message_handler(AGG_TRADE, conn, 2.0))  # the next frame is parsed as usual
    assert [t.id for t in got[TRADES]] == ["18"] and f.frames_received == 2 and len(gaps.rows) == 3


def test_carried_maps_exchange_channels_and_symbols_to_standard_ones_and_keeps_an_unknown_channel(
        feed: Any) -> None:
    f, _, _ = feed
    conn = Conn("c", {"aggTrade": ["BTCUSDT"], "depth": ["ETHUSDT", "BTCUSDT"], "mystery": ["BTCUSDT"]})
    assert f.carried(conn) == [("trades", BTC), ("l2_book", ETH), ("l2_book", BTC), ("mystery", BTC)]
    assert f.carried(Conn("c", {})) == []


def test_carried_keeps_a_symbol_cryptofeed_does_not_know_as_the_exchange_names_it(feed: Any) -> None:
    f, _, _ = feed
    assert f.carried(Conn("c", {"depth": ["DOGEUSDT"]})) == [("l2_book", "DOGEUSDT")]


def ws_connection(f: Any) -> WSAsyncConn:
    (conn,) = [c for c, *_ in f.connect() if isinstance(c, WSAsyncConn)]
    return conn


async def reconnect_after_silence(f: Any, conn: WSAsyncConn, silent_seconds: float) -> None:
    """What cryptofeed does on a reconnect: reopen (here refused), then subscribe again."""
    conn.last_message = time.time() - silent_seconds
    with pytest.raises(OSError):
        await conn._open()
    await f.subscribe(conn)


def test_a_second_subscribe_of_one_connection_is_an_opened_disconnect_gap_per_carried_stream(feed: Any) -> None:
    f, _, gaps = feed
    conn = ws_connection(f)

    async def scenario() -> None:
        await f.subscribe(conn)
        assert gaps.rows == []  # the first subscribe is no outage
        await reconnect_after_silence(f, conn, 1.0)

    asyncio.run(scenario())
    assert sorted(gaps.keys) == sorted((s, c, "disconnect", None, None) for s in (BTC, ETH) for c in ("trades",
                                                                                                     "l2_book"))
    assert all(g.opened and g.detail.startswith("no frames from ") for g in gaps.rows)


def test_a_reconnect_after_most_of_the_watchdogs_timeout_in_silence_is_a_stall(feed: Any) -> None:
    f, _, gaps = feed
    conn = ws_connection(f)
    threshold = WATCHDOG_SECONDS * STALL_FRACTION_OF_WATCHDOG

    async def scenario() -> None:
        await f.subscribe(conn)
        await reconnect_after_silence(f, conn, threshold - 0.5)
        await reconnect_after_silence(f, conn, threshold + 0.5)

    asyncio.run(scenario())
    assert [g.reason for g in gaps.rows] == ["disconnect"] * 4 + ["stall"] * 4


def test_the_silence_counts_from_the_last_frame_before_the_first_failed_reopen(feed: Any) -> None:
    """cryptofeed clears last_message only on a successful open; a retry that finds it unset keeps the first."""
    f, _, gaps = feed
    conn = ws_connection(f)

    async def scenario() -> None:
        await f.subscribe(conn)
        conn.last_message = time.time() - WATCHDOG_SECONDS
        with pytest.raises(OSError):
            await conn._open()
        conn.last_message = None
        with pytest.raises(OSError):
            await conn._open()
        await f.subscribe(conn)

    asyncio.run(scenario())
    assert {g.reason for g in gaps.rows} == {"stall"} and len(gaps.rows) == 4
