"""Aggregator against a real redis-server: batches written by the collector's writer land once as parquet."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio as aioredis
from cryptofeed.types import OrderBook, Ticker, Trade

from data_feed.access.query import run_query
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import CONSUMER_GROUP, dead_letter_key, encode_batch, stream_key
from data_feed.collector.writer import StreamWriter
from data_feed.contracts.config import Config
from data_feed.lake.layout import channel_files
from tests.conftest import make_config

T0 = 1_700_000_000.0  # a minute boundary: 1700000000 % 60 == 20, so slices split inside the data


def _config(tmp_path: Path) -> Config:
    return make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})


async def _write_trades(url: str, cfg: Config, n: int, symbols: tuple[str, ...] = ("BTC-USDT", "ETH-USDT")) -> None:
    writer = StreamWriter(aioredis.Redis.from_url(url), "BINANCE", cfg.redis)
    for i in range(1, n + 1):
        for sym in symbols:
            t = Trade("BINANCE", sym, "buy" if i % 2 else "sell", Decimal("0.5"), Decimal(100 + i), T0 + i / 1000,
                      id=str(i))
            await writer.trade(t, T0 + i / 1000 + 0.001)
        if i % 997 == 0:
            await writer.flush()
    await writer.flush()
    assert writer.pending == 0


def test_trades_land_once_partitioned_by_exchange_symbol_date(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    asyncio.run(_write_trades(redis_url, cfg, 3000))
    client = redis.Redis.from_url(redis_url)
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    while agg.step(None):
        pass
    agg.drain()
    df = run_query(cfg.lake.root, "select symbol, count(*) n, count(distinct id) d, max(id) m, min(id) lo "
                                  "from trades group by 1 order by 1")
    assert df.to_dict("records") == [
        {"symbol": "BTC-USDT", "n": 3000, "d": 3000, "m": 3000, "lo": 1},
        {"symbol": "ETH-USDT", "n": 3000, "d": 3000, "m": 3000, "lo": 1},
    ]
    files = channel_files(Path(cfg.lake.root), "trades")
    assert len(files) == 2 * 4  # 3 s of trades over 1 s slices starting mid-second: 4 slices per symbol
    assert all("/trades/exchange=BINANCE/symbol=" in str(f) and "/date=2023-11-14/" in str(f) for f in files)
    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(files[0]).names == ["ts_event", "ts_recv", "id", "id_text", "side", "price", "amount"]
    assert client.xpending(stream_key("BINANCE", "trades"), CONSUMER_GROUP)["pending"] == 0


def test_slice_closes_when_watermark_passes_and_acks_only_written_entries(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    asyncio.run(_write_trades(redis_url, cfg, 1500, symbols=("BTC-USDT",)))
    client = redis.Redis.from_url(redis_url)
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    while agg.step(None):
        pass
    written = channel_files(Path(cfg.lake.root), "trades")
    assert len(written) == 1  # only the first slice is behind the watermark; the second stays open
    pending = client.xpending(stream_key("BINANCE", "trades"), CONSUMER_GROUP)["pending"]
    assert pending >= 1  # entries holding rows of the open slice are not acknowledged yet
    agg.drain()
    assert len(channel_files(Path(cfg.lake.root), "trades")) == 2
    assert client.xpending(stream_key("BINANCE", "trades"), CONSUMER_GROUP)["pending"] == 0


def test_crash_after_write_before_ack_rewrites_the_same_file(tmp_path: Path, redis_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    asyncio.run(_write_trades(redis_url, cfg, 2500, symbols=("BTC-USDT",)))
    client = redis.Redis.from_url(redis_url)
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()

    def die(*args: object, **kwargs: object) -> None:
        raise SystemExit("simulated crash between write and ack")

    monkeypatch.setattr(crashed, "_commit", die)
    with pytest.raises(SystemExit):
        while crashed.step(None):
            pass
    before = channel_files(Path(cfg.lake.root), "trades")
    assert len(before) == 1
    monkeypatch.undo()
    fresh = Aggregator(cfg, client)
    fresh.ensure_groups()
    fresh.recover_pending()
    fresh.drain()
    after = channel_files(Path(cfg.lake.root), "trades")
    assert before[0] in after and len(after) == 3
    df = run_query(cfg.lake.root, "select count(*) n, count(distinct id) d, max(id) m from trades")
    assert df.iloc[0].tolist() == [2500, 2500, 2500]


def test_undecodable_entry_is_dead_lettered_and_the_rest_lands(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream_key("BINANCE", "trades"), {b"b": b"\xc1garbage", b"n": b"1"})
    asyncio.run(_write_trades(redis_url, cfg, 10, symbols=("BTC-USDT",)))
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    assert client.xlen(dead_letter_key(stream_key("BINANCE", "trades"))) == 1
    assert run_query(cfg.lake.root, "select count(*) from trades").iloc[0, 0] == 10


def test_book_snapshot_and_deltas_are_rows_per_level_change(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)

    async def write() -> None:
        writer = StreamWriter(aioredis.Redis.from_url(redis_url), "BINANCE", cfg.redis)
        book = OrderBook("BINANCE", "BTC-USDT", bids={Decimal(99): Decimal(1), Decimal(98): Decimal(2)},
                         asks={Decimal(101): Decimal(1)})
        book.timestamp, book.delta, book.sequence_number = T0, None, 10
        await writer.book(book, T0)
        book.timestamp, book.delta, book.sequence_number = T0 + 0.1, {"bid": [(Decimal(99), Decimal(0))],
                                                                        "ask": [(Decimal(102), Decimal(3))]}, 12
        await writer.book(book, T0)  # same receive time: the writer must still order the two messages
        await writer.ticker(Ticker("BINANCE", "BTC-USDT", Decimal(98), Decimal(101), None), T0 + 0.2)
        await writer.flush()

    asyncio.run(write())
    agg = Aggregator(cfg, redis.Redis.from_url(redis_url))
    agg.ensure_groups()
    agg.drain()
    rows = run_query(cfg.lake.root, "select side, price, size, snapshot, sequence, ts_recv from l2_book "
                                    "order by ts_recv, side, price").to_dict("records")
    assert [(r["side"], r["price"], r["size"], r["snapshot"], r["sequence"]) for r in rows] == [
        ("ask", 101.0, 1.0, True, 10), ("bid", 98.0, 2.0, True, 10), ("bid", 99.0, 1.0, True, 10),
        ("ask", 102.0, 3.0, False, 12), ("bid", 99.0, 0.0, False, 12),
    ]
    assert rows[3]["ts_recv"] == rows[0]["ts_recv"] + 1000  # bumped by one microsecond
    ticker = run_query(cfg.lake.root, "select bid, ask, ts_event = ts_recv as recv_time from ticker")
    assert ticker.to_dict("records") == [{"bid": 98.0, "ask": 101.0, "recv_time": True}]


def test_a_snapshot_of_history_lands_in_a_file_per_day_not_one_per_row(tmp_path: Path, redis_url: str) -> None:
    """9,400 one-minute candles in one subscription snapshot (two entries) span 6.5 days of 60 s slices: one file
    per (day, entry), every row once."""
    cfg = make_config(tmp_path, exchanges={"BINANCE": {"candles": {"symbols": ["BTC-USDT"]}}})  # 60 s slices
    client = redis.Redis.from_url(redis_url)
    key = stream_key("BINANCE", "candles")
    start = 1_699_920_000.0  # a UTC midnight
    rows = [("BTC-USDT", start + 60 * i, start + 60 * 9400, int((start + 60 * i) * 1e9),
             int((start + 60 * i + 59.999) * 1e9), "1m", 10, 1.0, 2.0, 0.5, 1.5, 3.0, True) for i in range(9400)]
    for chunk in (rows[:5000], rows[5000:]):
        client.xadd(key, encode_batch("candles", chunk))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    files = channel_files(Path(cfg.lake.root), "candles")
    days = run_query(cfg.lake.root, "select count(distinct date) from candles").iloc[0, 0]
    assert days == 7 and len(files) <= days + 1  # the day the two entries share has a part from each
    got = run_query(cfg.lake.root, "select count(*) n, count(distinct start) d from candles").iloc[0].tolist()
    assert got == [9400, 9400]
