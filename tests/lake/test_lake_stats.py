"""The aggregator's lake metrics against a real lake: rows per symbol and the newest committed slice end as it
lands, files, partitions and the fullest partition's files from the catalog, and lake freshness derived from
the slice end when /metrics is rendered."""

from __future__ import annotations

import re
import time
from pathlib import Path

import redis
from prometheus_client import REGISTRY

from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake.layout import SliceKey
from data_feed.observability import metrics
from tests.conftest import make_config
from tests.lakes import ENTRY_ROWS, T0, trade_rows


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_landed_slices_give_rows_per_symbol_files_partitions_and_the_fullest_partition(tmp_path: Path,
                                                                                       redis_url: str) -> None:
    cfg = make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})
    client = redis.Redis.from_url(redis_url)
    rows = trade_rows("BTC-USDT", 500) + trade_rows("ETH-USDT", 50)  # 5 one-second slices, and 1
    for i in range(0, len(rows), ENTRY_ROWS):
        client.xadd(stream_key("COINBASE", "trades"), encode_batch("trades", rows[i:i + ENTRY_ROWS]))  # type: ignore[arg-type]
    before = value("data_feed_symbol_rows_written_total", channel="trades", exchange="COINBASE", symbol="BTC-USDT")
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    agg.lake_metrics.refresh()
    labels = {"channel": "trades", "exchange": "COINBASE"}
    after = value("data_feed_symbol_rows_written_total", **labels, symbol="BTC-USDT")
    assert after - before == 500
    assert value("data_feed_lake_files", **labels) == 6
    assert value("data_feed_lake_partitions", **labels) == 2
    assert value("data_feed_lake_partition_files_max", **labels) == 5
    assert value("data_feed_lake_newest_slice_end_timestamp_seconds", **labels, symbol="BTC-USDT") == T0 + 5
    assert value("data_feed_lake_partitions", channel="l2_book", exchange="COINBASE") == 0
    agg.catalog.close()


def test_a_late_part_does_not_make_the_lake_older_and_gaps_have_no_freshness(tmp_path: Path) -> None:
    from data_feed.lake.catalog import LocalCatalog
    from data_feed.lake.stats import LakeMetrics

    lake = LakeMetrics(LocalCatalog(tmp_path), [stream_key("BINANCE", "ticker")], NS_PER_SECOND)
    start = int(T0) * NS_PER_SECOND
    lake.landed(SliceKey("ticker", "BINANCE", "SOL-USDT", start + 10 * NS_PER_SECOND), 3)
    lake.landed(SliceKey("ticker", "BINANCE", "SOL-USDT", start), 1)  # late rows of an older slice
    lake.landed(SliceKey("gaps", "BINANCE", "SOL-USDT", start + 99 * NS_PER_SECOND), 1)
    labels = {"channel": "ticker", "exchange": "BINANCE", "symbol": "SOL-USDT"}
    assert value("data_feed_lake_newest_slice_end_timestamp_seconds", **labels) == T0 + 11
    assert value("data_feed_symbol_rows_written_total", **labels) == 4
    assert value("data_feed_lake_newest_slice_end_timestamp_seconds", **{**labels, "channel": "gaps"}) == 0


def test_freshness_is_now_minus_the_newest_slice_end_when_metrics_are_rendered() -> None:
    labels = ("features", "BINANCE", "DOGE-USDT")
    metrics.LAKE_NEWEST_END.labels(*labels).set(time.time() - 42)
    text = metrics.render_latest().decode()
    found = re.search(r'^data_feed_lake_freshness_seconds\{channel="features",exchange="BINANCE",'
                      r'symbol="DOGE-USDT"\} (\S+)$', text, re.MULTILINE)
    assert found is not None and 42 <= float(found.group(1)) < 60
