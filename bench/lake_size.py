"""Lake size: bytes per trade row in default-length slices, and what the encoding costs a query.

Trades come from the simulator's own market model (``data_feed.sim.market``) at the default rate
(20 trades/s per symbol), stamped as a collector would (receipt 1-5 ms after the event), cut into slices of
the default length (``lake.slice_seconds``) and written by the lake's own writer (``data_feed.lake.layout.write_slice``,
whose encodings come from ``schemas.parquet_write_options``). The baseline is the same rows written with
plain zstd (pyarrow's defaults), in the same run. A DuckDB query over each lake (per-minute OHLC-style
aggregation over every file) is timed in interleaved rounds, best of each, so the encoding's cost on reads
is a ratio, not an absolute.

Ends with ``RESULT lake_bytes_per_trade <bytes>`` (target <= 20) and ``RESULT lake_query_time_ratio
<encoded / baseline>`` (target <= ~1.1: no slower to read).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from data_feed.contracts.config import SimulatedMarketConfig, load_config
from data_feed.contracts.schemas import NS_PER_SECOND, TRADES
from data_feed.lake.layout import SliceKey, write_slice
from data_feed.sim.market import SymbolMarket, price_str, size_str

# the volume is summed as exact decimals: a float sum's last bits depend on the order DuckDB's threads add in
QUERY = """select date_trunc('minute', make_timestamp(ts_event // 1000)) as m, first(price order by ts_event, id),
max(price), min(price), last(price order by ts_event, id), sum(amount::decimal(38, 10)), count(distinct id)
from read_parquet('{glob}') group by m order by m"""


def trades(symbol: str, slices: int, slice_seconds: int, seed: int) -> list[pa.Table]:
    market = SymbolMarket("BINANCE", symbol, SimulatedMarketConfig(), seed)
    rng = random.Random(seed)
    start = 1_790_000_000.0
    out = []
    for i in range(slices):
        events = market.advance(slice_seconds, start + (i + 1) * slice_seconds)
        rows = [e.trade for e in events if e.trade is not None]
        ts = [int(t.timestamp * NS_PER_SECOND) for t in rows]
        out.append(pa.table({
            "ts_event": ts,
            "ts_recv": [t + rng.randint(1_000_000, 5_000_000) for t in ts],
            "id": [t.trade_id for t in rows],
            "id_text": pa.nulls(len(rows), pa.string()),
            "side": [t.taker_side for t in rows],
            "price": [float(price_str(t.price)) for t in rows],
            "amount": [float(size_str(t.size)) for t in rows],
        }, schema=TRADES))
    return out


def lake_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=30, help="slices per symbol")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved query rounds")
    args = parser.parse_args()
    cfg = load_config()  # the embedded default
    level, slice_seconds = cfg.lake.compression_level, cfg.lake.slice_seconds
    with tempfile.TemporaryDirectory() as tmp:
        encoded, baseline = Path(tmp) / "encoded", Path(tmp) / "baseline"
        rows = 0
        for n, symbol in enumerate(("BTC-USDT", "ETH-USDT")):
            for i, table in enumerate(trades(symbol, args.slices, slice_seconds, seed=n)):
                first_s = int(table["ts_event"][0].as_py()) // NS_PER_SECOND
                key = SliceKey("trades", "BINANCE", symbol, first_s // slice_seconds * slice_seconds * NS_PER_SECOND)
                path = write_slice(encoded, key, table, f"{i}-0", level)
                base = baseline / path.relative_to(encoded)
                base.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, base, compression="zstd", compression_level=level)
                rows += table.num_rows
        enc_b, base_b = lake_bytes(encoded), lake_bytes(baseline)
        print(f"{rows:,} trade rows in {2 * args.slices} slices of {slice_seconds} s "
              f"({rows / (2 * args.slices):,.0f} rows per slice)")
        print(f"baseline (plain zstd {level}): {base_b:,} bytes, {base_b / rows:.2f} bytes/row")
        print(f"lake writer:               {enc_b:,} bytes, {enc_b / rows:.2f} bytes/row")
        times: dict[str, list[float]] = {"baseline": [], "encoded": []}
        results = {}
        for _ in range(args.rounds):
            for name, root in (("baseline", baseline), ("encoded", encoded)):
                con = duckdb.connect()
                t0 = time.perf_counter()
                results[name] = con.execute(QUERY.format(glob=f"{root}/**/*.parquet")).fetchall()
                times[name].append(time.perf_counter() - t0)
                con.close()
        differ = [(a, c) for a, c in zip(results["baseline"], results["encoded"], strict=True) if a != c]
        assert not differ, f"the encoded lake answers differently in {len(differ)} minutes: {differ[:3]}"
        best = {k: min(v) for k, v in times.items()}
        print("query best of {}: baseline {:.1f} ms, encoded {:.1f} ms".format(
            args.rounds, best["baseline"] * 1e3, best["encoded"] * 1e3))
    print(f"RESULT lake_bytes_per_trade {enc_b / rows:.2f}")
    print(f"RESULT lake_query_time_ratio {best['encoded'] / best['baseline']:.3f}")


if __name__ == "__main__":
    main()
