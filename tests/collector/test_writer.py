"""The collector's StreamWriter against a real redis-server: idempotent retries, the bound and its spill,
overflow as gaps, outage gaps bounded by trade ids, and a stop that never cuts a write in half."""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import redis.asyncio as aioredis
from cryptofeed.types import Trade

from data_feed.cache.redis_server import PrivateRedis
from data_feed.cache.spill import Spill
from data_feed.cache.streams import ENTRY_PAYLOAD_FIELD, collector_state_key, stream_key
from data_feed.collector.writer import StreamWriter
from data_feed.contracts.config import RedisConfig
from tests.redis_proxy import LossyRedisProxy

T0 = 1_700_000_000.0
TRADES_KEY = stream_key("BINANCE", "trades")
GAPS_KEY = stream_key("BINANCE", "gaps")


def _writer(url: str, tmp_path: Path, maxlen: int = 1000, spill_bytes: int = 10_000_000,
            batch: int = 100) -> StreamWriter:
    cfg = RedisConfig(stream_maxlen=maxlen, batch_max_records=batch)
    return StreamWriter(aioredis.Redis.from_url(url), "BINANCE", cfg, Spill(tmp_path / "spill", spill_bytes),
                        {"trades": ("BTC-USDT",)})


async def _trades(writer: StreamWriter, first: int, last: int, symbol: str = "BTC-USDT") -> None:
    for i in range(first, last + 1):
        t = Trade("BINANCE", symbol, "buy", Decimal("0.5"), Decimal(100 + i), T0 + i / 1000, id=str(i))
        await writer.trade(t, T0 + i / 1000 + 0.001)


def _stream_ids(url: str, key: str = TRADES_KEY) -> list[int]:
    client = redis.Redis.from_url(url)
    return [row[3] for _, fields in client.xrange(key) for row in msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])]


def _gap_rows(url: str) -> list[list[Any]]:
    client = redis.Redis.from_url(url)
    return [row for _, fields in client.xrange(GAPS_KEY) for row in msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])]


def test_a_write_whose_reply_is_lost_is_retried_without_a_duplicate(tmp_path: Path, redis_url: str,
                                                                    redis_server: PrivateRedis) -> None:
    async def scenario() -> int:
        proxy = await LossyRedisProxy(redis_server.port).start()
        writer = _writer(proxy.url, tmp_path)
        await _trades(writer, 1, 50)
        await writer.flush()  # prepares (ids) and writes 1..50
        await _trades(writer, 51, 80)
        proxy.drop_next_exec_reply = True
        await writer.flush()  # EXEC runs in Redis, its reply is lost: the writer cannot know
        assert proxy.dropped == 1 and writer.spill.backlogged() == [TRADES_KEY]
        await _trades(writer, 81, 90)
        await writer.flush()  # the retry is refused as already there; 81..90 follow
        await proxy.close()
        return len(writer.spill.backlogged())

    assert asyncio.run(scenario()) == 0
    assert _stream_ids(redis_url) == list(range(1, 91))


def test_a_stream_at_its_bound_spills_in_order_and_drains_when_the_aggregator_catches_up(
        tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> list[int]:
        writer = _writer(redis_url, tmp_path, maxlen=2, batch=5)
        landed: list[int] = []
        for start in range(1, 60, 5):  # twelve batches of five trades; two fit at a time
            await _trades(writer, start, start + 4)
            await writer.flush()
            assert client.xlen(TRADES_KEY) <= 2
        assert writer.spill.backlogged() == [TRADES_KEY] and any((tmp_path / "spill").rglob("*.mpk.zst"))
        while writer.spill.backlogged() or client.xlen(TRADES_KEY):
            landed += _stream_ids(redis_url)
            client.xtrim(TRADES_KEY, maxlen=0)  # what the aggregator does once entries are landed
            await writer.flush()
        return landed

    assert asyncio.run(scenario()) == list(range(1, 61))


def test_a_full_spill_drops_records_as_overflow_gaps_with_their_trade_ids(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        writer = _writer(redis_url, tmp_path, maxlen=1, spill_bytes=1, batch=10)
        await _trades(writer, 1, 10)
        await writer.flush()  # fits: the stream was empty
        await _trades(writer, 11, 20)
        await writer.flush()  # at the bound, and the spill holds 1 byte: dropped
        await writer.flush()

    asyncio.run(scenario())
    assert _stream_ids(redis_url) == list(range(1, 11))
    overflow = [r for r in _gap_rows(redis_url) if r[4] == "overflow"]
    assert [(r[0], r[3], r[5], r[6]) for r in overflow] == [("BTC-USDT", "trades", 11, 20)]
    assert "10 records dropped" in overflow[0][7]


def test_a_restarted_writer_writes_a_restart_gap_bounded_by_the_last_cached_id(tmp_path: Path, redis_url: str) -> None:
    async def first() -> None:
        writer = _writer(redis_url, tmp_path)
        await _trades(writer, 1, 10)
        await writer.flush()
        await _trades(writer, 11, 14)  # buffered, never flushed: the process is killed

    async def second() -> None:
        writer = _writer(redis_url, tmp_path)
        await _trades(writer, 15, 20)
        await writer.flush()

    asyncio.run(first())
    asyncio.run(second())
    assert _stream_ids(redis_url) == [*range(1, 11), *range(15, 21)]
    restart = [r for r in _gap_rows(redis_url) if r[4] == "restart"]
    assert [(r[0], r[3], r[5], r[6]) for r in restart] == [("BTC-USDT", "trades", 11, 14)]
    assert "no data from" in restart[0][7]


def test_a_reconnect_gap_is_written_with_the_next_trade_and_bounds_the_missing_ids(
        tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        writer = _writer(redis_url, tmp_path)
        await _trades(writer, 1, 5)
        writer.open_gap("BTC-USDT", "trades", "disconnect", "no frames from 1 to 2")
        await _trades(writer, 9, 12)  # 6..8 were sent while the socket was down
        await writer.flush()

    asyncio.run(scenario())
    rows = [r for r in _gap_rows(redis_url) if r[4] == "disconnect"]
    assert [(r[5], r[6]) for r in rows] == [(6, 8)]


def test_stop_completes_the_write_in_flight_and_marks_the_stop(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> None:
        writer = _writer(redis_url, tmp_path)
        writer.start(asyncio.get_running_loop())
        await _trades(writer, 1, 2000)
        while not writer._lock.locked():  # the flusher has taken the buffers and awaits Redis...
            await asyncio.sleep(0)
        await writer.stop()  # ...and stop lets that write finish, then writes the rest

    asyncio.run(scenario())
    assert _stream_ids(redis_url) == list(range(1, 2001))
    stopped = [r for r in _gap_rows(redis_url) if r[4] == "stopped"]
    assert [(r[0], r[3], r[5], r[6]) for r in stopped] == [("BTC-USDT", "trades", 2001, None)]
    state = redis.Redis.from_url(redis_url).hgetall(collector_state_key("BINANCE"))
    assert state[b"records_trades"] == b"2000"


def test_redis_down_keeps_batches_in_the_spill_until_it_answers(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path / "redis", persist=True).start()
    try:
        async def scenario() -> None:
            writer = _writer(server.url, tmp_path)
            await _trades(writer, 1, 10)
            await writer.flush()
            server.stop()
            await _trades(writer, 11, 30)
            await writer.flush()
            assert writer.spill.backlogged() == [TRADES_KEY]
            server.start()
            await writer.flush()
            assert not writer.spill.backlogged()

        asyncio.run(scenario())
        assert _stream_ids(server.url) == list(range(1, 31))
    finally:
        server.stop()


def test_a_second_writer_for_one_stream_stops_the_first(tmp_path: Path, redis_url: str) -> None:
    async def scenario() -> BaseException | None:
        old = _writer(redis_url, tmp_path / "a")
        await _trades(old, 1, 5)
        await old.flush()
        new = _writer(redis_url, tmp_path / "b")
        await _trades(new, 6, 10)
        await new.flush()
        await _trades(old, 11, 12)
        try:
            await old.flush()
        except Exception as err:  # the writer's flusher boundary turns this into a non-zero exit
            return err
        return None

    err = asyncio.run(scenario())
    assert err is not None and "another writer" in str(err)


def test_an_unexpected_flusher_error_is_logged_and_stops_the_collector_non_zero(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    signals: list[int] = []
    monkeypatch.setattr("data_feed.collector.writer.os.kill", lambda pid, sig: signals.append(sig))

    async def scenario() -> StreamWriter:
        writer = _writer(redis_url, tmp_path)

        def broken(taken: Any) -> Any:
            raise RuntimeError("a bug in the flusher")

        monkeypatch.setattr(writer.delivery, "encode", broken)
        writer.start(asyncio.get_running_loop())
        await _trades(writer, 1, 5)
        while not signals:
            await asyncio.sleep(0.01)
        return writer

    writer = asyncio.run(scenario())
    assert signals == [signal.SIGTERM]  # cryptofeed's handler stops the feed; the collector then exits 1
    assert isinstance(writer.failed, RuntimeError)


def test_restart_and_reconnect_gaps_are_announced_on_the_bus_when_they_open(tmp_path: Path, redis_url: str) -> None:
    """Live consumers hear of an outage at once (``GapTracker.open_notice``, bus only, never cached), from the
    last cached record on: a restart at the writer's start, before any record, and a reconnect as detected."""
    from data_feed.bus.wire import Proxy, Publisher, Subscriber, decode_rows, endpoints
    from data_feed.contracts.schemas import OPEN_NOTICE
    from tests.conftest import make_config

    cfg = make_config(tmp_path)
    Path(cfg.spawner.run_dir).mkdir(parents=True, exist_ok=True)
    proxy = Proxy(cfg).start()
    pub_ep, sub_ep = endpoints(cfg)
    listener = Subscriber(sub_ep, [b"gaps."], 10_000)

    def notices() -> list[list[Any]]:
        out: list[list[Any]] = []
        while (msg := listener.recv(500)) is not None:
            out += [r for r in decode_rows(msg[1]) if str(r[7]).startswith(OPEN_NOTICE)]
        return out

    async def first() -> None:
        writer = _writer(redis_url, tmp_path)
        await _trades(writer, 1, 10)
        await writer.flush()

    async def second() -> list[list[Any]]:
        writer = _writer(redis_url, tmp_path)
        writer.bus = Publisher(pub_ep, 10_000)
        try:
            await writer.flush()  # the start-up: previous marks read, restart gaps opened, nothing to write
            at_start = notices()
            writer.open_gap("BTC-USDT", "trades", "disconnect", "no frames")
            return [*at_start, *notices()]
        finally:
            writer.bus.close()

    try:
        asyncio.run(first())
        got = asyncio.run(second())
    finally:
        listener.close()
        proxy.stop()
    assert [(r[0], r[3], r[4], r[9]) for r in got] == [("BTC-USDT", "trades", "restart", None),
                                                       ("BTC-USDT", "trades", "disconnect", None)]
    last_cached_ns = round((T0 + 10 / 1000) * 1e6) * 1000  # trade 10's exchange time, as the mark holds it
    assert [r[8] for r in got] == [last_cached_ns, last_cached_ns]
    assert not [r for r in _gap_rows(redis_url) if str(r[7]).startswith(OPEN_NOTICE)], "notices are never cached"


def test_a_full_batch_of_one_channel_wakes_the_flusher_before_the_interval(tmp_path: Path, redis_url: str) -> None:
    """The callbacks count nothing: a buffer at ``batch_max_records`` wakes the flusher, a partial one waits."""
    async def scenario() -> tuple[list[int], list[int]]:
        cfg = RedisConfig(stream_maxlen=1000, batch_max_records=10, batch_max_ms=60_000)
        writer = StreamWriter(aioredis.Redis.from_url(redis_url), "BINANCE", cfg, Spill(tmp_path / "spill", 10**7),
                              {"trades": ("BTC-USDT",)})
        writer.start(asyncio.get_running_loop())
        await _trades(writer, 1, 9)
        await asyncio.sleep(0.3)
        partial = _stream_ids(redis_url)  # nine wait: the interval is a minute away
        await _trades(writer, 10, 10)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if _stream_ids(redis_url):
                break
        full = _stream_ids(redis_url)
        await writer.stop()
        return partial, full

    partial, full = asyncio.run(scenario())
    assert partial == [] and full == list(range(1, 11))


def test_every_callback_carries_cryptofeeds_backend_hooks_to_the_writer(tmp_path: Path, redis_url: str) -> None:
    """cryptofeed starts and stops backends through ``start``/``stop`` attributes of the callbacks it was given."""
    writer = _writer(redis_url, tmp_path)
    for callback in writer.callbacks().values():
        assert callback.start == writer.start and callback.stop == writer.stop
    assert writer.pending == 0
