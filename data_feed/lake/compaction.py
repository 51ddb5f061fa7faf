"""Compaction: merge the small slice files of closed periods into large files, atomically for readers.

Only closed periods are touched: a slice whose end, plus the aggregator's
allowed lateness, plus ``--older-than``, is behind the clock. Per partition
(channel, exchange, symbol, date), closed files are taken in time order (slice
start, then name: a slice's late parts after its first) and packed into runs of
at most the target size; each run of two files or more is written as one file
(rows in the same order, so a merged l2_book file opens with its first slice's
full book snapshot and still decodes alone), then swapped for its members in
one catalog swap per partition. The members are retired, not deleted: they go
once no reader's snapshot predates the swap and the grace period has passed.
``compact``, ``purge_retired`` and ``data_feed.lake.retention.expire`` are written
once over the store and catalog protocols (``MaintainedStore`` in
``data_feed.lake.layout``, ``MaintainedCatalog`` in ``data_feed.lake.catalog``), which the
local pair (directory + SQLite) and the S3 pair (S3 + Glue) implement, and
each runs under the catalog's maintenance lock.

A crash at any point is harmless: before the swap the merged file is an orphan
no query lists (and a rerun rewrites it under the same name); after it, the
retired members are deleted by the next run.

On S3 (``lake.s3``, ``root`` None) the merged file is one PUT and the swap is
one PUT of the partition's compaction manifest (``data_feed.lake.s3_manifest``),
which queries and the aggregator read. S3 has no reader leases: retired files
are deleted once ``lake.compaction_grace_seconds`` have passed since the swap,
so the grace period must outlast the longest query (a longer one may fail,
never see a row twice). Runs must not overlap, from any host: the maintenance lock is a lease object in the
bucket (``data_feed.lake.s3_lease``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_feed.contracts.config import LakeConfig
from data_feed.contracts.schemas import CHANNEL_SCHEMAS, NS_PER_SECOND
from data_feed.lake.catalog import CatalogFile, LocalCatalog, MaintainedCatalog, require_lake
from data_feed.lake.catalog import MaintenanceBusy as MaintenanceBusy
from data_feed.lake.catalog import maintenance_lock as maintenance_lock
from data_feed.lake.layout import LocalStore, MaintainedStore, Partition, SliceKey, compacted_file_name, partition_dir

LOG = logging.getLogger("data_feed.compaction")

BYTES_PER_MB = 1024 * 1024
DURATION_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class CompactionMismatch(RuntimeError):
    """A merged file does not hold the rows of its members; nothing was swapped."""


@dataclass
class CompactionReport:
    files_before: int = 0
    files_after: int = 0
    merged: int = 0  # source files swapped out
    written: int = 0  # merged files swapped in
    bytes_written: int = 0
    purged: int = 0  # retired files deleted
    held: int = 0  # retired files kept for readers or the grace period
    per_channel: dict[str, tuple[int, int]] = field(default_factory=dict)  # files before, after


def parse_duration(text: str) -> float:
    """Seconds of a duration such as ``90s``, ``30m``, ``6h``, ``2d`` (``0s``: every closed slice)."""
    unit = text[-1:]
    try:
        count = float(text[:-1])
    except ValueError:
        count = -1.0
    if unit not in DURATION_UNIT_SECONDS or count < 0:
        raise ValueError(f"duration {text!r}: expected a number >= 0 and a unit of s, m, h or d, e.g. 30m, 6h")
    return count * DURATION_UNIT_SECONDS[unit]


def closed_before_ns(lake: LakeConfig, older_than_seconds: float, now_ns: int) -> int:
    """Slices starting before this instant are closed: the aggregator will not write them again, and they
    are older than ``older_than_seconds``."""
    horizon = lake.slice_seconds + lake.allowed_lateness_seconds + older_than_seconds
    return now_ns - int(horizon * NS_PER_SECOND)


def plan_runs(files: list[CatalogFile], target_bytes: int) -> list[list[CatalogFile]]:
    """Consecutive files of one partition packed into runs of at most ``target_bytes``; runs of one dropped."""
    runs: list[list[CatalogFile]] = []
    current: list[CatalogFile] = []
    size = 0
    for f in sorted(files, key=lambda f: (f.slice_start_ns, f.path)):
        if current and size + f.bytes > target_bytes:
            runs.append(current)
            current, size = [], 0
        current.append(f)
        size += f.bytes
    runs.append(current)
    return [r for r in runs if len(r) > 1]


def open_maintained(root: str | Path | None, lake: LakeConfig) -> tuple[MaintainedStore, MaintainedCatalog]:
    """The store and catalog maintenance works on: the local lake at ``root`` (``NoLake`` unless it is one: a
    wrong ``--lake`` is an error, never a new empty lake), or with ``root`` None the lake on S3 (``lake.s3``),
    its maintenance lock a lease object in the bucket."""
    if root is not None:
        root = require_lake(root)
        return LocalStore(root), LocalCatalog(root)
    if lake.s3 is None:
        raise ValueError("no lake directory given and lake.s3 is not configured")
    from data_feed.lake.s3 import GlueCatalog, S3Store

    store = S3Store(lake.s3)
    return store, GlueCatalog(lake.s3, store)


def compact(root: str | Path | None, lake: LakeConfig, older_than_seconds: float, target_bytes: int | None = None,
            now_ns: int | None = None) -> CompactionReport:
    """Merge every closed partition's small files of the lake at ``root`` (None: the lake on S3), one swap per
    partition; then delete retired files no reader can still use (``purge_retired``), under the lock."""
    target = target_bytes if target_bytes is not None else lake.compaction_target_mb * BYTES_PER_MB
    now = now_ns if now_ns is not None else time.time_ns()
    cutoff = closed_before_ns(lake, older_than_seconds, now)
    report = CompactionReport()
    store, catalog = open_maintained(root, lake)
    try:
        with catalog.lock():
            for channel in CHANNEL_SCHEMAS:
                before, after = 0, 0
                for partition in catalog.partitions(channel):
                    n, m = _compact_partition(store, catalog, (channel, *partition), cutoff, target,
                                              lake.compression_level, now, report)
                    before, after = before + n, after + m
                report.files_before += before
                report.files_after += after
                if before:
                    report.per_channel[channel] = (before, after)
            report.purged, report.held = purge_retired(store, catalog, lake.compaction_grace_seconds, now)
    finally:
        catalog.close()
    return report


def _compact_partition(store: MaintainedStore, catalog: MaintainedCatalog, partition: Partition, cutoff_ns: int,
                       target_bytes: int, level: int, now_ns: int, report: CompactionReport) -> tuple[int, int]:
    """Merge one partition's closed files, each run written then swapped in alone (readers see every step
    whole); returns the partition's files before, after."""
    files = catalog.visible_files(partition)
    after = len(files)
    for run in plan_runs([f for f in files if f.slice_start_ns < cutoff_ns], target_bytes):
        merged = _merge(store, run, level)
        catalog.swap(partition, [f.path for f in run], [merged], now_ns)
        report.merged += len(run)
        report.written += 1
        report.bytes_written += merged.bytes
        after -= len(run) - 1
        LOG.info("channel=%s exchange=%s symbol=%s date=%s: merged %d files (%d rows) into %s (%d bytes)",
                 *partition, len(run), merged.rows, merged.path.rsplit("/", 1)[-1], merged.bytes)
    return len(files), after


def _merge(store: MaintainedStore, run: list[CatalogFile], level: int) -> CatalogFile:
    """Write one merged file of ``run``; returns its catalog entry (not yet part of the lake)."""
    first, last = run[0], run[-1]
    key = SliceKey(first.channel, first.exchange, first.symbol, first.slice_start_ns)
    members = [f.path for f in run]
    name = compacted_file_name(key, SliceKey(last.channel, last.exchange, last.symbol, last.slice_start_ns), members)
    relpath = str(partition_dir(Path(), key) / name)
    size, read, written = store.write_merged(relpath, first.channel, members, level)
    listed = sum(f.rows for f in run) if all(f.rows >= 0 for f in run) else read  # S3 lists no row counts
    if written != read or written != listed:
        raise CompactionMismatch(f"compaction of {len(run)} files into {store.uri(relpath)}: wrote {written} rows "
                                 f"of {read} read, the catalog lists {listed}; nothing swapped")
    return CatalogFile(relpath, first.channel, first.exchange, first.symbol, first.date, first.slice_start_ns,
                       written, size)


def purge_retired(store: MaintainedStore, catalog: MaintainedCatalog, grace_seconds: float,
                  now_ns: int) -> tuple[int, int]:
    """Delete retired files that no reader can still use and whose grace period has passed; returns (deleted,
    still held for readers or the grace period). The caller holds the maintenance lock."""
    free, held = catalog.retired_past(grace_seconds, now_ns)
    store.delete(free)
    catalog.mark_deleted(free)
    if free or held:
        LOG.info("deleted %d retired files; %d still held for readers or the grace period", len(free), held)
    return len(free), held
