"""Collector ingest throughput: records/s into Redis vs cryptofeed's bare parse rate, same frames, same run.

Both paths run cryptofeed's real ``Binance.message_handler`` over the same
pre-built combined-stream ``aggTrade`` frames. The baseline's callback does
nothing; the measured path is the collector's own feed class and StreamWriter,
writing batches to a private redis-server, timed until the last record is in
Redis (verified by counting). Prints the figures and ends with
``RESULT ingest_ratio <collector rate / bare rate>`` (target >= 0.6).

    .venv/bin/python bench/ingest.py [--frames 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import redis
import redis.asyncio as aioredis
from cryptofeed.defines import TRADES
from cryptofeed.exchanges import Binance
from cryptofeed.symbols import Symbols

from data_feed.cache.redis_server import PrivateRedis
from data_feed.cache.streams import ENTRY_PAYLOAD_FIELD, stream_key
from data_feed.collector.exchanges import feed_class
from data_feed.collector.writer import StreamWriter
from data_feed.contracts.config import RedisConfig

YIELD_EVERY_FRAMES = 50  # a websocket read yields to the loop between frames; mimic it on both paths


def make_frames(n: int) -> list[str]:
    frames = []
    t0 = 1_700_000_000_000
    for i in range(1, n + 1):
        data = {"e": "aggTrade", "E": t0 + i, "s": "BTCUSDT", "a": i, "p": f"{35000 + (i % 500) * 0.01:.2f}",
                "q": f"{0.001 * (1 + i % 7):.8f}", "f": i, "l": i, "T": t0 + i, "m": bool(i % 2), "M": True}
        frames.append(json.dumps({"stream": "btcusdt@aggTrade", "data": data}))
    return frames


def prime_symbols() -> None:
    """cryptofeed looks symbols up over REST at construction; the bench has no exchange, so seed the cache."""
    Symbols.set(Binance.id, {"BTC-USDT": "BTCUSDT"}, {})


async def _drive(feed: Any, frames: list[str]) -> None:
    for i, frame in enumerate(frames):
        await feed.message_handler(frame, None, time.time())
        if i % YIELD_EVERY_FRAMES == 0:
            await asyncio.sleep(0)


async def bare_rate(frames: list[str]) -> float:
    count = 0

    async def noop(obj: Any, receipt: float) -> None:
        nonlocal count
        count += 1

    feed = Binance(symbols=["BTC-USDT"], channels=[TRADES], callbacks={TRADES: noop})
    start = time.perf_counter()
    await _drive(feed, frames)
    elapsed = time.perf_counter() - start
    assert count == len(frames), count
    return len(frames) / elapsed


async def collector_rate(frames: list[str], url: str) -> float:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    writer = StreamWriter(client, "BINANCE", RedisConfig(stream_maxlen=10_000_000))
    feed = feed_class("BINANCE", None)(symbols=["BTC-USDT"], channels=[TRADES],
                                        callbacks={TRADES: writer.callbacks()[TRADES]})
    writer.feed = feed
    writer.start(asyncio.get_running_loop())
    start = time.perf_counter()
    await _drive(feed, frames)
    await writer.stop()
    elapsed = time.perf_counter() - start
    await client.aclose()
    landed = count_records(url)
    assert landed == len(frames), f"{landed} records in Redis, expected {len(frames)}"
    return len(frames) / elapsed


def count_records(url: str) -> int:
    client = redis.Redis.from_url(url)
    entries = client.xrange(stream_key("BINANCE", "trades"))
    return sum(len(msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])) for _, fields in entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    prime_symbols()
    frames = make_frames(args.frames)
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp), persist=False) as server:
        bare, coll = [], []
        for r in range(args.rounds):  # alternate so drift hits both paths alike
            bare.append(asyncio.run(bare_rate(frames)))
            coll.append(asyncio.run(collector_rate(frames, server.url)))
            print(f"round {r + 1}: bare parse {bare[-1]:,.0f} frames/s; collector into Redis {coll[-1]:,.0f} records/s")
    best_bare, best_coll = max(bare), max(coll)
    print(f"best bare parse: {best_bare:,.0f} frames/s ({args.frames:,} aggTrade frames)")
    print(f"best collector:  {best_coll:,.0f} records/s into Redis (verified by counting)")
    print(f"RESULT ingest_ratio {best_coll / best_bare:.3f}")


if __name__ == "__main__":
    main()
