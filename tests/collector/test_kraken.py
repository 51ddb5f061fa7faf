"""Kraken's quirk class alone (``data_feed.collector.exchanges.kraken``): cryptofeed's real ``Kraken`` (websocket
API v1) with the collector's mixin, frames fed to ``message_handler``, no websocket and no Redis. Proves: book
checksums are validated (the collector turns it on); a mismatch (the docstring's update against a book it does
not fit) is a ``checksum`` row and an unsubscribe + subscribe of that book, whose updates are skipped until the
fresh snapshot; trades carry no id, so their cached rows (the collector's real writer into a real Redis)
have null ``id`` and ``id_text``. Checksums of the test's books are computed here by Kraken's published
rule (CRC32 of the top ten asks then bids, price and volume without the point and leading zeros)."""

from __future__ import annotations

import asyncio
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from cryptofeed.defines import BUY, L2_BOOK, TRADES

from data_feed.cache.spill import Spill
from data_feed.cache.streams import ENTRY_PAYLOAD_FIELD, stream_key
from data_feed.collector.exchanges import kraken
from data_feed.collector.writer import StreamWriter
from data_feed.contracts.config import RedisConfig
from tests.collector.quirks import Conn, Gaps, Got, build, frame

BTC, PAIR = "BTC-USD", "XBT/USD"
DOCSTRING_UPDATE = ('[10001, {"a": [["65000.35000", "0.00000000", "1714564800.123456"]], "c": "3258975213"}, '
                    '"book-100", "XBT/USD"]')
ASKS = {"65000.35000": "0.50000000", "65001.00000": "1.00000000"}
BIDS = {"64999.90000": "0.25000000", "64990.00000": "0.00100000"}


def checksum(bids: dict[str, str], asks: dict[str, str]) -> str:
    def digits(value: str) -> str:
        return value.replace(".", "").lstrip("0")

    top_asks = sorted(asks.items(), key=lambda level: Decimal(level[0]))[:10]
    top_bids = sorted(bids.items(), key=lambda level: Decimal(level[0]), reverse=True)[:10]
    return str(zlib.crc32("".join(digits(p) + digits(q) for p, q in top_asks + top_bids).encode()))


def snapshot() -> str:
    return frame([10001, {"as": [[p, q, "1714564800.000001"] for p, q in ASKS.items()],
                          "bs": [[p, q, "1714564800.000002"] for p, q in BIDS.items()]}, "book-100", PAIR])


def bid_update(price: str, volume: str, book_bids: dict[str, str], book_asks: dict[str, str]) -> str:
    """A bid update carrying the checksum of the book it leaves (``book_bids``/``book_asks``, after it)."""
    return frame([10001, {"b": [[price, volume, "1714564801.000000"]], "c": checksum(book_bids, book_asks)},
                  "book-100", PAIR])


@pytest.fixture()
def feed() -> tuple[Any, Got, Gaps, Conn]:
    f, got, gaps = build(kraken, "KRAKEN", {BTC: PAIR}, [TRADES, L2_BOOK], {BTC: "spot"})
    return f, got, gaps, Conn("KRAKEN.ws.1", {"book": [PAIR], "trade": [PAIR]})


def test_checksum_validation_is_on_and_an_update_that_fits_passes(feed: Any) -> None:
    f, got, gaps, conn = feed
    assert f.checksum_validation is True
    after = {**BIDS, "64995.00000": "2.00000000"}
    asyncio.run(f.message_handler(snapshot(), conn, 1.0))
    asyncio.run(f.message_handler(bid_update("64995.00000", "2.00000000", after, ASKS), conn, 2.0))
    assert [b.delta for b in got[L2_BOOK]][1] == {"bid": [(Decimal("64995.00000"), Decimal("2.00000000"))], "ask": []}
    assert gaps.rows == [] and conn.written == []


def test_the_docstring_update_against_a_book_it_does_not_fit_is_a_checksum_row_and_a_resubscription(
        feed: Any) -> None:
    f, got, gaps, conn = feed
    asyncio.run(f.message_handler(snapshot(), conn, 1.0))
    asyncio.run(f.message_handler(DOCSTRING_UPDATE, conn, 2.0))
    assert gaps.keys == [(BTC, "l2_book", "checksum", None, None)]
    assert conn.written == [{"event": "unsubscribe", "pair": [PAIR], "subscription": {"name": "book", "depth": 100}},
                            {"event": "subscribe", "pair": [PAIR], "subscription": {"name": "book", "depth": 100}}]
    assert len(got[L2_BOOK]) == 1  # the mismatching update is not published


def test_updates_after_a_mismatch_are_skipped_until_the_fresh_snapshot(feed: Any) -> None:
    f, got, gaps, conn = feed
    after = {**BIDS, "64995.00000": "2.00000000"}

    async def frames() -> None:
        await f.message_handler(snapshot(), conn, 1.0)
        await f.message_handler(DOCSTRING_UPDATE, conn, 2.0)
        await f.message_handler(bid_update("64995.00000", "2.00000000", after, ASKS), conn, 2.1)  # skipped
        await f.message_handler(snapshot(), conn, 3.0)
        await f.message_handler(bid_update("64995.00000", "2.00000000", after, ASKS), conn, 3.1)

    asyncio.run(frames())
    assert [(b.receipt, b.delta is None) for b in got[L2_BOOK]] == [(1.0, True), (3.0, True), (3.1, False)]
    assert len(gaps.rows) == 1 and len(conn.written) == 2


def test_a_trade_has_no_id(feed: Any) -> None:
    f, got, gaps, conn = feed
    msg = '[1, [["3417.20000", "0.21222200", "1549223326.971661", "b", "l", ""]], "trade", "XBT/USD"]'
    asyncio.run(f.message_handler(msg, conn, 1549223327.0))
    (trade,) = got[TRADES]
    assert (trade.symbol, trade.side, trade.price, trade.amount, trade.id) == (
        BTC, BUY, Decimal("3417.20000"), Decimal("0.21222200"), None)
    assert trade.timestamp == pytest.approx(1549223326.971661, abs=1e-6) and gaps.rows == []


def test_a_trade_without_id_is_cached_with_null_id_and_id_text(tmp_path: Path, redis_url: str) -> None:
    msg = '[1, [["3417.20000", "0.21222200", "1549223326.971661", "s", "m", ""]], "trade", "XBT/USD"]'

    async def scenario() -> None:
        writer = StreamWriter(aioredis.Redis.from_url(redis_url), "KRAKEN", RedisConfig(),
                              Spill(tmp_path / "spill", 10_000_000), {"trades": (BTC,)})
        f, _, _ = build(kraken, "KRAKEN", {BTC: PAIR}, [TRADES], {BTC: "spot"})
        f.callbacks[TRADES] = [writer.trade]
        await f.message_handler(msg, Conn("KRAKEN.ws.1", {"trade": [PAIR]}), 1549223327.0)
        await writer.flush()
        await writer.client.aclose()

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_url)
    rows = [row for _, fields in client.xrange(stream_key("KRAKEN", "trades"))
            for row in msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])]
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in rows] == [(BTC, None, None, "sell", 3417.2)]


def test_a_mismatch_in_an_update_of_asks_and_bids_in_two_parts_is_a_checksum_row(feed: Any) -> None:
    f, _, gaps, conn = feed
    two_parts = frame([10001, {"a": [["65000.35000", "0.40000000", "1714564801.0"]]},
                       {"b": [["64999.90000", "0.20000000", "1714564801.0"]], "c": "12345"}, "book-100", PAIR])
    asyncio.run(f.message_handler(snapshot(), conn, 1.0))
    asyncio.run(f.message_handler(two_parts, conn, 2.0))
    assert gaps.keys == [(BTC, "l2_book", "checksum", None, None)]
