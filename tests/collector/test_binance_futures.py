"""Binance USD-M futures' quirk class alone (``data_feed.collector.exchanges.binance_futures``): cryptofeed's real
``BinanceFutures`` with the collector's mixin and spot's gap reporting (`BinanceGaps`), fed combined-stream
frames, no websocket and no Redis. REST (book snapshots, open interest) comes from a real local HTTP server
(aiohttp) at the simulator's path; nothing of cryptofeed is stubbed. Proves: the docstring's markPrice frame as
a Funding; a depth update whose ``pu`` is not the last ``u`` as a ``sequence_gap`` and ``resync`` rows; the
futures snapshot keeping its own exchange time; open interest polled from ``/fapi/v1/openInterest``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from cryptofeed.connection import HTTPPoll
from cryptofeed.defines import FUNDING, L2_BOOK, OPEN_INTEREST

from data_feed.collector.exchanges import binance_futures
from data_feed.collector.exchanges.base import Endpoints
from tests.collector.quirks import UNREACHABLE_WS, Conn, Gaps, Got, RestServer, build, frame, json_body, rest_server

BTC, ETH = "BTC-USDT-PERP", "ETH-USDT-PERP"
SYMBOLS = {BTC: "BTCUSDT", ETH: "ETHUSDT"}
TYPES = {BTC: "perpetual", ETH: "perpetual"}
CHANNELS = [FUNDING, L2_BOOK, OPEN_INTEREST]

MARK_PRICE = """{"stream": "btcusdt@markPrice", "data": {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT",
     "p": "11794.15000000", "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}}"""


def depth(pair: str, first: int, last: int, previous: int, event_ms: int = 1700000000500) -> str:
    """A futures depthUpdate: ``pu`` is the ``u`` of the update before it on the exchange."""
    return frame({"stream": f"{pair.lower()}@depth@100ms",
                  "data": {"e": "depthUpdate", "E": event_ms, "T": event_ms - 2, "s": pair, "U": first, "u": last,
                           "pu": previous, "b": [["35000.0", "1.5"]], "a": []}})


def snapshots(last_ids: dict[str, int]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """/fapi/v1/depth as Binance futures answers it: with its own message and transaction times."""

    async def respond(request: web.Request) -> web.StreamResponse:
        body = {"lastUpdateId": last_ids[request.query["symbol"]], "E": 1700000000400, "T": 1700000000398,
                "bids": [["34999.0", "2.0"]], "asks": [["35001.0", "3.0"]]}
        return await json_body(body)(request)

    return respond


def feed_at(server: RestServer) -> tuple[Any, Got, Gaps]:
    return build(binance_futures, "BINANCE_FUTURES", SYMBOLS, CHANNELS, TYPES,
                 sim=Endpoints(server.url, UNREACHABLE_WS))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_the_docstring_mark_price_frame_is_a_funding_with_rate_mark_price_and_both_times() -> None:
    f, got, gaps = build(binance_futures, "BINANCE_FUTURES", SYMBOLS, CHANNELS, TYPES)
    asyncio.run(f.message_handler(MARK_PRICE, Conn("BINANCE_FUTURES.ws.1", {}), 1562305380.1))
    (funding,) = got[FUNDING]
    assert (funding.symbol, funding.rate, funding.mark_price) == (BTC, Decimal("0.00038167"), Decimal("11794.15"))
    assert funding.timestamp == pytest.approx(1562305380.0, abs=1e-6)
    assert funding.next_funding_time == pytest.approx(1562306400.0, abs=1e-6)
    assert gaps.rows == []


def test_a_depth_update_not_following_the_last_one_is_a_sequence_gap_and_a_resync_of_the_other_books() -> None:
    async def scenario() -> None:
        async with rest_server(snapshots({"BTCUSDT": 100, "ETHUSDT": 200})) as server:
            f, got, gaps = feed_at(server)
            conn = Conn("BINANCE_FUTURES.ws.1", {"depth": list(SYMBOLS.values())})
            await f.message_handler(depth("BTCUSDT", 95, 103, 94), conn, 1.0)  # straddles the snapshot's id
            await f.message_handler(depth("ETHUSDT", 199, 204, 198), conn, 1.1)
            await f.message_handler(depth("BTCUSDT", 104, 108, 103), conn, 1.2)  # pu is the last u: follows
            assert gaps.rows == []
            await f.message_handler(depth("BTCUSDT", 115, 120, 112), conn, 2.0)  # 109..114 never came
            assert gaps.keys == [(BTC, "l2_book", "sequence_gap", 109, 114), (ETH, "l2_book", "resync", None, None)]
            assert [b.sequence_number for b in got[L2_BOOK] if b.symbol == BTC] == [100, 103, 108]
            await f.http_conn.close()

    run(scenario)


def test_the_futures_snapshot_keeps_its_own_exchange_time() -> None:
    async def scenario() -> None:
        async with rest_server(snapshots({"BTCUSDT": 100})) as server:
            f, got, gaps = feed_at(server)
            await f.message_handler(depth("BTCUSDT", 95, 103, 94, event_ms=1700000000900), Conn("c", {}), 1.0)
            snapshot, update = got[L2_BOOK]
            assert snapshot.delta is None and snapshot.timestamp == pytest.approx(1700000000.4, abs=1e-6)
            assert update.timestamp == pytest.approx(1700000000.9, abs=1e-6)
            assert server.requests == ["/binance_futures/fapi/v1/depth?symbol=BTCUSDT&limit=1000"]
            assert gaps.rows == []
            await f.http_conn.close()

    run(scenario)


def test_open_interest_is_polled_over_rest_from_the_simulators_path() -> None:
    body = {"openInterest": "10659.509", "symbol": "BTCUSDT", "time": 1589437530011}

    async def scenario() -> None:
        async with rest_server(json_body(body)) as server:
            f, got, _ = feed_at(server)
            (poll,) = [conn for conn, *_ in f.connect() if isinstance(conn, HTTPPoll)]
            await f.subscribe(poll)
            await poll._open()
            async for data in poll.read():
                await f.message_handler(data, poll, time.time())
                break
            await poll.close()
            assert server.requests[0] in {"/binance_futures/fapi/v1/openInterest?symbol=BTCUSDT",
                                          "/binance_futures/fapi/v1/openInterest?symbol=ETHUSDT"}
            (oi,) = got[OPEN_INTEREST]
            assert oi.open_interest == Decimal("10659.509") and oi.symbol == BTC
            assert oi.timestamp == pytest.approx(1589437530.011, abs=1e-6)

    run(scenario)


def test_an_old_repeated_depth_update_gives_no_gap_row_with_its_bounds_reversed() -> None:
    """Every gaps row's first_missing <= last_missing: the row bounds ids that may be missing. Spot skips such an
    update (cryptofeed's spot check); futures' check resets the books on it."""

    async def scenario() -> None:
        async with rest_server(snapshots({"BTCUSDT": 100})) as server:
            f, _, gaps = feed_at(server)
            conn = Conn("c", {"depth": ["BTCUSDT"]})
            await f.message_handler(depth("BTCUSDT", 95, 103, 94), conn, 1.0)
            await f.message_handler(depth("BTCUSDT", 104, 108, 103), conn, 1.1)
            await f.message_handler(depth("BTCUSDT", 95, 103, 94), conn, 1.2)  # an update already applied, again
            await f.http_conn.close()
            reversed_rows = [g.key for g in gaps.rows if g.first_missing is not None and g.last_missing is not None
                             and g.first_missing > g.last_missing]
            assert reversed_rows == []

    run(scenario)
