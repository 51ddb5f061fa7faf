"""Retention: per channel, delete whole partitions older than ``lake.retention_days`` and their catalog entries.

A partition (channel, exchange, symbol, date) expires once its whole day is
older than the channel's retention. Its files leave the catalog in one
transaction, like compaction's swap, and are deleted once no reader's snapshot
can still use them (the same grace period and leases), so a query running
during retention sees the partition whole or not at all.

On S3 (``lake.s3``) an expired partition is removed from Glue first (queries
list files from Glue's partitions, so it leaves them whole) and its objects are
deleted right after: S3 has no reader leases, so a query already reading it
may fail, never see half of it. Either way ``expire`` holds the maintenance
lock (``MaintainedCatalog.lock``), so it never overlaps a compaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_feed.contracts.config import LakeConfig
from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake.catalog import MaintainedCatalog
from data_feed.lake.compaction import open_maintained, purge_retired
from data_feed.lake.layout import date_start_ns

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


def expire(root: str | Path | None, lake: LakeConfig, now_ns: int | None = None) -> RetentionReport:
    """Drop every expired partition of every channel with a retention from the lake at ``root`` (None: the lake
    on S3), under the maintenance lock; then delete what no reader holds (``purge_retired``)."""
    now = now_ns if now_ns is not None else time.time_ns()
    report = RetentionReport()
    store, catalog = open_maintained(root, lake)
    try:
        with catalog.lock():
            for channel, days in sorted(lake.retention_days.items()):
                _expire_channel(catalog, channel, days, now, report)
            purged, report.held = purge_retired(store, catalog, lake.compaction_grace_seconds, now)
            report.purged += purged
    finally:
        catalog.close()
    return report


def _expire_channel(catalog: MaintainedCatalog, channel: str, days: int, now_ns: int,
                    report: RetentionReport) -> None:
    gone = [p for p in catalog.partitions(channel) if expired(p[2], days, now_ns)]
    for exchange, symbol, date in gone:
        files, deleted = catalog.expire_partition((channel, exchange, symbol, date))
        report.files += files
        report.purged += deleted
        LOG.info("channel=%s exchange=%s symbol=%s date=%s: expired after %d days (%d files, %d deleted at once)",
                 channel, exchange, symbol, date, days, files, deleted)
    if gone:
        report.partitions[channel] = gone
