"""Bybit v5's quirk class alone (``data_feed.collector.exchanges.bybit``): cryptofeed's real ``Bybit`` with the
collector's mixin, one spot and one linear connection object (subscriptions as cryptofeed's ``connect`` builds
them), frames fed to ``message_handler``, no websocket and no Redis. Proves: tickers survive another
connection's subscribe (cryptofeed 2.4.1 wipes them, so a later delta fails); a book delta whose ``u`` is not
the last + 1 is a ``sequence_gap`` row of the missing numbers and a resubscription on its market's connection;
spot and linear books of one topic name count ``u`` apart."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from cryptofeed.defines import L2_BOOK, TICKER

from data_feed.collector.exchanges import bybit
from tests.collector.quirks import Conn, Gaps, Got, Handler, build, frame

PERP, SPOT = "BTC-USDT-PERP", "BTC-USDT"
SYMBOLS = {PERP: "BTCUSDT", SPOT: "BTC/USDT"}
TYPES = {PERP: "perpetual", SPOT: "spot"}
TOPIC = "orderbook.200.BTCUSDT"  # spot's and linear's book topic alike

DOCSTRING_DELTA = """{"topic": "orderbook.200.BTCUSDT", "type": "delta", "ts": 1672304484978,
     "data": {"s": "BTCUSDT", "b": [["16493.50", "0"]], "a": [], "u": 18521289, "seq": 7961638725}}"""


def book_snapshot(u: int, ts: int = 1672304484900) -> str:
    return frame({"topic": TOPIC, "type": "snapshot", "ts": ts,
                  "data": {"s": "BTCUSDT", "b": [["16493.50", "0.006"], ["16493.00", "0.100"]],
                           "a": [["16611.00", "0.029"]], "u": u, "seq": 7961638724}, "cts": ts - 2})


def book_delta(u: int, bid: str = "16490.00") -> str:
    return frame({"topic": TOPIC, "type": "delta", "ts": 1672304485000,
                  "data": {"s": "BTCUSDT", "b": [[bid, "1.0"]], "a": [], "u": u, "seq": 7961638800}})


def ticker(kind: str, **data: str) -> str:
    return frame({"topic": "tickers.BTCUSDT", "type": kind, "data": {"symbol": "BTCUSDT", **data},
                  "cs": 24987956059, "ts": 1673272861686})


@pytest.fixture()
def feed() -> tuple[Any, Got, Gaps, Conn, Conn]:
    f, got, gaps = build(bybit, "BYBIT", SYMBOLS, [L2_BOOK, TICKER], TYPES)
    by_market = {c.address.rsplit("/", 1)[-1]: c for c, *_ in f.connect()}
    linear = Conn("BYBIT.ws.1", by_market["linear"].subscription, "wss://127.0.0.1:1/v5/public/linear")
    spot = Conn("BYBIT.ws.2", by_market["spot"].subscription, "wss://127.0.0.1:1/v5/public/spot")
    f.connection_handlers.extend([Handler(linear), Handler(spot)])
    return f, got, gaps, linear, spot


def test_tickers_seen_survive_another_connections_subscribe(feed: Any) -> None:
    f, got, gaps, linear, spot = feed

    async def frames() -> None:
        await f.subscribe(linear)
        await f.message_handler(ticker("snapshot", bid1Price="17215.50", ask1Price="17216.00", markPrice="1"),
                                linear, 1.0)
        await f.subscribe(spot)  # cryptofeed empties the tickers here
        await f.message_handler(ticker("delta", bid1Price="17215.00"), linear, 2.0)

    asyncio.run(frames())
    assert [(t.symbol, t.bid, t.ask) for t in got[TICKER]] == [(PERP, Decimal("17215.50"), Decimal("17216.00")),
                                                              (PERP, Decimal("17215.00"), Decimal("17216.00"))]
    assert gaps.rows == []  # no bad_frame: the delta found its snapshot


def test_the_docstring_delta_after_its_snapshot_updates_the_book(feed: Any) -> None:
    f, got, gaps, linear, _ = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(DOCSTRING_DELTA, linear, 2.0)

    asyncio.run(frames())
    snapshot, delta = got[L2_BOOK]
    assert Decimal("16493.50") in snapshot.bids and Decimal("16493.50") not in delta.bids  # size 0: removed
    assert delta.symbol == PERP and gaps.rows == []


def test_a_jump_of_u_is_a_sequence_gap_of_the_missing_numbers_and_resubscribes_on_its_markets_connection(
        feed: Any) -> None:
    f, got, gaps, linear, spot = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(DOCSTRING_DELTA, linear, 2.0)
        await f.message_handler(book_delta(18521295, bid="16400.00"), linear, 3.0)  # 18521290..18521294 missed

    asyncio.run(frames())
    assert gaps.keys == [(PERP, "l2_book", "sequence_gap", 18521290, 18521294)]
    assert linear.written == [{"op": "subscribe", "args": [TOPIC]}] and spot.written == []
    assert len(got[L2_BOOK]) == 2  # the update after the jump is not applied
    asyncio.run(f.message_handler(book_snapshot(18521400), linear, 4.0))  # the fresh snapshot: counting restarts
    asyncio.run(f.message_handler(book_delta(18521401), linear, 5.0))
    assert len(got[L2_BOOK]) == 4 and len(gaps.rows) == 1


def test_a_jump_seen_while_its_connection_is_closed_is_a_gap_without_a_write(feed: Any) -> None:
    f, _, gaps, linear, spot = feed
    linear.is_open = False  # cryptofeed reconnects and subscribes afresh: nothing to resubscribe on

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(book_delta(18521295), linear, 2.0)

    asyncio.run(frames())
    assert gaps.keys == [(PERP, "l2_book", "sequence_gap", 18521289, 18521294)]
    assert linear.written == [] and spot.written == []


def test_spot_and_linear_books_of_one_topic_name_count_u_apart(feed: Any) -> None:
    f, got, gaps, linear, spot = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(book_snapshot(500), spot, 1.1)
        await f.message_handler(book_delta(18521289), linear, 2.0)
        await f.message_handler(book_delta(501), spot, 2.1)

    asyncio.run(frames())
    assert [b.symbol for b in got[L2_BOOK]] == [PERP, SPOT, PERP, SPOT]
    assert gaps.rows == [] and linear.written == [] and spot.written == []


def test_another_connections_subscribe_does_not_hide_a_jump_of_u(feed: Any) -> None:
    f, _, gaps, linear, spot = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(book_delta(18521289), linear, 2.0)
        await f.subscribe(spot)
        await f.message_handler(book_delta(18521300), linear, 3.0)  # 18521290..18521299 missed

    asyncio.run(frames())
    assert gaps.keys == [(PERP, "l2_book", "sequence_gap", 18521290, 18521299)]


def test_deltas_between_a_jump_and_the_fresh_snapshot_are_not_published(feed: Any) -> None:
    f, got, _, linear, _ = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(book_delta(18521295), linear, 2.0)  # the jump
        await f.message_handler(book_delta(18521296), linear, 2.1)  # still the old, wrong book

    asyncio.run(frames())
    assert len(got[L2_BOOK]) == 1


def test_deltas_dropped_until_the_fresh_snapshot_are_one_resync_row_of_their_u_range(feed: Any) -> None:
    f, got, gaps, linear, _ = feed

    async def frames() -> None:
        await f.message_handler(book_snapshot(18521288), linear, 1.0)
        await f.message_handler(book_delta(18521295), linear, 2.0)  # the jump: 18521289..18521294 missed
        await f.message_handler(book_delta(18521296), linear, 2.1)  # dropped: the book is known wrong
        await f.message_handler(book_delta(18521297), linear, 2.2)  # dropped
        await f.message_handler(book_snapshot(18521400), linear, 3.0)  # the fresh snapshot
        await f.message_handler(book_delta(18521401), linear, 3.1)

    asyncio.run(frames())
    assert gaps.keys == [(PERP, "l2_book", "sequence_gap", 18521289, 18521294),
                         (PERP, "l2_book", "resync", 18521296, 18521297)]
    assert len(got[L2_BOOK]) == 3  # snapshot, fresh snapshot, the delta after it
