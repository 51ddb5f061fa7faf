"""Compaction and retention against real parquet files, a real catalog and a real redis-server: queries running
during compaction see every row exactly once, the file count drops as configured, open slices are never
touched, merged l2_book files still decode alone, and retired files outlive every reader that may use them."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis

from data_feed.access.query import run_query, session
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.config import Config
from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake import compaction
from data_feed.lake.book import book_at, book_state, top
from data_feed.lake.catalog import LocalCatalog
from data_feed.lake.compaction import MaintenanceBusy, compact, maintenance_lock
from data_feed.lake.layout import channel_files
from data_feed.lake.retention import expire
from tests.conftest import make_config
from tests.lake.test_book import SLICES, _messages, _reference

T0 = 1_700_000_000.0  # a whole second, 2023-11-14
SYMBOLS = ("BTC-USDT", "ETH-USDT")
SECONDS = 40  # one file per second per symbol
TRADES_PER_SECOND = 50
TRADES = stream_key("BINANCE", "trades")
TRUTH_SQL = "select count(*) n, count(distinct (symbol, id)) d, sum(id) s, sum(price) p from trades"


def _config(tmp_path: Path, **lake: object) -> Config:
    return make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0,
                                       "compaction_grace_seconds": 0, **lake})


def _land_trades(cfg: Config, client: redis.Redis, seconds: int = SECONDS, t0: float = T0) -> tuple[int, int]:
    """``seconds`` one-second slices per symbol through the aggregator; returns the rows and the sum of ids."""
    ids = 0
    for s in range(seconds):
        rows = [(sym, t0 + s + i / TRADES_PER_SECOND, t0 + s + i / TRADES_PER_SECOND, s * 1000 + i, None, "buy",
                 100.0 + i, 1.0) for sym in SYMBOLS for i in range(TRADES_PER_SECOND)]
        ids += sum(r[3] for r in rows)  # type: ignore[misc]
        client.xadd(TRADES, encode_batch("trades", rows))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    return seconds * TRADES_PER_SECOND * len(SYMBOLS), ids


def _truth(cfg: Config) -> tuple[int, int, int, float]:
    r = run_query(cfg.lake.root, TRUTH_SQL).iloc[0]
    return int(r.n), int(r.d), int(r.s), float(r.p)


def test_queries_during_compaction_see_every_row_exactly_once_and_file_count_drops(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    n, ids = _land_trades(cfg, redis.Redis.from_url(redis_url))
    lake = Path(cfg.lake.root)
    truth = _truth(cfg)
    assert truth[:3] == (n, n, ids)
    files_before = len(channel_files(lake, "trades"))
    assert files_before == SECONDS * len(SYMBOLS)
    size = max(f.bytes for f in LocalCatalog(lake).files("trades"))
    seen: list[tuple[int, int, int, float]] = []
    stop = threading.Event()
    swaps = 0

    def query_loop() -> None:
        while not stop.is_set():
            seen.append(_truth(cfg))

    def replace_then_wait_for_a_reader(self: LocalCatalog, *args: Any, **kwargs: Any) -> Any:
        """Every catalog swap is followed by a query that started after it: the readers see each state the
        compaction passes through, however slow the machine (a condition, not a count per second)."""
        nonlocal swaps
        out = real_replace(self, *args, **kwargs)
        swaps += 1
        asked = len(seen)
        deadline = time.monotonic() + 60
        while len(seen) < asked + 2 and time.monotonic() < deadline:  # the query in flight, then a new one
            time.sleep(0.005)
        return out

    real_replace = LocalCatalog.replace
    monkeypatch.setattr(LocalCatalog, "replace", replace_then_wait_for_a_reader)
    readers = [threading.Thread(target=query_loop) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        # target of about 4 source files: 10 merged files per symbol, one catalog swap each
        report = compact(lake, cfg.lake, older_than_seconds=0, target_bytes=4 * size)
        report2 = compact(lake, cfg.lake, older_than_seconds=0)  # default target: one file per partition
    finally:
        stop.set()
        for t in readers:
            t.join()
    print(f"{len(seen)} queries during {swaps} swaps compacting {files_before} files")
    assert swaps > 10 and len(seen) >= 2 * swaps, "every swap is followed by queries"
    assert set(seen) == {truth}, [s for s in seen if s != truth][:3]
    assert report.files_before == files_before and report.files_after < files_before / 3
    assert report2.files_after == len(SYMBOLS)  # one partition per symbol, far below 128 MiB
    compact(lake, cfg.lake, older_than_seconds=0)  # what readers still held at the last swap: deleted now
    assert len(channel_files(lake, "trades")) == len(SYMBOLS)
    assert _truth(cfg) == truth


def test_a_query_that_listed_the_old_files_still_reads_them_after_the_swap(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path)
    n, ids = _land_trades(cfg, redis.Redis.from_url(redis_url), seconds=6)
    lake = Path(cfg.lake.root)
    with session(lake) as con:  # snapshot taken: its views list the small files
        report = compact(lake, cfg.lake, older_than_seconds=0)
        assert report.files_after == len(SYMBOLS) and report.purged == 0 and report.held == 6 * len(SYMBOLS)
        assert con.execute("select count(*), sum(id) from trades").fetchone() == (n, ids)
    report = compact(lake, cfg.lake, older_than_seconds=0)  # the reader is gone: now they are deleted
    assert report.purged == 6 * len(SYMBOLS) and report.held == 0
    assert len(channel_files(lake, "trades")) == len(SYMBOLS)


def test_grace_period_keeps_retired_files_even_without_readers(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path, compaction_grace_seconds=3600)
    _land_trades(cfg, redis.Redis.from_url(redis_url), seconds=4)
    lake = Path(cfg.lake.root)
    report = compact(lake, cfg.lake, older_than_seconds=0)
    assert report.written == len(SYMBOLS) and report.purged == 0 and report.held == 4 * len(SYMBOLS)
    assert len(channel_files(lake, "trades")) == 5 * len(SYMBOLS)  # on disk, but no query lists them
    assert run_query(lake, "select count(*) from trades").iloc[0, 0] == 4 * TRADES_PER_SECOND * len(SYMBOLS)


def test_open_and_recent_slices_are_never_touched(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path, allowed_lateness_seconds=2)
    _land_trades(cfg, redis.Redis.from_url(redis_url), seconds=30)
    lake = Path(cfg.lake.root)
    now = int((T0 + 30) * NS_PER_SECOND)
    # closed and older than 10 s: slices starting before T0 + 30 - (1 + 2 + 10) = T0 + 17
    recent = {f.path for f in LocalCatalog(lake).files("trades") if f.slice_start_ns >= (T0 + 17) * NS_PER_SECOND}
    assert len(recent) == 13 * len(SYMBOLS)
    report = compact(lake, cfg.lake, older_than_seconds=10, now_ns=now)
    after = LocalCatalog(lake).files("trades")
    assert recent <= {f.path for f in after}
    assert report.merged == 17 * len(SYMBOLS) and len(after) == len(recent) + len(SYMBOLS)


def test_merged_book_files_still_decode_alone(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path, book_snapshot_depth=1000)
    client = redis.Redis.from_url(redis_url)
    messages = _messages()
    for i in range(0, len(messages), 37):
        client.xadd(stream_key("BINANCE", "l2_book"),
                    encode_batch("l2_book", [r for m in messages[i:i + 37] for r in m]))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    lake = Path(cfg.lake.root)
    files = LocalCatalog(lake).files("l2_book")
    assert len(files) == SLICES
    # target of two slices: merged files [0, 1], [2, 3], and slice 4 alone
    compact(lake, cfg.lake, older_than_seconds=0, target_bytes=2 * max(f.bytes for f in files))
    merged = sorted(LocalCatalog(lake).files("l2_book"), key=lambda f: f.slice_start_ns)
    assert len(merged) == 3
    for f, end in zip(merged, (2, 4, 5), strict=True):
        alone = pq.read_table(lake / f.path).to_pandas()
        assert alone["snapshot"].iloc[0], f.path  # the first slice's opening book comes first
        assert book_state(alone) == _reference(messages, T0 + end), f.path
    rng = random.Random(5)
    for at in (T0 + rng.uniform(0.1, SLICES - 0.01) for _ in range(20)):
        assert book_at(lake, "BINANCE", "BTC-USDT", round(at * 1e6) * 1000, 10) == top(
            _reference(messages, at + 1e-7), 10), at


def test_aggregator_redoing_a_write_already_compacted_does_not_land_it_twice(
        tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    client = redis.Redis.from_url(redis_url)
    for s in range(4):
        rows = [("BTC-USDT", T0 + s + i / 10, T0 + s + i / 10, s * 100 + i, None, "buy", 100.0, 1.0)
                for i in range(10)]
        client.xadd(TRADES, encode_batch("trades", rows))  # type: ignore[arg-type]
    commits = [0]
    real_commit = Aggregator._commit

    def die_at_third(self: Aggregator, *args: Any, **kwargs: Any) -> None:
        commits[0] += 1
        if commits[0] == 3:
            raise SystemExit("crash after the catalog, before the Redis commit")
        real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Aggregator, "_commit", die_at_third)
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()
    with pytest.raises(SystemExit):
        crashed.drain()
    monkeypatch.undo()
    lake = Path(cfg.lake.root)
    third = max(f.path for f in LocalCatalog(lake).files("trades"))
    assert len(LocalCatalog(lake).files("trades")) == 3  # the third is catalogued, its intent not committed
    report = compact(lake, cfg.lake, older_than_seconds=0)  # merges it while the aggregator is down
    assert report.merged == 3 and LocalCatalog(lake).is_retired(third)
    fresh = Aggregator(cfg, client)
    fresh.ensure_groups()
    fresh.recover_pending()  # redoes the third slice's intent: already compacted, so not written again
    fresh.drain()
    assert not (lake / third).exists()
    assert run_query(lake, "select count(*), count(distinct id) from trades").iloc[0].tolist() == [40, 40]


def test_only_one_maintenance_run_at_a_time(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    LocalCatalog(cfg.lake.root).close()  # an empty lake
    with maintenance_lock(Path(cfg.lake.root)), pytest.raises(MaintenanceBusy):
        compaction.compact(cfg.lake.root, cfg.lake, older_than_seconds=0)


def test_retention_drops_whole_expired_partitions_of_that_channel_only(tmp_path: Path, redis_url: str) -> None:
    cfg = _config(tmp_path, retention_days={"trades": 1})
    client = redis.Redis.from_url(redis_url)
    _land_trades(cfg, client, seconds=3)  # 2023-11-14
    _land_trades(cfg, client, seconds=3, t0=T0 + 2 * 86_400)  # 2023-11-16
    lake = Path(cfg.lake.root)
    now = int((T0 + 2 * 86_400 + 60) * NS_PER_SECOND)
    report = expire(lake, cfg.lake, now_ns=now)
    assert report.partitions == {"trades": [("BINANCE", s, "2023-11-14") for s in SYMBOLS]}
    assert report.files == 3 * len(SYMBOLS) and report.purged == 3 * len(SYMBOLS)
    df = run_query(lake, "select distinct cast(date as varchar) d from trades")
    assert df["d"].tolist() == ["2023-11-16"]
    assert not list((lake / "trades").glob("*/*/date=2023-11-14/*.parquet"))
    assert LocalCatalog(lake).partitions("trades") == [("BINANCE", s, "2023-11-16") for s in SYMBOLS]


def _encodings(path: Path) -> dict[str, set[str]]:
    meta = pq.ParquetFile(path).metadata
    out: dict[str, set[str]] = {}
    for rg in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(rg).column(c)
            out.setdefault(col.path_in_schema, set()).update(col.encodings)
    return out


def test_slices_and_compacted_files_are_encoded_for_size_and_read_back_equal(tmp_path: Path, redis_url: str) -> None:
    """Instants and ids delta-encoded, prices and sides dictionary-encoded, in the aggregator's slices and in the
    files compaction merges them into; the rows read back (pyarrow and DuckDB) are the rows landed."""
    cfg = _config(tmp_path, compaction_target_mb=64)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    rows, ids = _land_trades(cfg, client, seconds=5)
    before = _truth(cfg)
    files = channel_files(Path(cfg.lake.root), "trades")
    assert files
    for path in files:
        enc = _encodings(path)
        for col in ("ts_event", "ts_recv", "id"):
            assert "DELTA_BINARY_PACKED" in enc[col], (path.name, col, enc[col])
        for col in ("price", "side"):
            assert enc[col] & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}, (path.name, col, enc[col])
    compact(cfg.lake.root, cfg.lake, older_than_seconds=0, now_ns=int((T0 + 3600) * NS_PER_SECOND))
    merged = channel_files(Path(cfg.lake.root), "trades")
    assert len(merged) < len(files)
    assert all("DELTA_BINARY_PACKED" in _encodings(p)["ts_event"] for p in merged)
    assert _truth(cfg) == before == (rows, rows, ids, before[3])
