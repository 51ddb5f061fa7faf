"""The lake as the aggregator sees it, in metrics: what each commit landed and where the lake's newest
slice ends (lake freshness is now minus that end, computed at scrape time), and, from the catalog every
``catalog.stats_interval_seconds`` (its cost differs by catalog), files, partitions and the files of the
fullest partition (small-file debt).

The catalog is re-read rather than counted at commit because compaction and retention, other processes,
change it too.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable

from botocore.exceptions import BotoCoreError, ClientError

from data_feed.cache.streams import parse_stream_key
from data_feed.contracts.config import GAPS_CHANNEL
from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake.catalog import Catalog, PartitionStats
from data_feed.lake.layout import SliceKey
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.aggregator")

STATS_ERRORS = (OSError, sqlite3.Error, BotoCoreError, ClientError)


class LakeMetrics:
    def __init__(self, catalog: Catalog, streams: Iterable[str], width_ns: int) -> None:
        self.catalog = catalog
        self.keys = sorted({(ch, ex) for ex, ch in map(parse_stream_key, streams)})
        self.width_ns = width_ns
        self.newest: dict[tuple[str, str, str], int] = {}  # slice end (ns) per (channel, exchange, symbol)
        self.interval = catalog.stats_interval_seconds
        self._next_refresh = 0.0

    def landed(self, sk: SliceKey, rows: int) -> None:
        """A committed file of ``rows`` rows of slice ``sk``."""
        if sk.channel == GAPS_CHANNEL:  # gap rows come and go with outages: no freshness to speak of
            return
        key = (sk.channel, sk.exchange, sk.symbol)
        metrics.SYMBOL_ROWS.labels(*key).inc(rows)
        end = sk.start_ns + self.width_ns
        if end > self.newest.get(key, 0):  # a late part of an older slice does not make the lake older
            self.newest[key] = end
            metrics.LAKE_NEWEST_END.labels(*key).set(end / NS_PER_SECOND)

    def maybe_refresh(self) -> None:
        """``refresh`` once every ``self.interval`` seconds."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.interval
            self.refresh()

    def refresh(self) -> None:
        """Files, partitions and the fullest partition of every (channel, exchange), from the catalog."""
        try:
            stats = self.partition_stats()
        except STATS_ERRORS as err:
            LOG.warning("lake metrics: could not read the catalog (%s: %s); retrying in %.0fs", type(err).__name__,
                        err, self.interval)
            return
        for channel, exchange in self.keys:
            found = stats.get((channel, exchange), PartitionStats(0, 0, 0))
            metrics.LAKE_FILES.labels(channel, exchange).set(found.files)
            metrics.LAKE_PARTITIONS.labels(channel, exchange).set(found.partitions)
            metrics.LAKE_PARTITION_FILES_MAX.labels(channel, exchange).set(found.max_files)

    def partition_stats(self) -> dict[tuple[str, str], PartitionStats]:
        return self.catalog.partition_stats(self.keys)
