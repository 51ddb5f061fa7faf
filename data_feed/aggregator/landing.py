"""Landing a slice: the aggregator's lake side, one slice table -> one durable, catalogued lake file.

An l2_book slice is prefixed with the book at the end of the symbol's previous slice (``data_feed.lake.book``),
so any single file can be decoded alone; a gaps slice keeps each distinct row once (several writers and
their retries may repeat one). A slice compaction already retired, or a file compaction already covers,
is not written again. The store and catalog are the local directory and SQLite, or S3 and Glue.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from botocore.exceptions import BotoCoreError, ClientError

from data_feed.contracts.config import GAPS_CHANNEL, Config
from data_feed.contracts.schemas import L2_BOOK, Channel
from data_feed.lake.book import SNAPSHOT_STAMP_OFFSET_NS, book_state, snapshot_table
from data_feed.lake.catalog import Catalog, LocalCatalog
from data_feed.lake.layout import LocalStore, SliceKey, SliceStore, slice_relpath
from data_feed.lake.stats import LakeMetrics
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.aggregator")

BOOK_CHANNEL = Channel.L2_BOOK  # its slices open with a full book snapshot (data_feed.lake.book)
LAKE_RETRY_MIN_SECONDS = 0.1
LAKE_RETRY_MAX_SECONDS = 5.0  # a failed lake write is retried at least this often
LAKE_WRITE_ERRORS = (OSError, sqlite3.Error, BotoCoreError, ClientError)  # the lake, not this process, is at fault


def open_lake(cfg: Config, root: Path) -> tuple[SliceStore, Catalog]:
    """The lake's store and catalog: S3 and Glue when ``lake.s3`` is set, else ``root`` and its local catalog."""
    if cfg.lake.s3 is None:
        return LocalStore(root), LocalCatalog(root)
    from data_feed.lake.s3 import GlueCatalog, S3Store

    store = S3Store(cfg.lake.s3)
    return store, GlueCatalog(cfg.lake.s3, store)


class Lander:
    """Writes slices to the store and registers them in the catalog, counting them in the metrics."""

    def __init__(self, cfg: Config, store: SliceStore, catalog: Catalog, lake_metrics: LakeMetrics) -> None:
        self.cfg = cfg
        self.store = store
        self.catalog = catalog
        self.lake_metrics = lake_metrics

    def land(self, sk: SliceKey, first_entry_id: str, table: pa.Table) -> int:
        """Write the file atomically and durably and register it in the catalog; returns its size."""
        if self.catalog.is_retired(slice_relpath(sk, first_entry_id)):
            LOG.warning("exchange=%s channel=%s symbol=%s: slice %s was already compacted into a larger file; "
                        "not writing it again", sk.exchange, sk.channel, sk.symbol, sk.stamp())
            return 0
        if sk.channel == BOOK_CHANNEL:
            table = self._with_opening_snapshot(sk, table, slice_relpath(sk, first_entry_id))
        elif sk.channel == GAPS_CHANNEL:
            table = distinct_rows(table)
        path, size = self.store.write_slice(sk, table, first_entry_id, self.cfg.lake.compression_level)
        if not self.catalog.register(sk, path, table.num_rows, size):
            LOG.warning("exchange=%s channel=%s symbol=%s: %s was already compacted into a larger file; "
                        "dropping the rewritten copy", sk.exchange, sk.channel, sk.symbol, path)
            self.store.discard(path)
            return 0
        metrics.SLICES_WRITTEN.labels(sk.channel, sk.exchange).inc()
        metrics.ROWS_WRITTEN.labels(sk.channel, sk.exchange).inc(table.num_rows)
        metrics.BYTES_WRITTEN.labels(sk.channel, sk.exchange).inc(size)
        self.lake_metrics.landed(sk, table.num_rows)
        return size

    def _with_opening_snapshot(self, sk: SliceKey, table: pa.Table, path: str) -> pa.Table:
        """Prefix an l2_book slice with the book at the end of the symbol's previous slice (data_feed.lake.book).

        An additional part (late rows of a slice already landed) continues that slice's parts: its prefix is
        the book at their end, not the previous slice's (which, sorted by ts_recv, reset the book mid-slice)."""
        files = [f for f in self.catalog.files(BOOK_CHANNEL, sk.exchange, sk.symbol) if f.path != path]
        earlier = [f for f in files if f.slice_start_ns <= sk.start_ns]
        if not earlier or table.num_rows == 0:
            return table
        latest = max(f.slice_start_ns for f in earlier)
        parts = [self.store.read(f.path, L2_BOOK) for f in earlier if f.slice_start_ns == latest]
        book = book_state(pa.concat_tables(parts).to_pandas())
        first_recv = int(np.min(table.column("ts_recv").to_numpy()))
        snap = snapshot_table(book, self.cfg.lake.book_snapshot_depth, sk.start_ns,
                              first_recv - SNAPSHOT_STAMP_OFFSET_NS)
        return pa.concat_tables([snap, table.cast(L2_BOOK)])


class LakeBackoff:
    """The lake's write faults: why the last write failed (until one succeeds) and when to retry, with a
    backoff doubling from ``LAKE_RETRY_MIN_SECONDS`` to ``LAKE_RETRY_MAX_SECONDS``."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.retry_at = 0.0  # time.monotonic()
        self.delay = LAKE_RETRY_MIN_SECONDS

    def failed(self, sk: SliceKey, err: BaseException) -> None:
        metrics.LAKE_WRITE_ERRORS.labels(sk.channel, sk.exchange).inc()
        first = self.error is None
        self.error = f"lake write failed: {type(err).__name__}: {err}"[:300]
        self.retry_at = time.monotonic() + self.delay
        log = LOG.error if first or self.delay >= LAKE_RETRY_MAX_SECONDS else LOG.warning
        log("exchange=%s channel=%s symbol=%s: %s; slice %s kept, entries unacknowledged; retrying in %.1fs",
            sk.exchange, sk.channel, sk.symbol, self.error, sk.stamp(), self.delay)
        self.delay = min(self.delay * 2, LAKE_RETRY_MAX_SECONDS)

    def succeeded(self) -> bool:
        """A write went through; True when that ends a failure."""
        if self.error is None:
            return False
        LOG.info("the lake accepts writes again; catching up")
        self.error = None
        self.delay = LAKE_RETRY_MIN_SECONDS
        return True

    def waiting(self) -> bool:
        """Whether a failure's retry time is still ahead."""
        return self.error is not None and time.monotonic() < self.retry_at

    def wait(self, block_ms: int | None, default_block_ms: int) -> None:
        """Sleep towards the retry time, at most as long as a read would block."""
        delay = self.retry_at - time.monotonic()
        if delay > 0:
            limit = default_block_ms / 1000 if block_ms is None else max(block_ms / 1000, delay)
            time.sleep(min(delay, limit))


def distinct_rows(table: pa.Table) -> pa.Table:
    """Gap rows once each: several roles write gaps with automatic ids, and a retried write may repeat them."""
    if table.num_rows < 2:
        return table
    unique = table.group_by(table.column_names, use_threads=False).aggregate([])
    return unique.select(table.column_names).sort_by([("ts_event", "ascending")])
