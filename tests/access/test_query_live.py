"""`data-feed query --live` during a real run: the lake plus the records still in the cache, each once. What a
collector has cached before the query starts is in its answer, what it caches after the query is not: the
answer is the cache, within a second of the records' arrival, not the lake's slices a minute later."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import redis

from data_feed.cache.streams import collector_state_key
from tests.harness import CLI, Run, pipeline_config, wait_for


def query(run: Run, sql: str, live: bool) -> pd.DataFrame:
    argv = [CLI, "query", sql, "--config", str(run.config_path), "--format", "csv", *(["--live"] if live else [])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return pd.read_csv(io.StringIO(out.stdout))


def cached_trades(client: redis.Redis, exchange: str) -> int:
    return int(client.hget(collector_state_key(exchange), "records_trades") or 0)


@pytest.mark.slow
def test_live_query_answers_every_cached_trade_once(tmp_path: Path) -> None:
    """2 s slices: while the query runs, some of a symbol's trades are in landed files, the newest only in the
    cache, and some in an entry whose first slice landed while its second is open."""
    run = Run(tmp_path, pipeline_config(tmp_path, lake={"slice_seconds": 2, "allowed_lateness_seconds": 1}))
    run.start()
    try:
        client = redis.Redis.from_url(run.redis_url())
        wait_for(lambda: cached_trades(client, "BINANCE") > 200, 60, "trades cached")
        for _ in range(3):
            lake = query(run, "select count(*) n from trades", live=False)["n"].iloc[0]  # what landed before...
            before = {ex: cached_trades(client, ex) for ex in ("BINANCE", "COINBASE")}
            live = query(run, "select exchange, count(*) n, count(distinct (symbol, id)) d from trades group by 1 "
                              "order by 1", live=True).set_index("exchange")  # ...is part of what --live sees
            after = {ex: cached_trades(client, ex) for ex in ("BINANCE", "COINBASE")}
            for exchange in before:
                n, d = live.loc[exchange, "n"], live.loc[exchange, "d"]
                assert n == d, (exchange, "a record counted twice: in the lake and in the cache")
                assert before[exchange] <= n <= after[exchange], (exchange, before, n, after)
            assert live["n"].sum() > lake  # the open slices' records are only in the cache
    finally:
        assert run.stop() == 0, run.err[-3000:]
