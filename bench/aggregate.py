"""Aggregator throughput: rows/s from Redis streams to parquet in the lake, beside a bare pyarrow write.

Fills a private redis-server with trade batches exactly as the collector's
writer caches them (``encode_batch``: row tuples, float-second times), then
times one Aggregator draining them into the lake (read, decode, slice, write
zstd parquet, journal, catalog, acknowledge). The baseline writes the same rows,
already as one Arrow table, with ``pyarrow.parquet.write_table`` to as many
files. Prints both and ends with ``RESULT aggregate_rows_per_s <rows/s>``
(target >= 500,000 per aggregator process).

    .venv/bin/python bench/aggregate.py [--rows 2000000] [--symbols 4]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from data_feed.aggregator.role import Aggregator
from data_feed.cache.redis_server import PrivateRedis
from data_feed.cache.streams import decode_batch, encode_batch, stream_key
from data_feed.contracts.config import parse_config
from data_feed.lake.layout import channel_files

T0 = 1_700_000_000.0
ROWS_PER_ENTRY = 1000  # the collector's default batch_max_records
SLICE_SECONDS = 60
TRADES_PER_SECOND = 2000  # per symbol: a slice holds 120,000 rows


def make_entries(rows: int, symbols: int) -> list[dict[bytes, bytes]]:
    names = [f"S{i}-USDT" for i in range(symbols)]
    entries, batch = [], []
    for i in range(rows):
        t = T0 + (i // symbols) / TRADES_PER_SECOND
        batch.append((names[i % symbols], t, t + 0.001, i, None, "buy" if i % 2 else "sell",
                      30_000.0 + (i % 1000) * 0.5, 0.001 * (1 + i % 7)))
        if len(batch) == ROWS_PER_ENTRY:
            entries.append(encode_batch("trades", batch))
            batch = []
    if batch:
        entries.append(encode_batch("trades", batch))
    return entries


def fill(client: redis.Redis, entries: list[dict[bytes, bytes]]) -> None:
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i, fields in enumerate(entries):
        pipe.xadd(stream_key("BINANCE", "trades"), fields)  # type: ignore[arg-type]
        if i % 500 == 0:
            pipe.execute()
    pipe.execute()


def aggregator_rate(url: str, lake: Path, rows: int, profile: bool) -> tuple[float, int]:
    cfg = parse_config({"exchanges": {"BINANCE": {"trades": {"symbols": ["BTC-USDT"]}}},
                        "lake": {"root": str(lake), "slice_seconds": SLICE_SECONDS, "allowed_lateness_seconds": 0}})
    agg = Aggregator(cfg, redis.Redis.from_url(url))
    agg.ensure_groups()
    prof = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    agg.drain()
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    elapsed = time.perf_counter() - start
    files = channel_files(lake, "trades")
    landed = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    assert landed == rows, (landed, rows)
    return rows / elapsed, len(files)


def bare_rate(entries: list[dict[bytes, bytes]], out: Path, files: int) -> float:
    table = pa.concat_tables([decode_batch("trades", e) for e in entries]).drop_columns(["symbol"])
    step = -(-table.num_rows // files)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i in range(files):
        pq.write_table(table.slice(i * step, step), out / f"{i}.parquet", compression="zstd", compression_level=3)
    return table.num_rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="print the aggregator's cProfile")
    args = parser.parse_args(argv)
    entries = make_entries(args.rows, args.symbols)
    with tempfile.TemporaryDirectory() as tmp:
        server = PrivateRedis(Path(tmp) / "redis", persist=False).start()
        try:
            fill(redis.Redis.from_url(server.url), entries)
            rate, files = aggregator_rate(server.url, Path(tmp) / "lake", args.rows, args.profile)
        finally:
            server.stop()
        bare = bare_rate(entries, Path(tmp) / "bare", files)
    report(args.rows, files, rate, bare)


def report(rows: int, files: int, rate: float, bare: float, **_: Any) -> None:
    print(f"rows {rows:,} in {files} slice files ({ROWS_PER_ENTRY} rows per stream entry)")
    print(f"bare pyarrow write_table (zstd 3)  {bare:>12,.0f} rows/s")
    print(f"aggregator Redis -> parquet        {rate:>12,.0f} rows/s  ({rate / bare:.2f} of bare)")
    print(f"RESULT aggregate_rows_per_s {rate:.0f}")


if __name__ == "__main__":
    main()
