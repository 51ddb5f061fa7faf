"""Compaction of the lake on a real S3 server (SeaweedFS) with Glue served by moto: queries running during
compaction see every row exactly once, rows are unchanged row by row, the file count drops as configured,
retired files stay for the grace period and go after it, merged l2_book files still decode alone, an
aggregator redoing a write already compacted does not land it again, and `data-feed lake compact` takes the
lake from lake.s3 of the config."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from data_feed.access.query import run_query
from data_feed.aggregator.role import Aggregator
from data_feed.cache.streams import encode_batch, stream_key
from data_feed.contracts.config import Config, S3LakeConfig
from data_feed.contracts.schemas import L2_BOOK, NS_PER_SECOND
from data_feed.lake.book import book_state
from data_feed.lake.compaction import compact
from data_feed.lake.layout import is_compacted
from data_feed.lake.s3 import MANIFEST_NAME, GlueCatalog, S3Store
from tests.lake.conftest import BIN
from tests.lake.test_book import SLICES, _messages, _reference
from tests.lake.test_compaction import SYMBOLS, TRADES, TRUTH_SQL, _land_trades
from tests.lake.test_s3 import _s3_config, _write_yaml

T0 = 1_700_000_000.0
SECONDS = 20  # one slice file per second per symbol
GRACE_SECONDS = 3600.0
ROWS_SQL = "select * from trades order by all"
CLI_TIMEOUT_SECONDS = 120


def _config(tmp_path: Path, servers: dict[str, str], name: str, grace: float, **lake: Any) -> tuple[
        Config, S3LakeConfig]:
    cfg = _s3_config(tmp_path, servers, f"{name}/lake", name)
    cfg = cfg.model_copy(update={"lake": cfg.lake.model_copy(update={"compaction_grace_seconds": grace, **lake})})
    assert cfg.lake.s3 is not None
    return cfg, cfg.lake.s3


def _truth(s3: S3LakeConfig) -> tuple[int, int, int, float]:
    r = run_query("/nonexistent", TRUTH_SQL, s3=s3).iloc[0]
    return int(r.n), int(r.d), int(r.s), float(r.p)


def _objects(s3: S3LakeConfig, channel: str) -> list[str]:
    """Every parquet object of the channel on S3, live or not."""
    return [p for p, _ in S3Store(s3).list(channel + "/") if p.endswith(".parquet")]


def test_queries_during_s3_compaction_see_every_row_once_and_rows_stay_the_same_and_files_drop(
        tmp_path: Path, redis_url: str, servers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, s3 = _config(tmp_path, servers, "compact", GRACE_SECONDS)
    n, ids = _land_trades(cfg, redis.Redis.from_url(redis_url), seconds=SECONDS)
    glue = GlueCatalog(s3, S3Store(s3))
    rows = run_query("/nonexistent", ROWS_SQL, s3=s3)
    truth = _truth(s3)
    assert truth[:3] == (n, n, ids) and len(rows) == n
    files_before = len(glue.files("trades"))
    assert files_before == SECONDS * len(SYMBOLS)
    size = max(f.bytes for f in glue.files("trades"))
    seen: list[tuple[int, int, int, float]] = []
    stop = threading.Event()

    swaps = 0

    def query_loop() -> None:
        while not stop.is_set():
            seen.append(_truth(s3))

    def write_then_wait_for_a_reader(self: GlueCatalog, *args: Any, **kwargs: Any) -> Any:
        """Every manifest swap of compact on S3 is followed by a query that started after it (a condition, not a
        count per second of wall clock). The CLI's own compaction below runs in another process, unwaited."""
        nonlocal swaps
        out = real_write(self, *args, **kwargs)
        swaps += 1
        asked = len(seen)
        deadline = time.monotonic() + 60
        while len(seen) < asked + 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        return out

    real_write = GlueCatalog.write_manifest
    monkeypatch.setattr(GlueCatalog, "write_manifest", write_then_wait_for_a_reader)
    readers = [threading.Thread(target=query_loop) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        report = compact(None, cfg.lake, older_than_seconds=0, target_bytes=4 * size)  # about 4 files per run
        cli = subprocess.run([str(BIN / "data-feed"), "lake", "compact", "--older-than", "0s", "--config",
                              str(_write_yaml(cfg, tmp_path / "s3.yaml"))],  # default target: one per partition
                             capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS)
    finally:
        stop.set()
        for t in readers:
            t.join()
    print(f"{len(seen)} queries during {swaps} swaps compacting {files_before} files on S3")
    assert swaps >= len(SYMBOLS) and len(seen) >= 2 * swaps, "every swap is followed by queries"
    assert set(seen) == {truth}, [s for s in seen if s != truth][:3]
    assert report.files_before == files_before and report.files_after < files_before / 2
    assert report.merged == files_before and report.purged == 0 and report.held == files_before
    assert cli.returncode == 0, cli.stderr
    assert f"compacted: {report.files_after} files merged into {len(SYMBOLS)}" in cli.stdout
    assert len(glue.files("trades")) == len(SYMBOLS)
    assert all(is_compacted(f.path.rsplit("/", 1)[-1]) for f in glue.files("trades"))
    pd.testing.assert_frame_equal(run_query("/nonexistent", ROWS_SQL, s3=s3), rows)
    # retired files stay on S3 for the grace period (no query lists them), and go after it
    assert len(_objects(s3, "trades")) == files_before + report.written + len(SYMBOLS)
    later = time.time_ns() + int((GRACE_SECONDS + 1) * NS_PER_SECOND)
    purge = compact(None, cfg.lake, older_than_seconds=0, now_ns=later)
    assert (purge.written, purge.purged, purge.held) == (0, files_before + report.written, 0)
    assert sorted(_objects(s3, "trades")) == sorted(f.path for f in glue.files("trades"))
    pd.testing.assert_frame_equal(run_query("/nonexistent", ROWS_SQL, s3=s3), rows)


def test_merged_book_files_on_s3_still_decode_alone(tmp_path: Path, redis_url: str,
                                                     servers: dict[str, str]) -> None:
    cfg, s3 = _config(tmp_path, servers, "book", 0.0)
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    messages = _messages()
    for i in range(0, len(messages), 37):
        client.xadd(stream_key("BINANCE", "l2_book"),
                    encode_batch("l2_book", [r for m in messages[i:i + 37] for r in m]))  # type: ignore[arg-type]
    agg = Aggregator(cfg, client)
    agg.ensure_groups()
    agg.drain()
    store = S3Store(s3)
    glue = GlueCatalog(s3, store)
    files = glue.files("l2_book")
    assert len(files) == SLICES
    # target of two slices: merged files [0, 1], [2, 3], and slice 4 alone
    compact(None, cfg.lake, older_than_seconds=0, target_bytes=2 * max(f.bytes for f in files))
    merged = sorted(glue.files("l2_book"), key=lambda f: f.slice_start_ns)
    assert len(merged) == 3 and [is_compacted(f.path.rsplit("/", 1)[-1]) for f in merged] == [True, True, False]
    for f, end in zip(merged, (2, 4, 5), strict=True):
        alone = store.read(f.path, L2_BOOK).to_pandas()
        assert alone["snapshot"].iloc[0], f.path  # the first slice's opening book comes first
        assert book_state(alone) == _reference(messages, T0 + end), f.path


def test_aggregator_redoing_a_write_already_compacted_on_s3_does_not_land_it_again(
        tmp_path: Path, redis_url: str, servers: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, s3 = _config(tmp_path, servers, "redo", 0.0)  # no grace: compaction deletes what it retires at once
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    for s in range(4):
        rows = [("BTC-USDT", T0 + s + i / 10, T0 + s + i / 10, s * 100 + i, None, "buy", 100.0, 1.0)
                for i in range(10)]
        client.xadd(TRADES, encode_batch("trades", rows))  # type: ignore[arg-type]
    commits = [0]
    real_commit = Aggregator._commit

    def die_at_third(self: Aggregator, *args: Any, **kwargs: Any) -> None:
        commits[0] += 1
        if commits[0] == 3:
            raise SystemExit("crash after the PUT and Glue, before the Redis commit")
        real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Aggregator, "_commit", die_at_third)
    crashed = Aggregator(cfg, client)
    crashed.ensure_groups()
    with pytest.raises(SystemExit):
        crashed.drain()
    monkeypatch.undo()
    glue = GlueCatalog(s3, S3Store(s3))
    third = max(f.path for f in glue.files("trades"))
    assert len(glue.files("trades")) == 3  # the third is on S3, its intent not committed
    report = compact(None, cfg.lake, older_than_seconds=0)  # merges it while the aggregator is down
    assert report.merged == 3 and report.purged == 3 and glue.is_retired(third)
    assert third not in _objects(s3, "trades")
    fresh = Aggregator(cfg, client)
    fresh.ensure_groups()
    fresh.recover_pending()  # redoes the third slice's intent: already compacted, so not written again
    fresh.drain()
    assert third not in _objects(s3, "trades")
    assert len(glue.files("trades")) == 2  # the merged file and the fourth slice
    counts = run_query("/nonexistent", "select count(*), count(distinct id) from trades", s3=s3)
    assert counts.iloc[0].tolist() == [40, 40]
    manifest = S3Store(s3).get(third.rsplit("/", 1)[0] + "/" + MANIFEST_NAME)
    assert manifest is not None and third.rsplit("/", 1)[-1].encode() in manifest
