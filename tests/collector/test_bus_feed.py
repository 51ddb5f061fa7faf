"""The collector's live feed (``collector.bus_feed``, with ``bus.publish_on_receipt``): a frame's rows are on the
bus within its event-loop pass, before any flush writes them to Redis, each row once; what the bus carried that
the cache then could not keep is an ``overflow`` gaps row, on the bus and in the cache. Without it (the
default) rows go on the bus only once a flush has put them in Redis. A real bus proxy and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from data_feed.bus.wire import Proxy, Publisher, Subscriber, decode_rows, endpoints
from data_feed.collector.writer import StreamWriter
from tests.collector.test_writer import GAPS_KEY, TRADES_KEY, _gap_rows, _stream_ids, _trades, _writer
from tests.conftest import make_config

BUS_HWM = 100_000


@pytest.fixture()
def bus(tmp_path: Path) -> Iterator[tuple[str, Subscriber]]:
    cfg = make_config(tmp_path)
    Path(cfg.spawner.run_dir).mkdir(parents=True, exist_ok=True)
    proxy = Proxy(cfg).start()
    pub_ep, sub_ep = endpoints(cfg)
    listener = Subscriber(sub_ep, [b"trades.", b"gaps."], BUS_HWM)
    try:
        yield pub_ep, listener
    finally:
        listener.close()
        proxy.stop()


def _received(listener: Subscriber, wait_ms: int = 500) -> dict[str, list[list[Any]]]:
    out: dict[str, list[list[Any]]] = {"trades": [], "gaps": []}
    while (msg := listener.recv(wait_ms)) is not None:
        out[bytes(msg[0]).decode().split(".")[0]] += decode_rows(msg[1])
    return out


async def _frame(writer: StreamWriter, first: int, last: int) -> None:
    """One frame's trades through the callbacks, then the feed's per-frame hook; then the loop's next pass."""
    await _trades(writer, first, last)
    if writer.live is not None:  # what the feed calls after each frame (feed.after_frame)
        writer.live.frame_done()
    await asyncio.sleep(0)


def test_a_frames_rows_are_on_the_bus_before_any_flush_and_each_row_once(
        tmp_path: Path, redis_url: str, bus: tuple[str, Subscriber]) -> None:
    pub_ep, listener = bus

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        writer = _writer(redis_url, tmp_path, batch=1000)
        writer.bus = Publisher(pub_ep, BUS_HWM)
        writer.publish_on_receipt()
        try:
            await writer.flush()  # start-up: prepared, nothing to write
            await _frame(writer, 1, 5)
            early = [r[3] for r in _received(listener)["trades"]]
            in_redis_then = _stream_ids(redis_url)
            for first in range(6, 60, 6):
                await _frame(writer, first, first + 5)
            await _trades(writer, 60, 70)  # rows no frame hook published yet: the flush publishes them first
            await writer.flush()
            return early, in_redis_then, [r[3] for r in _received(listener)["trades"]]
        finally:
            writer.bus.close()

    early, in_redis_then, rest = asyncio.run(scenario())
    assert early == [1, 2, 3, 4, 5] and in_redis_then == []  # on the bus, not yet in the cache
    assert sorted(early + rest) == list(range(1, 71))  # every row once on the bus
    assert _stream_ids(redis_url) == list(range(1, 71))  # and once in the cache


def test_rows_the_bus_carried_that_the_full_spill_drops_are_overflow_gaps_on_the_bus_and_in_the_cache(
        tmp_path: Path, redis_url: str, bus: tuple[str, Subscriber]) -> None:
    pub_ep, listener = bus

    async def scenario() -> dict[str, list[list[Any]]]:
        writer = _writer(redis_url, tmp_path, maxlen=1, spill_bytes=1, batch=1000)
        writer.bus = Publisher(pub_ep, BUS_HWM)
        writer.publish_on_receipt()
        try:
            await _frame(writer, 1, 10)
            await writer.flush()  # fits: the stream was empty
            await _frame(writer, 11, 20)  # on the bus at once
            await writer.flush()  # at the bound, and the spill holds 1 byte: dropped
            await writer.flush()
            return _received(listener)
        finally:
            writer.bus.close()

    got = asyncio.run(scenario())
    assert sorted(r[3] for r in got["trades"]) == list(range(1, 21))  # the bus carried all of them
    assert _stream_ids(redis_url) == list(range(1, 11))  # the cache kept these
    on_bus = [(r[0], r[3], r[4], r[5], r[6]) for r in got["gaps"] if r[4] == "overflow"]
    cached = [(r[0], r[3], r[4], r[5], r[6]) for r in _gap_rows(redis_url) if r[4] == "overflow"]
    assert on_bus == cached == [("BTC-USDT", "trades", "overflow", 11, 20)]
    assert redis.Redis.from_url(redis_url).exists(TRADES_KEY, GAPS_KEY) == 2


def test_by_default_rows_go_on_the_bus_only_after_the_flush_put_them_in_redis(
        tmp_path: Path, redis_url: str, bus: tuple[str, Subscriber]) -> None:
    pub_ep, listener = bus

    async def scenario() -> tuple[list[int], list[int]]:
        writer = _writer(redis_url, tmp_path, batch=1000)
        writer.bus = Publisher(pub_ep, BUS_HWM)
        try:
            await writer.flush()
            await _frame(writer, 1, 5)
            before = [r[3] for r in _received(listener)["trades"]]
            await writer.flush()
            return before, [r[3] for r in _received(listener)["trades"]]
        finally:
            writer.bus.close()

    before, after = asyncio.run(scenario())
    assert before == [] and after == [1, 2, 3, 4, 5] and _stream_ids(redis_url) == [1, 2, 3, 4, 5]


def test_after_each_flush_the_feed_confirms_up_to_the_newest_receipt_the_cache_now_holds(
        tmp_path: Path, redis_url: str, bus: tuple[str, Subscriber]) -> None:
    """What lets the featurizer land a slice it built from bus rows: ``confirmed.EXCHANGE.-`` after the flush
    that cached them, carrying the newest ``ts_recv`` it took, and published after those rows."""
    pub_ep, _ = bus
    listener = Subscriber(endpoints(make_config(tmp_path))[1], [b"trades.", b"confirmed."], BUS_HWM)
    time.sleep(0.3)  # the subscription reaches the proxy

    async def scenario() -> list[tuple[str, list[list[Any]]]]:
        writer = _writer(redis_url, tmp_path, batch=1000)
        writer.bus = Publisher(pub_ep, BUS_HWM)
        writer.publish_on_receipt()
        try:
            await writer.flush()  # start-up: nothing taken, nothing confirmed
            await _frame(writer, 1, 5)
            await writer.flush()
            await _frame(writer, 6, 9)  # on the bus, not yet flushed: not confirmed
            out = []
            while (msg := listener.recv(500)) is not None:
                out.append((bytes(msg[0]).decode(), decode_rows(msg[1])))
            return out
        finally:
            writer.bus.close()
            listener.close()

    got = asyncio.run(scenario())
    topics = [topic.split(".")[0] for topic, _ in got]
    assert topics == ["trades", "confirmed", "trades"]
    confirmed, first, later = got[1][1][0][0], got[0][1], got[2][1]
    assert got[1][0] == "confirmed.BINANCE.-"
    assert confirmed == max(r[2] for r in first) and all(r[2] >= confirmed for r in later)
    assert _stream_ids(redis_url) == [1, 2, 3, 4, 5]
