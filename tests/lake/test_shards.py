"""Sharded aggregators (`aggregator.shards`): shard i lands the streams whose key hashes to i, with its own
consumer name and the streams' own journals. On the same cache content, one aggregator and three shards land
identical lakes (same files, same rows); a shard SIGKILLed again and again and restarted lands every record
once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis
import yaml

from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import configured_streams, encode_batch, shard_of, stream_key
from data_feed.contracts.config import Config, parse_config
from data_feed.lake.layout import channel_files
from tests.conftest import default_config_dict
from tests.harness import CLI, wait_for

T0 = 1_700_000_000.0
SECONDS = 30
SYMBOLS = {"BINANCE": ("BTC-USDT", "ETH-USDT"), "COINBASE": ("BTC-USD", "ETH-USD")}
CHANNELS = ("trades", "l2_book", "ticker")


def config(tmp: Path, url: str, shards: int, lake: str) -> dict[str, Any]:
    data = default_config_dict()
    data["exchanges"] = {ex: {ch: {"symbols": list(syms)} for ch in CHANNELS} for ex, syms in SYMBOLS.items()}
    data["redis"]["url"] = url
    data["lake"].update(root=str(tmp / lake), slice_seconds=1, allowed_lateness_seconds=0.2)
    data["spawner"].update(run_dir=str(tmp / f"run-{lake}"))
    data["featurizer"]["enabled"] = False
    data["aggregator"] = {"shards": shards}
    return data


def rows(channel: str, symbol: str, t: float, i: int) -> list[tuple[Any, ...]]:
    if channel == "trades":
        return [(symbol, t, t + 0.001, i, None, "buy" if i % 2 else "sell", 100.0 + i % 7, 0.5)]
    if channel == "l2_book":
        return [(symbol, t, t + 0.001, side, 100.0 + k, 1.0 + i % 5, False, i) for k, side in ((1, "ask"), (-1, "bid"))]
    return [(symbol, t, t + 0.001, 99.0 + i % 3, 101.0 + i % 3)]


def fill(client: redis.Redis) -> None:
    """Entries of 20 records each, 50 ms of exchange time, over SECONDS for every stream."""
    for exchange, symbols in SYMBOLS.items():
        for channel in CHANNELS:
            for e in range(SECONDS * 20):
                batch = [row for i in range(e * 10, e * 10 + 10) for sym in symbols
                         for row in rows(channel, sym, T0 + i * 0.005, i)]
                client.xadd(stream_key(exchange, channel), encode_batch(channel, batch))  # type: ignore[arg-type]
        gap = (symbols[0], T0 + 5, T0 + 5, "trades", "disconnect", 3, 9, "test", None, None)
        client.xadd(stream_key(exchange, "gaps"), encode_batch("gaps", [gap]))  # type: ignore[arg-type]


def read_to_the_end(client: redis.Redis, key: str) -> bool:
    """The aggregator group has been delivered the stream's last entry (what is left open lands at the stop)."""
    try:
        groups = client.xinfo_groups(key)
        last = client.xinfo_stream(key)["last-generated-id"]
    except redis.ResponseError:
        return False
    return any(g["name"] == b"aggregator" and g["last-delivered-id"] == last for g in groups)


def copy_db(src: redis.Redis, dst: redis.Redis) -> None:
    for key in src.keys("*"):
        dst.restore(key, 0, src.dump(key), replace=True)  # type: ignore[arg-type]


def lake_content(root: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for channel in (*CHANNELS, "gaps"):
        for path in channel_files(root, channel):
            out[str(path.relative_to(root))] = pq.read_table(path).to_pylist()
    return out


def drain(cfg: Config, client: redis.Redis, shard: int = 0) -> None:
    agg = Aggregator(cfg, client, shard=shard)
    agg.ensure_groups()
    agg.recover_pending()
    agg.drain()


def db_one(url: str) -> str:
    """The same server's db 1 (the URL's path names the db)."""
    return url.rsplit("/", 1)[0] + "/1"


@pytest.fixture()
def two_dbs(redis_url: str) -> tuple[redis.Redis, redis.Redis]:
    one, three = redis.Redis.from_url(redis_url), redis.Redis.from_url(db_one(redis_url))
    three.flushdb()
    fill(one)
    copy_db(one, three)
    return one, three


def test_one_aggregator_and_three_shards_land_identical_lakes(tmp_path: Path, redis_url: str,
                                                              two_dbs: tuple[redis.Redis, redis.Redis]) -> None:
    one, three = two_dbs
    single = parse_config(config(tmp_path, redis_url, 1, "lake1"), "test")
    sharded = parse_config(config(tmp_path, db_one(redis_url), 3, "lake3"), "test")
    owners = {shard_of(k, 3) for k in configured_streams(sharded)}
    assert owners == {0, 1, 2}, owners  # every shard owns streams
    drain(single, one)
    for shard in range(3):
        drain(sharded, three, shard)
    want, got = lake_content(Path(single.lake.root)), lake_content(Path(sharded.lake.root))
    assert len(want) > 100 and sorted(got) == sorted(want)
    assert got == want


@pytest.mark.slow
def test_a_shard_killed_and_restarted_lands_every_record_once(tmp_path: Path, redis_url: str,
                                                              two_dbs: tuple[redis.Redis, redis.Redis]) -> None:
    one, _ = two_dbs
    single = parse_config(config(tmp_path, redis_url, 1, "lake1"), "test")
    drain(single, one)
    data = config(tmp_path, db_one(redis_url), 3, "lake3")
    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(data))
    logs = {s: open(tmp_path / f"shard-{s}.log", "wb") for s in range(3)}  # noqa: SIM115 - closed below
    argv = [CLI, "role", "aggregator", "--config", str(path), "--shard"]
    procs = {s: subprocess.Popen([*argv, str(s)], stdout=logs[s], stderr=logs[s]) for s in range(3)}
    rng = random.Random(7)
    for kill in range(4):  # shard 1 dies in the middle of its work, again and again
        wait_for(lambda done=kill: (tmp_path / "shard-1.log").read_text().count("aggregating ") > done,  # type: ignore[misc]
                 60, "shard 1 at work")
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        procs[1] = subprocess.Popen([*argv, "1"], stdout=logs[1], stderr=logs[1])
    # the last incarnation is past its start (signal handlers installed, then this line logged): a SIGTERM
    # before that point would end it by the signal (exit -15), as Kubernetes may, and the test would not see a stop
    wait_for(lambda: (tmp_path / "shard-1.log").read_text().count("aggregating ") >= 5, 60, "shard 1 restarted")
    client = redis.Redis.from_url(data["redis"]["url"])
    streams = configured_streams(parse_config(data, "test"))
    wait_for(lambda: all(read_to_the_end(client, k) for k in streams), 120, "every entry read by its shard")
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=120) for proc in procs.values()] == [0, 0, 0]
    for log in logs.values():
        log.close()
    assert (tmp_path / "shard-1.log").read_text().count("unacknowledged entries from a previous run") >= 1
    assert lake_content(Path(data["lake"]["root"])) == lake_content(Path(single.lake.root))
