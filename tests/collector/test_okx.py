"""OKX v5's quirk class alone (``data_feed.collector.exchanges.okx``): cryptofeed's real ``OKX`` with the
collector's mixin, frames fed to ``message_handler``, no websocket and no Redis; liquidations polled by
cryptofeed's own loop from a real local HTTP server (aiohttp) at the simulator's path, nothing of cryptofeed
stubbed. Proves: book checksums are validated; a mismatch is a ``checksum`` row and an unsubscribe +
subscribe of that book, whose updates are skipped until the fresh snapshot (other books go on); the
docstring's funding frame has the receive time as its time and the funding time as ``next_funding_time``;
a liquidation gets the normalized symbol, not OKX's instrument id. Checksums of the test's books are
computed here by OKX's published rule (CRC32 of the top 25 bid and ask levels interleaved, ``price:size``)."""

from __future__ import annotations

import asyncio
import time
import zlib
from decimal import Decimal
from typing import Any

import pytest
from cryptofeed.defines import FUNDING, L2_BOOK, LIQUIDATIONS, SELL

from data_feed.collector.exchanges import okx
from data_feed.collector.exchanges.base import Endpoints
from tests.collector.quirks import UNREACHABLE_WS, Conn, Gaps, Got, build, frame, json_body, rest_server

PERP, SPOT = "BTC-USDT-PERP", "BTC-USDT"
SWAP_ID = "BTC-USDT-SWAP"
SYMBOLS = {PERP: SWAP_ID, SPOT: SPOT}
TYPES = {PERP: "perpetual", SPOT: "spot"}
CHANNELS = [L2_BOOK, FUNDING, LIQUIDATIONS]
BIDS = {"64999.9": "0.25", "64990": "0.001"}
ASKS = {"65000.3": "0.5", "65001": "1"}

FUNDING_FRAME = """{"arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"}, "data": [{"instType": "SWAP",
     "instId": "BTC-USDT-SWAP", "fundingRate": "0.0001", "nextFundingRate": "0.0001",
     "fundingTime": "1714579200000", "nextFundingTime": "1714608000000"}]}"""


def checksum(bids: dict[str, str], asks: dict[str, str]) -> int:
    """As OKX sends it: a signed 32-bit integer."""
    top_bids = sorted(bids.items(), key=lambda level: Decimal(level[0]), reverse=True)[:25]
    top_asks = sorted(asks.items(), key=lambda level: Decimal(level[0]))[:25]
    parts: list[str] = []
    for i in range(max(len(top_bids), len(top_asks))):
        for side in (top_bids, top_asks):
            if i < len(side):
                parts.extend(side[i])
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def book(inst_id: str, action: str, bids: dict[str, str], asks: dict[str, str], crc: int, ts: str) -> str:
    return frame({"arg": {"channel": "books", "instId": inst_id}, "action": action,
                  "data": [{"bids": [[p, q, "0", "1"] for p, q in bids.items()],
                            "asks": [[p, q, "0", "1"] for p, q in asks.items()], "ts": ts, "checksum": crc}]})


def snapshot(inst_id: str = SWAP_ID) -> str:
    return book(inst_id, "snapshot", BIDS, ASKS, checksum(BIDS, ASKS), "1714564800000")


def fitting_update(inst_id: str = SWAP_ID) -> str:
    """A new bid level, with the checksum of the book after it."""
    return book(inst_id, "update", {"64995": "2"}, {}, checksum({**BIDS, "64995": "2"}, ASKS), "1714564801000")


def misfit_update(inst_id: str = SWAP_ID) -> str:
    return book(inst_id, "update", {"64995": "2"}, {}, 12345, "1714564801000")


@pytest.fixture()
def feed() -> tuple[Any, Got, Gaps, Conn]:
    f, got, gaps = build(okx, "OKX", SYMBOLS, CHANNELS, TYPES)
    return f, got, gaps, Conn("OKX.ws.1", {"books": [SWAP_ID, SPOT]})


def test_checksum_validation_is_on_and_a_book_that_fits_passes(feed: Any) -> None:
    f, got, gaps, conn = feed
    assert f.checksum_validation is True
    asyncio.run(f.message_handler(snapshot(), conn, 1.0))
    asyncio.run(f.message_handler(fitting_update(), conn, 2.0))
    first, second = got[L2_BOOK]
    assert first.delta is None and first.timestamp == pytest.approx(1714564800.0, abs=1e-6)
    assert second.delta == {"bid": [(Decimal("64995"), Decimal("2"))], "ask": []}
    assert gaps.rows == [] and conn.written == []


def test_a_mismatch_is_a_checksum_row_a_resubscription_and_updates_skipped_until_the_fresh_snapshot(
        feed: Any) -> None:
    f, got, gaps, conn = feed

    async def frames() -> None:
        await f.message_handler(snapshot(), conn, 1.0)
        await f.message_handler(snapshot(SPOT), conn, 1.1)
        await f.message_handler(misfit_update(), conn, 2.0)
        await f.message_handler(fitting_update(), conn, 2.1)  # skipped: the swap's book is known to be wrong
        await f.message_handler(fitting_update(SPOT), conn, 2.2)  # the spot book goes on
        await f.message_handler(snapshot(), conn, 3.0)
        await f.message_handler(fitting_update(), conn, 3.1)

    asyncio.run(frames())
    assert gaps.keys == [(PERP, "l2_book", "checksum", None, None)]
    arg = [{"channel": "books", "instId": SWAP_ID}]
    assert conn.written == [{"op": "unsubscribe", "args": arg}, {"op": "subscribe", "args": arg}]
    assert [(b.symbol, b.receipt) for b in got[L2_BOOK]] == [(PERP, 1.0), (SPOT, 1.1), (SPOT, 2.2), (PERP, 3.0),
                                                            (PERP, 3.1)]


def test_the_docstring_funding_frame_has_the_receive_time_and_the_funding_time_as_next_funding_time(
        feed: Any) -> None:
    f, got, gaps, conn = feed
    asyncio.run(f.message_handler(FUNDING_FRAME, conn, 1714560000.25))
    (funding,) = got[FUNDING]
    assert (funding.symbol, funding.rate, funding.predicted_rate, funding.mark_price) == (
        PERP, Decimal("0.0001"), Decimal("0.0001"), None)
    assert funding.timestamp == 1714560000.25 and funding.next_funding_time == pytest.approx(1714579200.0, abs=1e-6)
    assert gaps.rows == []


def test_a_polled_liquidation_gets_the_normalized_symbol() -> None:
    body = {"code": "0", "msg": "", "data": [{"instType": "SWAP", "instFamily": "BTC-USDT", "uly": "BTC-USDT",
            "details": [{"side": "sell", "posSide": "long", "sz": "10", "bkPx": "65000.1", "bkLoss": "0",
                         "ccy": "", "ts": "1714564800123"}]}]}

    async def scenario() -> None:
        async with rest_server(json_body(body)) as server:
            f, got, _ = build(okx, "OKX", SYMBOLS, CHANNELS, TYPES, sim=Endpoints(server.url, UNREACHABLE_WS))
            poll = asyncio.create_task(f._liquidations([SWAP_ID]))
            deadline = time.monotonic() + 10
            while not got[LIQUIDATIONS] and time.monotonic() < deadline and not poll.done():
                await asyncio.sleep(0.01)
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            await f.http_conn.close()
            assert server.requests[0] == "/okx/api/v5/public/liquidation-orders?instType=SWAP&limit=100&state=filled" \
                                         "&uly=BTC-USDT"
            liq = got[LIQUIDATIONS][0]
            assert (liq.symbol, liq.side, liq.quantity, liq.price) == (PERP, SELL, Decimal("10"), Decimal("65000.1"))
            assert liq.timestamp == pytest.approx(1714564800.123, abs=1e-6)

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
