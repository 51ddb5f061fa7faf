"""Compaction: merge the small slice files of closed periods into large files, atomically for readers.

Only closed periods are touched: a slice whose end, plus the aggregator's
allowed lateness, plus ``--older-than``, is behind the clock. Per partition
(channel, exchange, symbol, date), closed files are taken in time order (slice
start, then name: a slice's late parts after its first) and packed into runs of
at most the target size; each run of two files or more is written as one file
(rows in the same order, so a merged l2_book file opens with its first slice's
full book snapshot and still decodes alone), then swapped for its members in
one catalog transaction. The members are retired, not deleted: they go once no
reader's snapshot predates the swap and the grace period has passed.

A crash at any point is harmless: before the swap the merged file is an orphan
no query lists (and a rerun rewrites it under the same name); after it, the
retired members are deleted by the next run.

On S3 (``lake.s3``, ``compact_s3``) the merged file is one PUT and the swap is
one PUT of the partition's compaction manifest (``data_feed.s3.Manifest``),
which queries and the aggregator read. S3 has no reader leases: retired files
are deleted once ``lake.compaction_grace_seconds`` have passed since the swap,
so the grace period must outlast the longest query (a longer one may fail,
never see a row twice). Runs must not overlap: the maintenance lock is taken
on ``lake.root`` of the host running it, so run compaction from one host.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from data_feed.catalog import CatalogFile, LocalCatalog, require_lake
from data_feed.config import LakeConfig
from data_feed.lake import SliceKey, compacted_file_name, partition_dir, write_merged
from data_feed.schemas import CHANNEL_SCHEMAS, NS_PER_SECOND

if TYPE_CHECKING:
    from data_feed.lake import Partition
    from data_feed.s3 import GlueCatalog, S3Store

LOG = logging.getLogger("data_feed.compaction")

BYTES_PER_MB = 1024 * 1024
LOCK_FILE = "_maintenance.lock"  # one compaction or retention run per lake at a time


DURATION_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class MaintenanceBusy(RuntimeError):
    """Another compaction or retention run holds the lake's maintenance lock."""


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


@contextmanager
def maintenance_lock(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MaintenanceBusy(f"another compaction or retention run is working on {root}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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


def compact(root: str | Path, lake: LakeConfig, older_than_seconds: float, target_bytes: int | None = None,
            now_ns: int | None = None) -> CompactionReport:
    """Merge every closed partition's small files; then delete retired files no reader can still use."""
    root = Path(root)
    target = target_bytes if target_bytes is not None else lake.compaction_target_mb * BYTES_PER_MB
    cutoff = closed_before_ns(lake, older_than_seconds, now_ns if now_ns is not None else time.time_ns())
    report = CompactionReport()
    require_lake(root)  # a wrong --lake is an error, never a new empty lake
    with maintenance_lock(root):
        catalog = LocalCatalog(root)
        try:
            for channel in CHANNEL_SCHEMAS:
                _compact_channel(root, catalog, channel, cutoff, target, lake.compression_level, report)
            report.purged, report.held = purge_retired(root, catalog, lake.compaction_grace_seconds)
        finally:
            catalog.close()
    return report


def _compact_channel(root: Path, catalog: LocalCatalog, channel: str, cutoff_ns: int, target_bytes: int,
                     level: int, report: CompactionReport) -> None:
    files = catalog.files(channel)
    before = len(files)
    by_partition: dict[tuple[str, str, str], list[CatalogFile]] = {}
    for f in files:
        if f.slice_start_ns < cutoff_ns:
            by_partition.setdefault((f.exchange, f.symbol, f.date), []).append(f)
    after = before
    for members in by_partition.values():
        for run in plan_runs(members, target_bytes):
            report.bytes_written += _merge(root, catalog, run, level)
            report.merged += len(run)
            report.written += 1
            after -= len(run) - 1
    report.files_before += before
    report.files_after += after
    if before:
        report.per_channel[channel] = (before, after)


def _merge(root: Path, catalog: LocalCatalog, run: list[CatalogFile], level: int) -> int:
    """Write one merged file from ``run`` and swap it in; returns its size."""
    first, last = run[0], run[-1]
    key = SliceKey(first.channel, first.exchange, first.symbol, first.slice_start_ns)
    members = [f.path for f in run]
    name = compacted_file_name(key, SliceKey(last.channel, last.exchange, last.symbol, last.slice_start_ns), members)
    relpath = str(partition_dir(Path(), key) / name)
    size = write_merged(root, relpath, first.channel, members, level)
    rows = sum(f.rows for f in run)
    written = pq.ParquetFile(root / relpath).metadata.num_rows
    if written != rows:
        raise CompactionMismatch(f"compaction of {len(run)} files into {relpath}: wrote {written} rows, the "
                                 f"catalog lists {rows}; nothing swapped")
    merged = CatalogFile(relpath, first.channel, first.exchange, first.symbol, first.date, first.slice_start_ns,
                         rows, size)
    catalog.replace(members, [merged])
    LOG.info("channel=%s exchange=%s symbol=%s date=%s: merged %d files (%d rows) into %s (%d bytes)",
             first.channel, first.exchange, first.symbol, first.date, len(run), rows, name, size)
    return size


def purge_retired(root: Path, catalog: LocalCatalog, grace_seconds: float) -> tuple[int, int]:
    """Delete retired files that no reader can still use; returns (deleted, still held)."""
    free, held = catalog.purgeable(grace_seconds)
    for path in free:
        with contextlib.suppress(FileNotFoundError):  # deleted by an earlier run that died before recording it
            os.unlink(root / path)
    catalog.mark_deleted(free)
    if free or held:
        LOG.info("deleted %d retired files; %d still held for readers or the grace period", len(free), held)
    return len(free), held


def compact_s3(lake: LakeConfig, older_than_seconds: float, target_bytes: int | None = None,
               now_ns: int | None = None) -> CompactionReport:
    """``compact`` for the lake on S3: merge every closed partition's small files, one manifest PUT per
    partition swapping them, then delete retired files whose grace period has passed (at ``now_ns``)."""
    from data_feed.s3 import GlueCatalog, S3Store

    if lake.s3 is None:
        raise ValueError("compact_s3: lake.s3 is not configured")
    target = target_bytes if target_bytes is not None else lake.compaction_target_mb * BYTES_PER_MB
    now = now_ns if now_ns is not None else time.time_ns()
    cutoff = closed_before_ns(lake, older_than_seconds, now)
    report = CompactionReport()
    with maintenance_lock(Path(lake.root)):
        catalog = GlueCatalog(lake.s3, S3Store(lake.s3))
        for channel in CHANNEL_SCHEMAS:
            before, after = 0, 0
            for partition in catalog.partitions(channel):
                n, m = _compact_partition_s3(catalog, (channel, *partition), cutoff, target,
                                             lake.compression_level, now, report)
                before, after = before + n, after + m
            report.files_before += before
            report.files_after += after
            if before:
                report.per_channel[channel] = (before, after)
        report.purged, report.held = purge_retired_s3(catalog, lake.compaction_grace_seconds, now)
    return report


def _compact_partition_s3(catalog: GlueCatalog, partition: Partition, cutoff_ns: int, target_bytes: int,
                          level: int, now_ns: int, report: CompactionReport) -> tuple[int, int]:
    """Merge one partition's closed files and swap them in one manifest PUT; returns its files before, after."""
    manifest, files = catalog.partition_files(partition)
    runs = plan_runs([f for f in files if f.slice_start_ns < cutoff_ns], target_bytes)
    if not runs:
        return len(files), len(files)
    merged = [_merge_s3(catalog.store, run, level) for run in runs]
    members = [f.path for run in runs for f in run]
    catalog.write_manifest(partition, manifest.swap(members, merged, now_ns))
    report.merged += len(members)
    report.written += len(merged)
    report.bytes_written += sum(f.bytes for f in merged)
    LOG.info("channel=%s exchange=%s symbol=%s date=%s: swapped %d files for %d merged ones on S3", *partition,
             len(members), len(merged))
    return len(files), len(files) - len(members) + len(merged)


def _merge_s3(store: S3Store, run: list[CatalogFile], level: int) -> CatalogFile:
    """PUT one merged file of ``run``; returns its catalog entry (not yet part of the lake)."""
    first, last = run[0], run[-1]
    key = SliceKey(first.channel, first.exchange, first.symbol, first.slice_start_ns)
    members = [f.path for f in run]
    name = compacted_file_name(key, SliceKey(last.channel, last.exchange, last.symbol, last.slice_start_ns), members)
    relpath = str(partition_dir(Path(), key) / name)
    size, read, written = store.write_merged(relpath, first.channel, members, level)
    if written != read:
        raise CompactionMismatch(f"compaction of {len(run)} files into {store.uri(relpath)}: wrote {written} rows "
                                 f"of {read} read; nothing swapped")
    return CatalogFile(relpath, first.channel, first.exchange, first.symbol, first.date, first.slice_start_ns,
                       written, size)


def purge_retired_s3(catalog: GlueCatalog, grace_seconds: float, now_ns: int) -> tuple[int, int]:
    """Delete retired objects swapped out at least ``grace_seconds`` before ``now_ns``; returns (deleted,
    still held for the grace period)."""
    horizon = now_ns - int(grace_seconds * NS_PER_SECOND)
    free, held = [], 0
    for channel in CHANNEL_SCHEMAS:
        for path, retired_ns in catalog.retired_objects(channel):
            if retired_ns <= horizon:
                free.append(path)
            else:
                held += 1
    catalog.store.delete(free)
    if free or held:
        LOG.info("deleted %d retired files from S3; %d still held for the grace period", len(free), held)
    return len(free), held
