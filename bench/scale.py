"""Scaling curve: records landed per second and CPU per landed record at 1, 2, 4 and 8 feeds.

Runs the real pipeline (``data-feed run``: simulator over TLS, one cryptofeed
collector per exchange, private Redis, bus, featurizer, aggregator) at each point
of the curve. A *feed* is one simulated exchange-symbol pair with trades and an
L2 book at a fixed rate (``--trades``/``--books`` per second); point N runs N feeds
spread over as many exchanges as the simulator speaks (1, 2, 4, then 8 feeds on
all 6 exchanges: BINANCE and COINBASE with 2 symbols each), so both the number of
collector processes and the records per collector grow.

Cost per record is measured at the margin: each point runs twice, for
``--short`` and ``--long`` seconds, in fresh directories; the CPU seconds of the
whole process tree (``getrusage(RUSAGE_CHILDREN)`` across the run: the spawner
reaps every role and the private redis-server, so their time is included) and
the rows landed in the lake (trades + l2_book parquet, read back) are differenced
between the two runs. A least-squares line through the points splits the cost into
a fixed part (CPU cores the pipeline's loops take with any data) and a per-record
part; the fixed part is why CPU per record falls as feeds are added. Start-up
(imports, TLS, snapshots) and shutdown cancel out, leaving what each further
second of data costs. CPU time, unlike wall time, does
not shrink when the machine is busy, but cache contention can still move it:
``--rounds`` repeats the curve, interleaved, and takes each point's median.

Prints a table and ends with ``RESULT scale_cpu_per_record_8x <cpu/record at 8 over
the same at 1>`` (target <= 1.2) and ``RESULT scale_records_per_s_8x <rate>``.

    .venv/bin/python bench/scale.py [--points 1,2,4,8] [--short 10] [--long 30] [--rounds 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from data_feed.lake.layout import channel_files

ROOT = Path(__file__).resolve().parent.parent
# exchange -> symbols it lists for trades and l2_book in the simulator, in the order feeds are added
VENUES: dict[str, tuple[str, ...]] = {
    "BINANCE": ("BTC-USDT", "ETH-USDT", "SOL-USDT"),
    "COINBASE": ("BTC-USD", "ETH-USD", "SOL-USD"),
    "OKX": ("BTC-USDT", "ETH-USDT", "SOL-USDT"),
    "KRAKEN": ("BTC-USD", "ETH-USD", "SOL-USD"),
    "BYBIT": ("BTC-USDT", "ETH-USDT", "SOL-USDT"),
    "BINANCE_FUTURES": ("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"),
}
LANDED_CHANNELS = ("trades", "l2_book")


def feeds(n: int) -> dict[str, list[str]]:
    """N feeds over min(N, 6) exchanges: one symbol each first, then second symbols from the top."""
    names = list(VENUES)
    plan: dict[str, list[str]] = {}
    for i in range(n):
        exchange = names[i % len(names)]
        plan.setdefault(exchange, []).append(VENUES[exchange][i // len(names)])
    return plan


def write_config(tmp: Path, n: int, trades: float, books: float) -> Path:
    data: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "data-feed-config.yaml").read_text())
    data["exchanges"] = {
        exchange: {"source": "simulator", "trades": {"symbols": symbols},
                   "l2_book": {"symbols": symbols, "max_depth": 100},
                   "market": {"trades_per_second": trades, "book_updates_per_second": books, "levels": 50}}
        for exchange, symbols in feeds(n).items()}
    data["lake"].update(root=str(tmp / "lake"), slice_seconds=5, allowed_lateness_seconds=1)
    data["spawner"].update(run_dir=str(tmp / "run"), http_port=0)
    data["database"]["url"] = f"sqlite:///{tmp / 'run' / 'df.db'}"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def landed(lake: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for ch in LANDED_CHANNELS for f in channel_files(lake, ch))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Run:
    seconds: float
    cpu: float
    records: int


def run_once(n: int, seconds: float, trades: float, books: float) -> Run:
    with tempfile.TemporaryDirectory(prefix=f"df-scale-{n}-") as tmpdir:
        tmp = Path(tmpdir)
        config = write_config(tmp, n, trades, books)
        before = children_cpu()
        proc = subprocess.run([str(ROOT / ".venv" / "bin" / "data-feed"), "run", "--config", str(config),
                               "--duration", str(seconds), "--no-status"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=seconds + 240)
        cpu = children_cpu() - before
        if proc.returncode != 0:
            raise SystemExit(f"data-feed run ({n} feeds) exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return Run(seconds, cpu, landed(tmp / "lake"))


@dataclass(frozen=True)
class Point:
    feeds: int
    exchanges: int
    records_per_s: float
    cpu_per_record_us: float
    cpu_cores: float


def margin(n: int, short: Run, long: Run) -> Point:
    records = long.records - short.records
    if records <= 0:
        raise SystemExit(f"{n} feeds: the long run landed {long.records} rows, the short one {short.records}")
    span = long.seconds - short.seconds
    cpu = long.cpu - short.cpu
    return Point(n, len(feeds(n)), records / span, cpu / records * 1e6, cpu / span)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="1,2,4,8", help="feed counts; the first is the baseline")
    parser.add_argument("--trades", type=float, default=200, help="trades per second per feed")
    parser.add_argument("--books", type=float, default=400, help="book level changes per second per feed")
    parser.add_argument("--short", type=float, default=10, help="seconds of the short run")
    parser.add_argument("--long", type=float, default=30, help="seconds of the long run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the curve, interleaved; medians reported")
    args = parser.parse_args(argv)
    points = [int(p) for p in args.points.split(",")]
    results: dict[int, list[Point]] = {n: [] for n in points}
    started = time.monotonic()
    for r in range(args.rounds):
        for n in points:
            short = run_once(n, args.short, args.trades, args.books)
            long = run_once(n, args.long, args.trades, args.books)
            point = margin(n, short, long)
            results[n].append(point)
            print(f"round {r + 1}/{args.rounds}: {n} feeds on {point.exchanges} exchanges: "
                  f"{point.records_per_s:,.0f} records/s, {point.cpu_per_record_us:.1f} us CPU/record "
                  f"({time.monotonic() - started:.0f} s so far)", flush=True)
    print(f"\nper feed: {args.trades:g} trades/s + {args.books:g} book changes/s; margin of a {args.long:g} s "
          f"over a {args.short:g} s run; median of {args.rounds} round(s)")
    print(f"{'feeds':>5} {'exchanges':>9} {'records/s':>11} {'CPU cores':>9} {'us CPU/record':>14} {'vs first':>8}")
    base = statistics.median(p.cpu_per_record_us for p in results[points[0]])
    for n in points:
        rate = statistics.median(p.records_per_s for p in results[n])
        cores = statistics.median(p.cpu_cores for p in results[n])
        per = statistics.median(p.cpu_per_record_us for p in results[n])
        spread = [f"{p.cpu_per_record_us:.1f}" for p in results[n]]
        print(f"{n:>5} {len(feeds(n)):>9} {rate:>11,.0f} {cores:>9.2f} {per:>14.1f} {per / base:>8.2f}"
              f"   rounds: {', '.join(spread)}")
    if len(points) >= 2:  # cores = fixed + per-record cost x rate: what a second of the pipeline costs with no data
        rates = [statistics.median(p.records_per_s for p in results[n]) for n in points]
        cores = [statistics.median(p.cpu_cores for p in results[n]) for n in points]
        slope, fixed = statistics.linear_regression(rates, cores)
        print(f"least squares over the points: {fixed:.2f} CPU cores fixed (every role's own loops) + "
              f"{slope * 1e6:.1f} us CPU per record landed")
    last = points[-1]
    print(f"RESULT scale_records_per_s_{last}x {statistics.median(p.records_per_s for p in results[last]):.0f}")
    print(f"RESULT scale_cpu_per_record_{last}x "
          f"{statistics.median(p.cpu_per_record_us for p in results[last]) / base:.3f}")


if __name__ == "__main__":
    main()
