"""Query output speed: `data-feed query` of 20,000 trades as a table and as CSV, piped, beside the rich Table
the CLI rendered before (issue 9: 17.8 s for the table against 1.0 s for CSV).

Lands N trades (two symbols, 1-second slices) through a private redis-server and the real aggregator, then
times the CLI end to end (a subprocess whose stdout is a pipe, as ``| less`` or ``> file``): ``--format csv``,
``--format table --max-rows 0`` (every row), and the default table (1,000 rows and a note). The old renderer
(``rich.table.Table`` of ``str(value)`` cells, printed to an 80-column console) is timed in this process on
the same rows, beside the new one (``data_feed.access.output.write_table``). Ends with
``RESULT table_render_s <seconds of the CLI table of every row>``.

    .venv/bin/python bench/render.py [--rows 20000]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from data_feed.access.output import write_table
from data_feed.access.query import query_table
from data_feed.aggregator.role import Aggregator
from data_feed.cache.redis_server import PrivateRedis
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.config import parse_config

CLI = str(Path(sys.executable).parent / "data-feed")
T0 = 1_700_000_000.0
ROWS_PER_ENTRY = 1000
SQL = "select * from trades order by ts_recv"


def land(url: str, root: Path, rows: int) -> None:
    client = redis.Redis.from_url(url)
    batch = [("BTC-USDT" if i % 2 else "ETH-USDT", T0 + i / 200, T0 + i / 200 + 0.0003, i, None,
              "buy" if i % 3 else "sell", 65_000.0 + (i % 97) * 0.01, 0.001 * (1 + i % 13)) for i in range(rows)]
    for k in range(0, rows, ROWS_PER_ENTRY):
        client.xadd(stream_key("BINANCE", "trades"), encode_batch("trades", batch[k:k + ROWS_PER_ENTRY]))  # type: ignore[arg-type]
    cfg = parse_config({"exchanges": {"BINANCE": {"trades": {"symbols": ["BTC-USDT", "ETH-USDT"]}}},
                        "lake": {"root": str(root), "slice_seconds": 1, "allowed_lateness_seconds": 0}})
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    agg.catalog.close()


def cli_seconds(root: Path, *options: str) -> tuple[float, int]:
    """Wall time of one CLI run writing to a pipe, and the bytes it wrote."""
    start = time.perf_counter()
    out = subprocess.run([CLI, "query", SQL, "--lake", str(root), *options], capture_output=True, check=True)
    return time.perf_counter() - start, len(out.stdout)


def old_table_seconds(root: Path) -> float:
    """The renderer before: a rich Table of str() cells from the pandas frame, on an 80-column console."""
    from rich.console import Console
    from rich.table import Table

    from data_feed.access.query import run_query

    df = run_query(root, SQL)
    start = time.perf_counter()
    table = Table()
    for col in df.columns:
        table.add_column(str(col))
    for row in df.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    Console(file=io.StringIO(), width=80).print(table)
    return time.perf_counter() - start


def new_table_seconds(root: Path) -> float:
    table = query_table(root, SQL)
    start = time.perf_counter()
    write_table(table, io.StringIO(), None)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = PrivateRedis(Path(tmp) / "redis", persist=False).start()
        try:
            land(server.url, Path(tmp) / "lake", args.rows)
        finally:
            server.stop()
        root = Path(tmp) / "lake"
        csv_s, csv_bytes = cli_seconds(root, "--format", "csv")
        table_s, table_bytes = cli_seconds(root, "--format", "table", "--max-rows", "0")
        default_s, _ = cli_seconds(root)
        old_s, new_s = old_table_seconds(root), new_table_seconds(root)
    print(f"{args.rows:,} trades, `{SQL}`, stdout a pipe")
    print(f"CLI --format csv                     {csv_s:6.2f} s  ({csv_bytes:,} bytes)")
    print(f"CLI --format table --max-rows 0      {table_s:6.2f} s  ({table_bytes:,} bytes)")
    print(f"CLI --format table (1,000 rows)      {default_s:6.2f} s")
    print(f"render only, rich Table (before)     {old_s:6.2f} s")
    print(f"render only, write_table (now)       {new_s:6.2f} s")
    print(f"RESULT table_render_s {table_s:.2f}")


if __name__ == "__main__":
    main()
