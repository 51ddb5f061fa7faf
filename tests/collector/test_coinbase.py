"""Coinbase's quirk class alone (``data_feed.collector.exchanges.coinbase``): cryptofeed's real ``Coinbase`` with
the collector's mixin, fed the frames its docstring describes, no socket and no Redis. The ticker channel
cryptofeed lacks, snapshot asks cryptofeed drops ("offer"), RFC 3339 nanosecond times, and a jump of
``sequence_num`` as a ``sequence_gap`` with the missing numbers and a level2 resubscription."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from cryptofeed.defines import L2_BOOK, TICKER
from cryptofeed.symbols import Symbols

from data_feed.collector.exchanges import coinbase
from data_feed.collector.exchanges.base import Endpoints

TICKER_FRAME = """{"channel": "ticker", "client_id": "", "timestamp": "2023-02-09T20:30:37.167359596Z",
 "sequence_num": 0, "events": [{"type": "snapshot", "tickers": [{"type": "ticker",
 "product_id": "BTC-USD", "price": "21932.98", "best_bid": "21932.97",
 "best_bid_quantity": "0.2", "best_ask": "21932.98", "best_ask_quantity": "0.1"}]}]}"""
T_TICKER = 1675974637.167359596  # 2023-02-09T20:30:37.167359596Z


def snapshot_frame(seq: int) -> str:
    """As Coinbase sends it: compact JSON (the quirk class finds the frame's time and sequence by their keys)."""
    return json.dumps(separators=(",", ":"), obj={
                       "channel": "l2_data", "client_id": "", "timestamp": "2023-02-09T20:30:38.5Z",
                       "sequence_num": seq, "events": [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
                           {"side": "bid", "event_time": "2023-02-09T20:30:38.5Z", "price_level": "21932.97",
                            "new_quantity": "0.2"},
                           {"side": "offer", "event_time": "2023-02-09T20:30:38.5Z", "price_level": "21932.98",
                            "new_quantity": "0.1"},
                           {"side": "offer", "event_time": "2023-02-09T20:30:38.5Z", "price_level": "21933.50",
                            "new_quantity": "1.5"}]}]})


class Conn:
    """What the quirk class uses of a cryptofeed connection: its id, its subscription, ``write``."""

    def __init__(self) -> None:
        self.uuid = "COINBASE.ws.1"
        self.subscription = {"level2": ["BTC-USD"], "ticker": ["BTC-USD"]}
        self.written: list[dict[str, Any]] = []

    async def write(self, data: str) -> None:
        self.written.append(json.loads(data))


class Gaps:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        self.rows.append((symbol, channel, reason, first_missing, last_missing))

    def open_gap(self, symbol: str, channel: str, reason: str, detail: str = "", when: float | None = None) -> None:
        self.rows.append((symbol, channel, reason, None, None))


@pytest.fixture()
def feed() -> tuple[Any, list[Any], Gaps]:
    Symbols.set("COINBASE", {"BTC-USD": "BTC-USD"}, {"tick_size": {}, "instrument_type": {"BTC-USD": "spot"}})
    got: list[Any] = []

    async def callback(obj: Any, receipt: float) -> None:
        got.append(obj)

    sim = Endpoints("https://127.0.0.1:1", "wss://127.0.0.1:1")  # never reached: no connection is opened
    f = coinbase.feed_class(None)(symbols=["BTC-USD"], channels=[TICKER, L2_BOOK], config=coinbase.feed_config(sim),
                                  callbacks={TICKER: callback, L2_BOOK: callback})
    gaps = Gaps()
    f.gap_writer = gaps
    return f, got, gaps


def test_rfc3339_nanoseconds_become_epoch_seconds() -> None:
    assert coinbase.to_epoch_seconds("2023-02-09T20:30:37.167359596Z") == pytest.approx(T_TICKER, abs=1e-6)
    assert coinbase.to_epoch_seconds("2023-02-09T20:30:37Z") == 1675974637.0
    assert coinbase.to_epoch_seconds(None) is None and coinbase.to_epoch_seconds(1.5) == 1.5


def test_the_ticker_frame_of_the_docstring_is_a_ticker_with_its_exchange_time(feed: Any) -> None:
    f, got, _ = feed
    asyncio.run(f.message_handler(TICKER_FRAME, Conn(), 1675974637.2))
    (ticker,) = got
    assert (ticker.symbol, ticker.bid, ticker.ask) == ("BTC-USD", Decimal("21932.97"), Decimal("21932.98"))
    assert ticker.timestamp == pytest.approx(T_TICKER, abs=1e-6)


def test_a_snapshot_keeps_its_asks_sent_as_offer_and_gets_its_frames_time(feed: Any) -> None:
    f, got, _ = feed
    asyncio.run(f.message_handler(snapshot_frame(1), Conn(), 1675974638.6))
    (book,) = got
    assert dict(book.book.bids.to_dict()) == {Decimal("21932.97"): Decimal("0.2")}
    assert dict(book.book.asks.to_dict()) == {Decimal("21932.98"): Decimal("0.1"), Decimal("21933.50"): Decimal("1.5")}
    assert book.timestamp == pytest.approx(1675974638.5, abs=1e-6)


def test_a_sequence_jump_is_a_gap_of_the_missing_numbers_and_resubscribes_level2(feed: Any) -> None:
    f, _, gaps = feed
    conn = Conn()

    async def frames() -> None:
        await f.subscribe(conn)
        conn.written.clear()
        await f.message_handler(snapshot_frame(0), conn, 1.0)
        await f.message_handler(snapshot_frame(1), conn, 2.0)
        await f.message_handler(snapshot_frame(1), conn, 2.1)  # a repeated frame: not a gap
        await f.message_handler(snapshot_frame(5), conn, 3.0)

    asyncio.run(frames())
    assert sorted(gaps.rows) == [("BTC-USD", "l2_book", "sequence_gap", 2, 4),
                                 ("BTC-USD", "ticker", "sequence_gap", 2, 4)]
    assert [(w["type"], w["channel"], w["product_ids"]) for w in conn.written] == [
        ("unsubscribe", "level2", ["BTC-USD"]), ("subscribe", "level2", ["BTC-USD"])]
