"""Featurizer kernel throughput: 1-second OHLCV+VWAP+count over the same synthetic trades, three ways.

Batch: the Cython kernel (``featurizer._kernels.trade_slices``, which also computes buy/sell
volume, notional, realized variance and first/last event time, in double-double sums) against
polars ``group_by_dynamic`` and pandas ``resample`` on the same 10 million trades in this process;
the results are cross-checked before any figure is printed. Same cores: the kernel runs on
OpenMP's threads (``batch_threads()``: one per core unless ``OMP_NUM_THREADS`` says otherwise),
polars on its thread pool (``POLARS_MAX_THREADS``, one per core by default), pandas on one; the bench
prints both counts. They take turns within every round (the order rotating from round to round),
so load from other processes falls on all of them alike; the bench prints each round's ratio, the
best, median and worst, and the load average before and after. Streaming: trades/s through the
featurizer role's own loop (``Featurizer.step``: bus SUB socket behind a real proxy, msgpack
decode, kernels, closed slices published on the bus and written to a private redis-server),
fed collector-style batches by another process. Target: ``features_vs_polars`` >= 1.5 (kernel
rows/s over polars rows/s, best time of each over the interleaved rounds), and the median of the
per-round ratios as well. Ends with ``RESULT features_vs_polars_median <median per-round ratio>``
and ``RESULT features_vs_polars <best-of-interleaved ratio>``.

    .venv/bin/python bench/features.py [--trades 10000000] [--rounds 9] [--stream-trades 2000000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import redis
import zmq

from data_feed.bus.wire import Proxy, Publisher, encode_rows, endpoints, market_topic
from data_feed.cache.redis_server import PrivateRedis
from data_feed.contracts.config import parse_config
from featurizer._kernels import batch_threads, trade_slices
from featurizer.features import values
from featurizer.role import Featurizer

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND
SPAN_SECONDS = 86_400
STREAM_BATCH_ROWS = 1_000
STREAM_SYMBOLS = ("BTC-USDT", "ETH-USDT")
STREAM_HWM_MESSAGES = 1_000_000
STREAM_EXCHANGE = "BINANCE"
STREAM_TRADES_PER_MARKET_SECOND = 50_000  # event-time density of the streamed trades: ~25k per symbol-second


def synthetic(n: int, seed: int = 7) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, SPAN_SECONDS * SECOND, n)).astype(np.int64)
    price = np.round(30_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n))), 2)
    return {"ts": ts, "price": price, "amount": rng.exponential(0.3, n), "buy": (rng.random(n) < 0.5).astype(np.uint8)}


def interleaved(rounds: int, fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Every function's time in every round (and its last output), the functions taking turns within a round
    and the first of them rotating from round to round, so that load from other processes and what the
    previous function left in the caches fall on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    outs: dict[str, Any] = {}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            outs[name] = fns[name]()
            times[name].append(time.perf_counter() - t)
    return times, outs


def run_kernel(d: dict[str, np.ndarray[Any, Any]]) -> Any:
    return trade_slices(d["ts"], d["price"], d["amount"], d["buy"], SECOND)


def run_polars(df: pl.DataFrame) -> pl.DataFrame:
    return (df.group_by_dynamic("ts", every="1s", closed="left", label="left")
            .agg(pl.col("price").first().alias("open"), pl.col("price").max().alias("high"),
                 pl.col("price").min().alias("low"), pl.col("price").last().alias("close"),
                 pl.col("amount").sum().alias("volume"), (pl.col("price") * pl.col("amount")).sum().alias("notional"),
                 pl.len().alias("count"))
            .with_columns((pl.col("notional") / pl.col("volume")).alias("vwap")))


def run_pandas(df: pd.DataFrame) -> pd.DataFrame:
    r = df.resample("1s")
    out = r["price"].ohlc()
    out["volume"] = r["amount"].sum()
    out["notional"] = r["notional"].sum()
    out["count"] = r["price"].count()
    out["vwap"] = out["notional"] / out["volume"]
    return out


def cross_check(kernel: Any, polars_out: pl.DataFrame, pandas_out: pd.DataFrame) -> None:
    got = values(kernel[kernel["n_trades"] > 0])
    assert len(got["vwap"]) == polars_out.height, "kernel and polars disagree on the number of non-empty seconds"
    for col in ("open", "high", "low", "close", "volume", "vwap", "count"):
        want = polars_out[col].to_numpy()
        mine = got["trade_count"] if col == "count" else got[col]
        np.testing.assert_allclose(mine, want, rtol=1e-9, err_msg=col)
    pd_nonempty = pandas_out[pandas_out["count"] > 0]
    np.testing.assert_allclose(got["vwap"], pd_nonempty["vwap"].to_numpy(), rtol=1e-9, err_msg="pandas vwap")


def batch(n: int, rounds: int) -> tuple[float, float]:
    """(best-of-interleaved ratio, median per-round ratio) of kernel over polars rows/s."""
    d = synthetic(n)
    print(f"{n:,} synthetic trades over {SPAN_SECONDS:,} s; {rounds} interleaved rounds, 1-second slices; "
          f"threads: kernel {batch_threads()} (OpenMP), polars {pl.thread_pool_size()}, pandas 1")
    pl_df = pl.DataFrame({"ts": pl.Series(d["ts"]).cast(pl.Datetime("ns")), "price": d["price"],
                          "amount": d["amount"]}).set_sorted("ts")
    pd_df = pd.DataFrame({"price": d["price"], "amount": d["amount"], "notional": d["price"] * d["amount"]},
                         index=pd.DatetimeIndex(d["ts"].view("datetime64[ns]")))
    load_before = os.getloadavg()[0]
    times, outs = interleaved(rounds, {"kernel": lambda: run_kernel(d), "polars": lambda: run_polars(pl_df),
                                       "pandas": lambda: run_pandas(pd_df)})
    load_after = os.getloadavg()[0]
    cross_check(outs["kernel"], outs["polars"], outs["pandas"])
    for name, label in (("kernel", "cython kernel"), ("polars", "polars group_by_dynamic"),
                        ("pandas", "pandas resample")):
        t, mid = min(times[name]), statistics.median(times[name])
        print(f"  {label:26s} best {t:8.3f} s  {n / t / 1e6:8.2f} M rows/s   median {mid:8.3f} s")
    ratios = [p / k for k, p in zip(times["kernel"], times["polars"], strict=True)]
    print("  kernel/polars per round: " + " ".join(f"{r:.2f}" for r in ratios))
    best = min(times["polars"]) / min(times["kernel"])
    print(f"  kernel/polars per round: best {max(ratios):.2f}, median {statistics.median(ratios):.2f}, "
          f"worst {min(ratios):.2f}; best of interleaved (each side's best time) {best:.2f}")
    print(f"  load average (1 min): {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} cores")
    return best, statistics.median(ratios)


def publisher(endpoint: str, n: int, ready: Any) -> None:
    """Another process: n trades as collector-style batches (``bus.Publisher``), one topic per symbol."""
    bus = Publisher(endpoint, STREAM_HWM_MESSAGES)
    rng = np.random.default_rng(11)
    span_ns = n * SECOND // STREAM_TRADES_PER_MARKET_SECOND
    ts_s = (np.sort(T0 + rng.integers(0, span_ns, n)) / 1e9).tolist()
    price = np.round(30_000 * np.exp(np.cumsum(rng.normal(0, 1e-4, n))), 2).tolist()
    amount = rng.exponential(0.3, n).tolist()
    payloads = []
    for start in range(0, n, STREAM_BATCH_ROWS):
        sym = STREAM_SYMBOLS[(start // STREAM_BATCH_ROWS) % len(STREAM_SYMBOLS)]
        rows = [[sym, ts_s[i], ts_s[i], i, None, "buy" if i % 3 else "sell", price[i], amount[i]]
                for i in range(start, min(start + STREAM_BATCH_ROWS, n))]
        payloads.append((market_topic("trades", STREAM_EXCHANGE, sym), encode_rows(rows)))
    ready.wait()
    time.sleep(0.5)  # let the subscription reach the proxy
    for topic, payload in payloads:
        bus.publish(topic, payload)
    bus.sock.setsockopt(zmq.LINGER, -1)
    bus.close()
    bus.ctx.term()  # blocks until every batch is sent (a forked child exits without atexit handlers)


def streaming(n: int) -> float:
    """The featurizer role's own loop (bus SUB, decode, kernels, publish + Redis) fed by another process."""
    with tempfile.TemporaryDirectory(prefix="df-features-bench-") as tmp:
        cfg = parse_config({"exchanges": {STREAM_EXCHANGE: {"trades": {"symbols": list(STREAM_SYMBOLS)}}},
                            "spawner": {"run_dir": tmp}, "bus": {"high_water_mark": STREAM_HWM_MESSAGES}})
        server = PrivateRedis(Path(tmp), persist=False).start()
        proxy = Proxy(cfg).start()
        try:
            fz = Featurizer(cfg, redis.Redis.from_url(server.url))
            ready = mp.Event()
            proc = mp.Process(target=publisher, args=(endpoints(cfg)[0], n, ready))
            proc.start()
            ready.set()
            while fz.records_in == 0:
                fz.step(100)
            t0 = time.perf_counter()
            first = fz.records_in
            while fz.records_in < n:
                if not fz.step(2000) and not proc.is_alive():
                    break
            elapsed = time.perf_counter() - t0
            count = fz.records_in - first
            proc.join()
            fz.drain()
        finally:
            proxy.stop()
            server.stop()
    assert fz.records_in == n and fz.subscriber.missing == 0, \
        f"streaming: {fz.records_in} of {n} trades arrived, {fz.subscriber.missing} batches missing"
    rate = count / elapsed
    print(f"streaming: {n:,} trades through the featurizer role's loop (bus SUB socket, msgpack decode, kernels, "
          f"features published on the bus and written to Redis): {elapsed:.2f} s, "
          f"{rate:,.0f} trades/s (target >= 500,000 per featurizer process)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--stream-trades", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    best, median = batch(args.trades, args.rounds)
    rate = streaming(args.stream_trades)
    print(f"RESULT features_stream_trades_per_s {rate:.0f}")
    print(f"RESULT features_vs_polars_median {median:.3f}")
    print(f"RESULT features_vs_polars {best:.3f}")


if __name__ == "__main__":
    main()
