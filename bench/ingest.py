"""Collector ingest throughput: records/s into Redis vs cryptofeed's bare parse rate, same frames, same run.

Both paths run cryptofeed's real ``Binance.message_handler`` over the same
pre-built combined-stream ``aggTrade`` frames. The baseline's callback does
nothing; the measured path is the collector's own feed class and StreamWriter,
writing batches to a private redis-server, timed until the last record is in
Redis (verified by counting). The two paths alternate for ``--rounds`` rounds, so drift and other load hit
both alike; each round prints both rates and their ratio, with the CPU time of this thread per record (less
sensitive than wall time to other processes on the machine) and the load average around the run. Ends with
``RESULT ingest_ratio <best collector rate / best bare rate>`` over the interleaved rounds (target >= 0.8).

    .venv/bin/python bench/ingest.py [--frames 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


class Timing:
    """Wall and thread CPU time of one path over the frames."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timing:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu


async def bare_rate(frames: list[str]) -> Timing:
    count = 0

    async def noop(obj: Any, receipt: float) -> None:
        nonlocal count
        count += 1

    feed = Binance(symbols=["BTC-USDT"], channels=[TRADES], callbacks={TRADES: noop})
    with Timing() as timing:
        await _drive(feed, frames)
    assert count == len(frames), count
    return timing


async def collector_rate(frames: list[str], url: str) -> Timing:
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    writer = StreamWriter(client, "BINANCE", RedisConfig(stream_maxlen=10_000_000))
    feed = feed_class("BINANCE", None)(symbols=["BTC-USDT"], channels=[TRADES],
                                        callbacks={TRADES: writer.callbacks()[TRADES]})
    writer.feed = feed
    writer.start(asyncio.get_running_loop())
    with Timing() as timing:
        await _drive(feed, frames)
        await writer.stop()
    await client.aclose()
    landed = count_records(url)
    assert landed == len(frames), f"{landed} records in Redis, expected {len(frames)}"
    return timing


def count_records(url: str) -> int:
    client = redis.Redis.from_url(url)
    entries = client.xrange(stream_key("BINANCE", "trades"))
    return sum(len(msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])) for _, fields in entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    prime_symbols()
    frames = make_frames(args.frames)
    n = len(frames)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, PrivateRedis(Path(tmp), persist=False) as server:
        bare: list[Timing] = []
        coll: list[Timing] = []
        for r in range(args.rounds):  # alternate so drift hits both paths alike
            bare.append(asyncio.run(bare_rate(frames)))
            coll.append(asyncio.run(collector_rate(frames, server.url)))
            b, c = bare[-1], coll[-1]
            print(f"round {r + 1}: bare parse {n / b.wall:,.0f} frames/s, collector into Redis {n / c.wall:,.0f} "
                  f"records/s: ratio {b.wall / c.wall:.3f} (CPU {b.cpu / n * 1e6:.2f} vs {c.cpu / n * 1e6:.2f} us "
                  f"per record: {b.cpu / c.cpu:.3f})")
    best_bare, best_coll = n / min(t.wall for t in bare), n / min(t.wall for t in coll)
    cpu_ratio = min(t.cpu for t in bare) / min(t.cpu for t in coll)
    print(f"load average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"best bare parse: {best_bare:,.0f} frames/s ({n:,} aggTrade frames)")
    print(f"best collector:  {best_coll:,.0f} records/s into Redis (verified by counting)")
    print(f"best CPU per record: ratio {cpu_ratio:.3f}")
    print(f"RESULT ingest_ratio {best_coll / best_bare:.3f}")


if __name__ == "__main__":
    main()
