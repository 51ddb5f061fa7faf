"""Prometheus metrics of every role, defined once.

Roles run as separate OS processes; prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the spawner before any child starts)
lets the spawner serve all of them from one ``/metrics`` endpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from data_feed.contracts.rundir import MULTIPROC_ENV

FRAMES_RECEIVED = Counter(
    "data_feed_frames_received_total", "Websocket frames received from the exchange", ["exchange"]
)
BAD_FRAMES = Counter(
    "data_feed_bad_frames_total", "Exchange frames that could not be parsed (logged and skipped)", ["exchange"]
)
RECORDS_CACHED = Counter(
    "data_feed_records_cached_total", "Records written to Redis streams", ["exchange", "channel"]
)
ENTRIES_CACHED = Counter(
    "data_feed_stream_entries_total", "Stream entries (batches) written to Redis", ["exchange", "channel"]
)
STREAM_BOUND_HITS = Counter(
    "data_feed_stream_bound_hits_total", "Times a writer found a stream at redis.stream_maxlen and began spilling",
    ["stream"],
)
SPILL_BYTES = Gauge("data_feed_spill_bytes", "Compressed batches a writer holds on local disk for Redis",
                    ["writer"], multiprocess_mode="livemax")
SPILLED_ENTRIES = Counter("data_feed_spilled_entries_total", "Stream entries a writer had to spill to disk",
                          ["writer"])
DROPPED_RECORDS = Counter("data_feed_dropped_records_total",
                          "Records dropped because the stream and the spill were full (each an overflow gap)",
                          ["writer", "channel"])
LAKE_WRITE_ERRORS = Counter("data_feed_lake_write_errors_total",
                            "Failed lake writes (disk full, read-only, S3 errors); retried", ["channel", "exchange"])
CACHE_WRITE_ERRORS = Counter(
    "data_feed_cache_write_errors_total", "Failed Redis writes (retried; records kept in memory)", ["exchange"]
)
STREAM_LENGTH = Gauge(
    "data_feed_stream_length", "Entries in a Redis stream", ["stream"], multiprocess_mode="livemax"
)
CONSUMER_LAG = Gauge(
    "data_feed_consumer_lag", "Stream entries not yet acknowledged by the aggregator", ["stream"],
    multiprocess_mode="livemax",
)
SLICES_WRITTEN = Counter("data_feed_slices_written_total", "Parquet slice files written", ["channel", "exchange"])
ROWS_WRITTEN = Counter("data_feed_rows_written_total", "Rows written to the lake", ["channel", "exchange"])
BYTES_WRITTEN = Counter("data_feed_bytes_written_total", "Parquet bytes written to the lake", ["channel", "exchange"])
BAD_ENTRIES = Counter(
    "data_feed_bad_stream_entries_total", "Stream entries the aggregator could not decode", ["stream"]
)
LATE_RECORDS = Counter(
    "data_feed_late_records_total", "Records that arrived after their slice was written", ["channel", "exchange"]
)
GAPS = Counter("data_feed_gaps_total", "Gaps in collected data (disconnects, sequence gaps, resyncs, bad frames)",
               ["exchange", "channel", "reason"])
SIM_FAULTS = Counter("data_feed_sim_faults_total", "Faults the simulator injected", ["exchange", "fault"])
RESTARTS = Counter("data_feed_role_restarts_total", "Role processes restarted by the spawner", ["role"])
BUS_DROPPED = Counter("data_feed_bus_dropped_batches_total", "Bus batches a publisher dropped at its high-water mark",
                      ["channel"])
FEATURE_SLICES = Counter("data_feed_feature_slices_total", "Feature slices the featurizer closed and published",
                         ["exchange", "interval"])
FEATURE_PROVISIONAL = Counter("data_feed_feature_provisional_total",
                              "Provisional updates of open slices published (featurizer.provisional_ms)",
                              ["exchange", "interval"])
FEATURE_LATE_RECORDS = Counter(
    "data_feed_feature_late_records_total", "Records that reached the featurizer after their slice had closed",
    ["exchange", "channel"],
)
FEATURE_LATENCY = Gauge("data_feed_feature_publish_delay_seconds",
                        "Wall time from a slice's end to its publication, last slice", ["exchange"],
                        multiprocess_mode="livemax")
ROLE_UP = Gauge("data_feed_role_up", "1 while the role's process is running", ["role"], multiprocess_mode="livemax")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0)
FEATURE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECEIPT_SAMPLES_PER_FLUSH = 8  # per channel: the latency histogram samples a flush's rows, the hot path stays as is

RECEIPT_LATENCY = Histogram(
    "data_feed_receipt_latency_seconds",
    f"Exchange time to local receipt (ts_recv - ts_event), up to {RECEIPT_SAMPLES_PER_FLUSH} records per channel "
    "and flush", ["exchange", "channel"], buckets=LATENCY_BUCKETS)
LAST_FRAME = Gauge("data_feed_exchange_last_frame_timestamp_seconds",
                   "When the collector last counted new frames from the exchange (the run's start before any)",
                   ["exchange"], multiprocess_mode="max")
GAP_DURATION = Histogram("data_feed_gap_duration_seconds",
                         "Exchange time without data (missing_to_ts - missing_from_ts) of gaps rows that bound both",
                         ["exchange", "channel", "reason"], buckets=GAP_BUCKETS)
LAKE_NEWEST_END = Gauge("data_feed_lake_newest_slice_end_timestamp_seconds",
                        "End (exchange time) of the newest slice committed to the lake (the run's start before any)",
                        ["channel", "exchange", "symbol"], multiprocess_mode="max")
SYMBOL_ROWS = Counter("data_feed_symbol_rows_written_total", "Rows written to the lake, per symbol",
                      ["channel", "exchange", "symbol"])
LAKE_FILES = Gauge("data_feed_lake_files", "Files in the lake's catalog", ["channel", "exchange"],
                   multiprocess_mode="livemax")
LAKE_PARTITIONS = Gauge("data_feed_lake_partitions", "Partitions (symbol and date) in the lake's catalog",
                        ["channel", "exchange"], multiprocess_mode="livemax")
LAKE_PARTITION_FILES_MAX = Gauge(
    "data_feed_lake_partition_files_max",
    "Files in the most fragmented partition (small-file debt: `data-feed lake compact` merges them)",
    ["channel", "exchange"], multiprocess_mode="livemax")
FEATURE_FRAME_LATENCY = Histogram(
    "data_feed_feature_latency_seconds",
    "From the receipt of the newest record read when a slice closed (the frame that closed it) to its publication",
    ["exchange", "interval"], buckets=FEATURE_LATENCY_BUCKETS)

# The gateway (signal access): who is connected, what each consumer got, what was refused
GATEWAY_CONNECTED = Gauge("data_feed_gateway_connected_consumers", "Consumers with a CURVE connection to the gateway",
                          [], multiprocess_mode="livemax")
GATEWAY_DELIVERIES = Counter("data_feed_gateway_deliveries_total", "Feature batches sent to a consumer", ["consumer"])
GATEWAY_DENIALS = Counter("data_feed_gateway_denials_total",
                          "Subscriptions refused or narrowed (each told on the consumer's control topic)",
                          ["consumer"])
GATEWAY_HANDSHAKE_FAILURES = Counter("data_feed_gateway_handshake_failures_total",
                                     "CURVE handshakes refused by the ZAP handler (unknown or disabled key, domain)",
                                     ["reason"])
GATEWAY_REVOCATIONS = Counter("data_feed_gateway_revocations_total",
                              "Entitlements a consumer lost on a live connection (revoked, expired, disabled)",
                              ["consumer"])
GATEWAY_REVOCATION_LAG = Histogram(
    "data_feed_gateway_revocation_to_last_delivery_seconds",
    "From a revocation (its time in the permission table) to the consumer's last delivery before the gateway "
    "applied it", buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0))

# The deployment's bounds, so that alert rules compare with them instead of repeating the config
WATCHDOG_SECONDS = Gauge("data_feed_exchange_watchdog_seconds", "exchanges.<ID>.watchdog_seconds", ["exchange"],
                         multiprocess_mode="livemax")
STREAM_MAXLEN = Gauge("data_feed_stream_maxlen_entries", "redis.stream_maxlen", [], multiprocess_mode="livemax")
SPILL_MAX_BYTES = Gauge("data_feed_spill_max_bytes", "redis.spill_max_mb, in bytes (per writer)", [],
                        multiprocess_mode="livemax")
SLICE_SECONDS = Gauge("data_feed_lake_slice_seconds", "lake.slice_seconds", [], multiprocess_mode="livemax")
LAKE_LATENESS_SECONDS = Gauge("data_feed_lake_allowed_lateness_seconds", "lake.allowed_lateness_seconds", [],
                              multiprocess_mode="livemax")
FEATURE_LATENESS_SECONDS = Gauge("data_feed_featurizer_allowed_lateness_seconds",
                                 "featurizer.allowed_lateness_seconds", [], multiprocess_mode="livemax")


@dataclass(frozen=True)
class ScrapeGauge:
    """A gauge the spawner computes when ``/metrics`` is scraped, so that it keeps counting while the role it
    watches is stopped or stuck: an age (now minus a role's timestamp gauge ``age_of``) or a Redis reading
    (``data_feed.runtime.scrape``)."""

    name: str
    documentation: str
    labelnames: tuple[str, ...]
    age_of: Gauge | None = None

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)


LAKE_FRESHNESS = ScrapeGauge("data_feed_lake_freshness_seconds",
                             "Now minus the end of the newest slice committed to the lake",
                             ("channel", "exchange", "symbol"), age_of=LAKE_NEWEST_END)
EXCHANGE_SILENCE = ScrapeGauge("data_feed_exchange_silence_seconds",
                               "Now minus when the collector last counted new frames from the exchange",
                               ("exchange",), age_of=LAST_FRAME)
STREAM_OLDEST_AGE = ScrapeGauge(
    "data_feed_stream_oldest_pending_age_seconds",
    "Now minus the receive time of the oldest entry the aggregator has not acknowledged (0: none)", ("stream",))
SYMBOL_CACHE_AGE = ScrapeGauge(
    "data_feed_symbol_cache_age_seconds",
    "Now minus the receive time of the symbol's newest record in the cache (the run's start before any)",
    ("exchange", "channel", "symbol"))
SCRAPE_GAUGES = (LAKE_FRESHNESS, EXCHANGE_SILENCE, STREAM_OLDEST_AGE, SYMBOL_CACHE_AGE)


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render_latest(*extra: Collector) -> bytes:
    """Metrics of every role process (multiprocess mode) or of this process alone, the ages derived from
    their timestamps (``ScrapeGauge.age_of``), and what ``extra`` collectors compute now."""
    source: Collector = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        source = prom_multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    registry.register(_WithAges(source))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _WithAges(Collector):
    """Every metric of ``source``, and for each timestamp gauge a ``ScrapeGauge`` names, the age it implies."""

    def __init__(self, source: Collector) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        ages = {_family_name(g.age_of): g for g in SCRAPE_GAUGES if g.age_of is not None}
        now = time.time()
        for family in self.source.collect():
            yield family
            age = ages.get(family.name)
            if age is not None:
                yield _ages(age, family, now)


def _family_name(metric: Gauge) -> str:
    return next(iter(metric.describe())).name


def _ages(age: ScrapeGauge, family: Metric, now: float) -> GaugeMetricFamily:
    out = age.family()
    for sample in family.samples:
        out.add_metric([sample.labels[name] for name in age.labelnames], max(0.0, now - sample.value))
    return out


def count_gap(exchange: str, channel: str, reason: str, missing_from_ns: int | None,
              missing_to_ns: int | None) -> None:
    """One gaps row: counted by reason, and its window's length when the row bounds both ends."""
    from data_feed.contracts.schemas import NS_PER_SECOND

    GAPS.labels(exchange, channel, reason).inc()
    if missing_from_ns is not None and missing_to_ns is not None:
        GAP_DURATION.labels(exchange, channel, reason).observe(max(0, missing_to_ns - missing_from_ns) / NS_PER_SECOND)


def export_known(cfg: Any, roles: list[str]) -> None:
    """Every metric at 0 for every label set this config can produce, from the first scrape (a panel or an
    alert over ``rate()`` needs the series before its first event). ``cfg`` is a ``config.Config``."""
    from data_feed.cache.streams import configured_streams, parse_stream_key
    from data_feed.contracts.schemas import Channel, GapReason

    for role in roles:
        RESTARTS.labels(role).inc(0)
    _export_bounds(cfg)
    _export_lake(cfg, time.time())
    streams = configured_streams(cfg)
    for key in streams:
        exchange, channel = parse_stream_key(key)
        for metric in (STREAM_BOUND_HITS, BAD_ENTRIES):
            metric.labels(key).inc(0)
        for gauge in (STREAM_LENGTH, CONSUMER_LAG):
            gauge.labels(key).set(0)
        for metric in (SLICES_WRITTEN, ROWS_WRITTEN, BYTES_WRITTEN, LATE_RECORDS, LAKE_WRITE_ERRORS):
            metric.labels(channel, exchange).inc(0)
        for metric in (RECORDS_CACHED, ENTRIES_CACHED):
            metric.labels(exchange, channel).inc(0)
        DROPPED_RECORDS.labels("featurizer" if channel == Channel.FEATURES else exchange, channel).inc(0)
        for reason in GapReason:
            GAPS.labels(exchange, channel, reason.value).inc(0)
        for gauge in (LAKE_FILES, LAKE_PARTITIONS, LAKE_PARTITION_FILES_MAX):
            gauge.labels(channel, exchange).set(0)
    _export_writers(cfg)


def _export_bounds(cfg: Any) -> None:
    STREAM_MAXLEN.set(cfg.redis.stream_maxlen)
    SPILL_MAX_BYTES.set(cfg.redis.spill_max_mb * 1024 * 1024)
    SLICE_SECONDS.set(cfg.lake.slice_seconds)
    LAKE_LATENESS_SECONDS.set(cfg.lake.allowed_lateness_seconds)
    FEATURE_LATENESS_SECONDS.set(cfg.featurizer.allowed_lateness_seconds)
    for exchange, ex in cfg.exchanges.items():
        WATCHDOG_SECONDS.labels(exchange).set(ex.watchdog_seconds)


def lake_symbols(cfg: Any) -> list[tuple[str, str, str]]:
    """(channel, exchange, symbol) of every lake partition key the config's roles write, but ``gaps`` (its
    rows come and go with outages): each channel's symbols and, with the featurizer on, the features of the
    symbols it reads (trades and l2_book)."""
    from data_feed.contracts.schemas import Channel

    out = []
    for exchange, ex in cfg.exchanges.items():
        channels = ex.channels()
        out += [(name, exchange, symbol) for name, ch in channels.items() for symbol in ch.symbols]
        if cfg.featurizer.enabled:
            read = dict.fromkeys(s for name in (Channel.TRADES, Channel.L2_BOOK) if name in channels
                                 for s in channels[name].symbols)
            out += [(Channel.FEATURES.value, exchange, symbol) for symbol in read]
    return out


def _export_lake(cfg: Any, started: float) -> None:
    """Counters and histograms at 0, and the run's start as the newest slice end and frame time: an age counts
    from the start until the first commit or frame (an alert on it fires when none ever comes)."""
    from data_feed.contracts.schemas import GapReason

    for channel, exchange, symbol in lake_symbols(cfg):
        SYMBOL_ROWS.labels(channel, exchange, symbol).inc(0)
        LAKE_NEWEST_END.labels(channel, exchange, symbol).set(started)
    for exchange, ex in cfg.exchanges.items():
        LAST_FRAME.labels(exchange).set(started)
        for channel in ex.channels():
            RECEIPT_LATENCY.labels(exchange, channel)
            for reason in GapReason:
                GAP_DURATION.labels(exchange, channel, reason.value)


def _export_writers(cfg: Any) -> None:
    from data_feed.contracts.config import Fault
    from data_feed.contracts.schemas import Channel

    for exchange in cfg.exchanges:
        for metric in (FRAMES_RECEIVED, BAD_FRAMES, CACHE_WRITE_ERRORS, SPILLED_ENTRIES):
            metric.labels(exchange).inc(0)
        SPILL_BYTES.labels(exchange).set(0)
        if cfg.featurizer.enabled:
            for interval in cfg.featurizer.intervals:
                FEATURE_SLICES.labels(exchange, interval).inc(0)
                FEATURE_FRAME_LATENCY.labels(exchange, interval)
            FEATURE_PROVISIONAL.labels(exchange, cfg.featurizer.intervals[0]).inc(0)  # only the first has them
            for channel in (Channel.TRADES, Channel.L2_BOOK):
                FEATURE_LATE_RECORDS.labels(exchange, channel).inc(0)
            FEATURE_LATENCY.labels(exchange).set(0)
    SPILLED_ENTRIES.labels("featurizer").inc(0)
    SPILL_BYTES.labels("featurizer").set(0)
    for channel in (Channel.TRADES, Channel.L2_BOOK, Channel.GAPS):
        BUS_DROPPED.labels(channel).inc(0)
    if cfg.simulated():
        for exchange in cfg.simulated():
            for fault in Fault:
                SIM_FAULTS.labels(exchange, fault.value).inc(0)
