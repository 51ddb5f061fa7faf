"""Binance spot's quirk class alone (``data_feed.collector.exchanges.binance``): cryptofeed's real ``Binance`` with
the collector's mixin, fed combined-stream frames, no websocket and no Redis. REST book snapshots come from a
real local HTTP server (aiohttp) at the simulator's path, which cryptofeed's own HTTP client reads: nothing of
cryptofeed is stubbed. Proves: the docstring's aggTrade frame as a Trade; a depth update that skips ids as a
``sequence_gap`` row of the missing ids plus ``resync`` rows for the other books; a failing snapshot as a
``snapshot_failed`` row and `GapRecorded`, a slow one as ``slow_snapshot``; the spot snapshot stamped with the
exchange time of the depth event that asked for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from cryptofeed.defines import BUY, L2_BOOK, TRADES
from prometheus_client import REGISTRY

from data_feed.collector.exchanges import binance
from data_feed.collector.exchanges.base import Endpoints, GapRecorded
from tests.collector.quirks import UNREACHABLE_WS, Conn, Gaps, Got, RestServer, build, frame, json_body, rest_server

BTC, ETH = "BTC-USDT", "ETH-USDT"
SYMBOLS = {BTC: "BTCUSDT", ETH: "ETHUSDT"}
TYPES = {BTC: "spot", ETH: "spot"}

AGG_TRADE = """{"stream": "btcusdt@aggTrade",
     "data": {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT", "a": 17, "p": "35000.01",
              "q": "0.01000000", "f": 17, "l": 17, "T": 1700000000120, "m": false}}"""


def depth(pair: str, first: int, last: int, event_ms: int = 1700000000500, bid: str = "35000.00") -> str:
    """A depthUpdate {"U": first, "u": last} of ``pair`` (exchange name) raising one bid level."""
    return frame({"stream": f"{pair.lower()}@depth@100ms",
                  "data": {"e": "depthUpdate", "E": event_ms, "s": pair, "U": first, "u": last,
                           "b": [[bid, "1.5"]], "a": []}})


def snapshots(last_ids: dict[str, int]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """/api/v3/depth as Binance spot answers it (no time in it); ``last_ids`` may change between requests."""

    async def respond(request: web.Request) -> web.StreamResponse:
        body = {"lastUpdateId": last_ids[request.query["symbol"]],
                "bids": [["34999.00", "2.0"]], "asks": [["35001.00", "3.0"]]}
        return await json_body(body)(request)

    return respond


def bad_frames(exchange: str) -> float:
    return REGISTRY.get_sample_value("data_feed_bad_frames_total", {"exchange": exchange}) or 0.0


def feed_at(server: RestServer) -> tuple[Any, Got, Gaps]:
    return build(binance, "BINANCE", SYMBOLS, [TRADES, L2_BOOK], TYPES, sim=Endpoints(server.url, UNREACHABLE_WS))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_the_docstring_agg_trade_frame_is_a_trade_with_its_price_amount_side_id_and_time() -> None:
    f, got, gaps = build(binance, "BINANCE", SYMBOLS, [TRADES, L2_BOOK], TYPES)
    asyncio.run(f.message_handler(AGG_TRADE, Conn("BINANCE.ws.1", {}), 1700000000.2))
    (trade,) = got[TRADES]
    assert (trade.symbol, trade.price, trade.amount, trade.side, trade.id) == (
        BTC, Decimal("35000.01"), Decimal("0.01000000"), BUY, "17")
    assert trade.timestamp == pytest.approx(1700000000.120, abs=1e-6)
    assert gaps.rows == []


def test_a_depth_update_skipping_ids_is_a_sequence_gap_of_them_and_a_resync_of_the_other_books() -> None:
    last_ids = {"BTCUSDT": 100, "ETHUSDT": 200}

    async def scenario() -> None:
        async with rest_server(snapshots(last_ids)) as server:
            f, got, gaps = feed_at(server)
            conn = Conn("BINANCE.ws.1", {"depth": list(SYMBOLS.values())})
            await f.message_handler(depth("BTCUSDT", 101, 103), conn, 1.0)
            await f.message_handler(depth("ETHUSDT", 201, 202), conn, 1.1)
            await f.message_handler(depth("BTCUSDT", 104, 105), conn, 1.2)  # follows: no gap
            assert gaps.rows == [] and len(server.requests) == 2
            await f.message_handler(depth("BTCUSDT", 110, 112), conn, 2.0)  # 106..109 never came
            assert gaps.keys == [(BTC, "l2_book", "sequence_gap", 106, 109), (ETH, "l2_book", "resync", None, None)]
            assert "110 after 105" in gaps.rows[0].detail
            books_before = len(got[L2_BOOK])
            last_ids.update(BTCUSDT=120, ETHUSDT=300)
            await f.message_handler(depth("BTCUSDT", 121, 122), conn, 3.0)  # a fresh snapshot, then the update
            await f.message_handler(depth("ETHUSDT", 301, 301), conn, 3.1)
            assert server.requests[2:] == ["/binance/api/v3/depth?symbol=BTCUSDT&limit=1000",
                                           "/binance/api/v3/depth?symbol=ETHUSDT&limit=1000"]
            resumed = got[L2_BOOK][books_before:]
            assert [(b.symbol, b.delta is None, b.sequence_number) for b in resumed] == [
                (BTC, True, 120), (BTC, False, 122), (ETH, True, 300), (ETH, False, 301)]
            assert len(gaps.rows) == 2
            await f.http_conn.close()

    run(scenario)


def test_the_spot_snapshot_gets_the_exchange_time_of_the_depth_event_that_asked_for_it() -> None:
    async def scenario() -> None:
        async with rest_server(snapshots({"BTCUSDT": 100, "ETHUSDT": 200})) as server:
            f, got, gaps = feed_at(server)
            await f.message_handler(depth("BTCUSDT", 101, 101, event_ms=1700000000777), Conn("c", {}), 5.0)
            snapshot, update = got[L2_BOOK]
            assert snapshot.delta is None and snapshot.timestamp == pytest.approx(1700000000.777, abs=1e-6)
            assert snapshot.bids == {Decimal("34999.00"): Decimal("2.0")}
            assert update.delta is not None and update.bids[Decimal("35000.00")] == Decimal("1.5")
            assert update.timestamp == pytest.approx(1700000000.777, abs=1e-6)
            assert gaps.rows == []
            await f.http_conn.close()

    run(scenario)


def test_a_failing_snapshot_is_a_snapshot_failed_row_the_frame_is_skipped_and_the_next_one_retries() -> None:
    status = {"code": 503}

    async def flaky(request: web.Request) -> web.StreamResponse:
        if status["code"] != 200:
            return web.Response(text='{"code": -1003, "msg": "busy"}', status=status["code"])
        return await snapshots({"BTCUSDT": 100})(request)

    async def scenario() -> None:
        async with rest_server(flaky) as server:
            f, got, gaps = feed_at(server)
            before = bad_frames("BINANCE")
            await f.message_handler(depth("BTCUSDT", 101, 101), Conn("c", {"depth": ["BTCUSDT"]}), 1.0)  # survives
            assert gaps.keys == [(BTC, "l2_book", "snapshot_failed", None, None)]  # and no bad_frame row besides
            assert "503" in gaps.rows[0].detail
            assert bad_frames("BINANCE") == before + 1 and got[L2_BOOK] == []
            with pytest.raises(GapRecorded, match="book snapshot failed"):
                await f._snapshot("BTCUSDT")
            status["code"] = 200
            await f.message_handler(depth("BTCUSDT", 101, 101), Conn("c", {}), 2.0)
            assert [b.delta is None for b in got[L2_BOOK]] == [True, False]
            assert len(gaps.rows) == 2
            await f.http_conn.close()

    run(scenario)


def test_a_slow_snapshot_is_a_slow_snapshot_row_and_the_book_still_comes() -> None:
    body = {"lastUpdateId": 100, "bids": [["34999.00", "2.0"]], "asks": []}

    async def scenario() -> None:
        async with rest_server(json_body(body, delay=binance.SLOW_SNAPSHOT_SECONDS + 0.1)) as server:
            f, got, gaps = feed_at(server)
            await f.message_handler(depth("BTCUSDT", 101, 101), Conn("c", {}), 1.0)
            assert gaps.keys == [(BTC, "l2_book", "slow_snapshot", None, None)]
            assert "book snapshot took 1." in gaps.rows[0].detail
            assert [b.delta is None for b in got[L2_BOOK]] == [True, False]
            await f.http_conn.close()

    run(scenario)


def test_an_update_already_applied_is_skipped_without_a_gap() -> None:
    async def scenario() -> None:
        async with rest_server(snapshots({"BTCUSDT": 100, "ETHUSDT": 200})) as server:
            f, got, gaps = feed_at(server)
            conn = Conn("c", {"depth": ["BTCUSDT"]})
            await f.message_handler(depth("BTCUSDT", 101, 103), conn, 1.0)
            await f.message_handler(depth("BTCUSDT", 104, 105), conn, 1.1)
            await f.message_handler(depth("BTCUSDT", 101, 103), conn, 1.2)  # again, from before
            assert gaps.rows == [] and len(got[L2_BOOK]) == 3 and len(server.requests) == 1
            await f.http_conn.close()

    run(scenario)
