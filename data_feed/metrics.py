"""Prometheus metrics of every role, defined once.

Roles run as separate OS processes; prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set by the spawner before any child starts)
lets the spawner serve all of them from one ``/metrics`` endpoint.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from data_feed.runtime import MULTIPROC_ENV

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
FEATURE_LATE_RECORDS = Counter(
    "data_feed_feature_late_records_total", "Records that reached the featurizer after their slice had closed",
    ["exchange", "channel"],
)
FEATURE_LATENCY = Gauge("data_feed_feature_publish_delay_seconds",
                        "Wall time from a slice's end to its publication, last slice", ["exchange"],
                        multiprocess_mode="livemax")
ROLE_UP = Gauge("data_feed_role_up", "1 while the role's process is running", ["role"], multiprocess_mode="livemax")


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        prom_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def render_latest() -> bytes:
    """Metrics of every role process (multiprocess mode) or of this process alone."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def export_known(cfg: Any, roles: list[str]) -> None:
    """Every metric at 0 for every label set this config can produce, from the first scrape (a panel or an
    alert over ``rate()`` needs the series before its first event). ``cfg`` is a ``config.Config``."""
    from data_feed.cache import configured_streams, parse_stream_key
    from data_feed.schemas import Channel, GapReason

    for role in roles:
        RESTARTS.labels(role).inc(0)
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
    _export_writers(cfg)


def _export_writers(cfg: Any) -> None:
    from data_feed.schemas import Channel

    for exchange in cfg.exchanges:
        for metric in (FRAMES_RECEIVED, BAD_FRAMES, CACHE_WRITE_ERRORS, SPILLED_ENTRIES):
            metric.labels(exchange).inc(0)
        SPILL_BYTES.labels(exchange).set(0)
        if cfg.featurizer.enabled:
            for interval in cfg.featurizer.intervals:
                FEATURE_SLICES.labels(exchange, interval).inc(0)
            for channel in (Channel.TRADES, Channel.L2_BOOK):
                FEATURE_LATE_RECORDS.labels(exchange, channel).inc(0)
            FEATURE_LATENCY.labels(exchange).set(0)
    SPILLED_ENTRIES.labels("featurizer").inc(0)
    SPILL_BYTES.labels("featurizer").set(0)
    for channel in (Channel.TRADES, Channel.L2_BOOK, Channel.GAPS):
        BUS_DROPPED.labels(channel).inc(0)
    if cfg.simulated():
        from data_feed.sim.faults import Fault

        for exchange in cfg.simulated():
            for fault in Fault:
                SIM_FAULTS.labels(exchange, fault.value).inc(0)
