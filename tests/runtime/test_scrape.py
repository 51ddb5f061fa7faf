"""What the spawner reads from a real Redis at scrape time: the age of each stream's oldest unacknowledged entry
(pending or not yet delivered; 0 once acknowledged), each symbol's newest cached record from the collectors'
marks, and nothing (no error) when Redis does not answer."""

from __future__ import annotations

import time

import pytest
import redis

from data_feed.cache.streams import CONSUMER_GROUP, Mark, collector_state_key, encode_batch, mark_field, stream_key
from data_feed.runtime.scrape import RedisAges
from tests.conftest import make_config
from tests.lakes import trade_rows

KEY = stream_key("BINANCE", "trades")


@pytest.fixture()
def ages(tmp_path: object, redis_url: str) -> RedisAges:
    return RedisAges(make_config(tmp_path), redis_url, started=time.time() - 100)  # type: ignore[arg-type]


def test_the_oldest_unacknowledged_entry_ages_from_its_first_records_receipt(ages: RedisAges, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time()
    client.xgroup_create(KEY, CONSUMER_GROUP, id="0", mkstream=True)
    old = client.xadd(KEY, encode_batch("trades", trade_rows("BTC-USDT", 3, start=now - 30)))  # type: ignore[arg-type]
    client.xadd(KEY, encode_batch("trades", trade_rows("BTC-USDT", 3, start=now - 10)))  # type: ignore[arg-type]
    assert 29 < ages.stream_ages(now)[KEY] < 31  # not delivered yet
    client.xreadgroup(CONSUMER_GROUP, "aggregator-1", {KEY: ">"}, count=1)
    assert 29 < ages.stream_ages(now)[KEY] < 31  # delivered, pending
    client.xack(KEY, CONSUMER_GROUP, old)
    assert 9 < ages.stream_ages(now)[KEY] < 11  # the next one, never delivered
    client.xreadgroup(CONSUMER_GROUP, "aggregator-1", {KEY: ">"})
    client.xack(KEY, CONSUMER_GROUP, *[eid for eid, _ in client.xrange(KEY)])
    out = ages.stream_ages(now)
    assert out[KEY] == 0.0 and set(out) == set(ages.streams)  # every configured stream, none of them read


def test_cache_ages_come_from_the_collectors_marks_and_from_the_run_start_before_any(ages: RedisAges,
                                                                                      redis_url: str) -> None:
    now = time.time()
    redis.Redis.from_url(redis_url).hset(collector_state_key("BINANCE"), mark_field("trades", "BTC-USDT"),
                                         Mark(now - 5, 7, now - 5.1).pack())
    out = ages.cache_ages(now)
    assert 4.9 < out[("BINANCE", "trades", "BTC-USDT")] < 5.1
    assert 99 < out[("BINANCE", "l2_book", "ETH-USDT")] < 101
    assert ("COINBASE", "ticker", "BTC-USD") in out


def test_a_redis_that_does_not_answer_leaves_the_ages_out(tmp_path: object) -> None:
    silent = RedisAges(make_config(tmp_path), "redis://127.0.0.1:9/0", time.time())  # type: ignore[arg-type]
    families = list(silent.collect())
    assert [f.name for f in families] == ["data_feed_stream_oldest_pending_age_seconds",
                                          "data_feed_symbol_cache_age_seconds"]
    assert all(not f.samples for f in families)
