"""Retention: per channel, delete whole partitions older than ``lake.retention_days`` and their catalog entries.

A partition (channel, exchange, symbol, date) expires once its whole day is
older than the channel's retention. Its files leave the catalog in one
transaction, like compaction's swap, and are deleted once no reader's snapshot
can still use them (the same grace period and leases), so a query running
during retention sees the partition whole or not at all.

On S3 (``lake.s3``) an expired partition is removed from Glue first (queries
list files from Glue's partitions, so it leaves them whole) and its objects are
deleted right after: S3 has no reader leases, so a query already reading it
may fail, never see half of it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_feed.catalog import LocalCatalog, require_lake
from data_feed.compaction import maintenance_lock, purge_retired
from data_feed.config import LakeConfig
from data_feed.lake import date_start_ns
from data_feed.schemas import NS_PER_SECOND

LOG = logging.getLogger("data_feed.retention")

SECONDS_PER_DAY = 86_400


@dataclass
class RetentionReport:
    partitions: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # channel -> expired
    files: int = 0
    purged: int = 0
    held: int = 0


def expired(date: str, days: int, now_ns: int) -> bool:
    """Whether the partition of ``date`` (YYYY-MM-DD, UTC) ended more than ``days`` days before ``now_ns``."""
    end_ns = date_start_ns(date) + SECONDS_PER_DAY * NS_PER_SECOND
    return end_ns + days * SECONDS_PER_DAY * NS_PER_SECOND <= now_ns


def expire(root: str | Path, lake: LakeConfig, now_ns: int | None = None) -> RetentionReport:
    """Drop every expired partition of every channel with a retention; then delete what no reader holds."""
    root = Path(root)
    now = now_ns if now_ns is not None else time.time_ns()
    report = RetentionReport()
    require_lake(root)  # a wrong --lake is an error, never a new empty lake
    with maintenance_lock(root):
        catalog = LocalCatalog(root)
        try:
            for channel, days in sorted(lake.retention_days.items()):
                _expire_channel(catalog, channel, days, now, report)
            report.purged, report.held = purge_retired(root, catalog, lake.compaction_grace_seconds)
        finally:
            catalog.close()
    return report


def expire_s3(lake: LakeConfig, now_ns: int | None = None) -> RetentionReport:
    """Drop every expired partition of the lake on S3 (``lake.s3``) from Glue, then delete its files."""
    from data_feed.s3 import GlueCatalog, S3Store

    if lake.s3 is None:
        raise ValueError("expire_s3: lake.s3 is not configured")
    catalog = GlueCatalog(lake.s3, S3Store(lake.s3))
    now = now_ns if now_ns is not None else time.time_ns()
    report = RetentionReport()
    for channel, days in sorted(lake.retention_days.items()):
        gone = [p for p in catalog.partitions(channel) if expired(p[2], days, now)]
        for exchange, symbol, date in gone:
            deleted = catalog.drop_partition(channel, exchange, symbol, date)
            report.files += len(deleted)
            report.purged += len(deleted)
            LOG.info("channel=%s exchange=%s symbol=%s date=%s: expired after %d days (%d files deleted from S3)",
                     channel, exchange, symbol, date, days, len(deleted))
        if gone:
            report.partitions[channel] = gone
    return report


def _expire_channel(catalog: LocalCatalog, channel: str, days: int, now_ns: int, report: RetentionReport) -> None:
    gone = [p for p in catalog.partitions(channel) if expired(p[2], days, now_ns)]
    for exchange, symbol, date in gone:
        paths = [f.path for f in catalog.files(channel, exchange, symbol) if f.date == date]
        catalog.replace(paths, [])
        report.files += len(paths)
        LOG.info("channel=%s exchange=%s symbol=%s date=%s: expired after %d days (%d files)", channel, exchange,
                 symbol, date, days, len(paths))
    if gone:
        report.partitions[channel] = gone
