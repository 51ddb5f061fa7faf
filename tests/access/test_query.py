"""Athena-dialect SQL on the local lake: queries written for Athena (Trino) run on DuckDB through sqlglot and
return what pandas computes from the same records; filters on partition columns prune files; bad SQL is a clear
error with a non-zero exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from data_feed.access.query import QueryError, run_query, to_duckdb
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.lake.catalog import LocalCatalog
from tests.conftest import ROOT, make_config

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC
SECONDS = 300
PAIRS = (("BINANCE", "BTC-USDT"), ("BINANCE", "ETH-USDT"), ("COINBASE", "BTC-USD"))
NS = 1_000_000_000

OHLCV = """
SELECT exchange, symbol, date_trunc('minute', from_unixtime(ts_event / 1000000000)) AS bar,
       min_by(price, ts_event) AS open, max(price) AS high, min(price) AS low, max_by(price, ts_event) AS close,
       sum(amount) AS volume, count(*) AS trades
FROM trades
WHERE date = DATE '2023-11-14'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""
VWAP = """
SELECT symbol, sum(price * amount) / sum(amount) AS vwap
FROM trades
WHERE exchange = 'BINANCE'
GROUP BY symbol
ORDER BY symbol
"""
# integer division, as in Athena: ts_event / 10000000000 * 10 is the 10-second bucket in whole seconds
TOP_OF_BOOK = """
SELECT exchange, symbol, ts_event / 10000000000 * 10 AS bucket,
       max_by(bid, ts_event) AS bid, max_by(ask, ts_event) AS ask, max(ask - bid) AS widest
FROM ticker
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""
PERCENTILES = """
SELECT exchange, symbol, approx_percentile(price, 0.5) AS p50, approx_percentile(price, 0.99) AS p99
FROM trades
GROUP BY exchange, symbol
ORDER BY 1, 2
"""


def _records(seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random-walk trades (about 3/s) and tickers (1/s) per pair, with unique event times per pair."""
    rng = np.random.default_rng(seed)
    trades, tickers = [], []
    for exchange, symbol in PAIRS:
        n = SECONDS * 3
        ts = T0 * NS + np.sort(rng.choice(SECONDS * 1000, n, replace=False)) * 1_000_000 + rng.integers(0, 999, n)
        price = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
        trades.append(pd.DataFrame({"exchange": exchange, "symbol": symbol, "ts_event": ts,
                                    "id": np.arange(n), "price": price.round(4),
                                    "amount": rng.uniform(0.01, 2.0, n).round(5)}))
        tt = T0 * NS + np.arange(SECONDS) * NS + 500_000_000
        mid = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, SECONDS)))
        spread = rng.uniform(0.01, 0.2, SECONDS)
        tickers.append(pd.DataFrame({"exchange": exchange, "symbol": symbol, "ts_event": tt,
                                     "bid": (mid - spread).round(4), "ask": (mid + spread).round(4)}))
    return pd.concat(trades, ignore_index=True), pd.concat(tickers, ignore_index=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, redis_server: object) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("query")
    url = redis_server.url  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    client.flushall()
    cfg = make_config(tmp, lake={"slice_seconds": 10, "allowed_lateness_seconds": 0})
    trades, tickers = _records()
    for (exchange, symbol), df in trades.groupby(["exchange", "symbol"]):
        rows = [(symbol, t / NS, t / NS, i, None, "buy", p, a)
                for t, i, p, a in zip(df.ts_event, df.id, df.price, df.amount, strict=True)]
        for k in range(0, len(rows), 100):
            client.xadd(stream_key(str(exchange), "trades"), encode_batch("trades", rows[k:k + 100]))  # type: ignore[arg-type]
    for (exchange, symbol), df in tickers.groupby(["exchange", "symbol"]):
        rows = [(symbol, t / NS, t / NS, b, a) for t, b, a in zip(df.ts_event, df.bid, df.ask, strict=True)]
        client.xadd(stream_key(str(exchange), "ticker"), encode_batch("ticker", rows))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    # the lake holds event times at microsecond precision (collector times are float seconds)
    trades["ts_event"] = (trades["ts_event"] / NS * 1e6).round().astype("int64") * 1000
    tickers["ts_event"] = (tickers["ts_event"] / NS * 1e6).round().astype("int64") * 1000
    return Path(cfg.lake.root), trades, tickers


def test_ohlcv_bars_with_date_trunc_match_pandas(lake: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    root, trades, _ = lake
    got = run_query(root, OHLCV, "athena")
    t = trades.assign(bar=pd.to_datetime(trades.ts_event // NS, unit="s", utc=True).dt.floor("min"))
    t = t.sort_values("ts_event")
    expected = t.groupby(["exchange", "symbol", "bar"]).agg(
        open=("price", "first"), high=("price", "max"), low=("price", "min"), close=("price", "last"),
        volume=("amount", "sum"), trades=("price", "size")).reset_index()
    assert len(got) == len(expected) == len(PAIRS) * 6  # 300 s from 22:13:20: minutes 13 to 18
    got["bar"] = pd.to_datetime(got["bar"], utc=True)
    for col in ("exchange", "symbol", "open", "high", "low", "close", "trades"):
        assert got[col].tolist() == expected[col].tolist(), col
    assert (got["bar"].dt.tz_convert("UTC").dt.tz_localize(None) == expected["bar"].dt.tz_localize(None)).all()
    np.testing.assert_allclose(got["volume"], expected["volume"], rtol=1e-12)


def test_vwap_matches_pandas(lake: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    root, trades, _ = lake
    got = run_query(root, VWAP, "athena")
    b = trades[trades.exchange == "BINANCE"]
    expected = (b.price * b.amount).groupby(b.symbol).sum() / b.amount.groupby(b.symbol).sum()
    assert got["symbol"].tolist() == expected.index.tolist()
    np.testing.assert_allclose(got["vwap"], expected.to_numpy(), rtol=1e-12)


def test_top_of_book_over_time_with_integer_division_matches_pandas(
        lake: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    root, _, tickers = lake
    got = run_query(root, TOP_OF_BOOK, "athena")
    t = tickers.assign(bucket=tickers.ts_event // (10 * NS) * 10, width=tickers.ask - tickers.bid)
    t = t.sort_values("ts_event")
    expected = t.groupby(["exchange", "symbol", "bucket"]).agg(
        bid=("bid", "last"), ask=("ask", "last"), widest=("width", "max")).reset_index()
    assert len(got) == len(PAIRS) * SECONDS // 10
    assert got["bucket"].tolist() == expected["bucket"].tolist()  # whole seconds: Trino's typed division
    for col in ("exchange", "symbol", "bid", "ask"):
        assert got[col].tolist() == expected[col].tolist(), col
    np.testing.assert_allclose(got["widest"], expected["widest"], rtol=1e-12)


def test_approx_percentile_is_within_one_percent_in_rank_of_pandas(
        lake: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    root, trades, _ = lake
    got = run_query(root, PERCENTILES, "athena")
    assert [tuple(r) for r in got[["exchange", "symbol"]].itertuples(index=False)] == sorted(PAIRS)
    for r in got.itertuples():
        prices = trades[(trades.exchange == r.exchange) & (trades.symbol == r.symbol)].price
        for q, value in ((0.5, r.p50), (0.99, r.p99)):
            rank = (prices <= value).mean()
            assert abs(rank - q) <= 0.01, (r.exchange, r.symbol, q, value, prices.quantile(q))


def test_partition_filters_prune_files_before_they_are_opened(
        lake: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    root, trades, _ = lake
    victim = next(f for f in LocalCatalog(root).files("trades", "COINBASE"))
    original = (root / victim.path).read_bytes()
    (root / victim.path).write_bytes(b"not parquet")
    try:
        sql = ("SELECT count(*) AS n FROM trades WHERE exchange = 'BINANCE' AND symbol = 'BTC-USDT' "
               "AND date = DATE '2023-11-14'")
        n = run_query(root, sql, "athena")["n"].iloc[0]
        assert n == len(trades[(trades.exchange == "BINANCE") & (trades.symbol == "BTC-USDT")])
        with pytest.raises(QueryError):
            run_query(root, "SELECT count(*) FROM trades", "athena")  # no filter: the damaged file is read
    finally:
        (root / victim.path).write_bytes(original)


def test_bad_athena_sql_is_a_clear_error_and_a_nonzero_exit(lake: tuple[Path, pd.DataFrame, pd.DataFrame]) -> None:
    root, _, _ = lake
    with pytest.raises(QueryError, match="nope"):
        to_duckdb("SELECT nope FROM trades")
    with pytest.raises(QueryError, match="Athena SQL"):
        to_duckdb("SELEC price FROM trades")
    cli = str(ROOT / ".venv" / "bin" / "data-feed")
    bad = subprocess.run([cli, "query", "--dialect", "athena", "--lake", str(root), "SELECT nope FROM trades"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "nope" in bad.stderr, bad.stderr
    good = subprocess.run([cli, "query", "--dialect", "athena", "--lake", str(root), "--format", "csv", VWAP],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[0] == "symbol,vwap" and len(good.stdout.splitlines()) == 3
