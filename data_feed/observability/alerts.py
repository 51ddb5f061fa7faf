"""Prometheus alert rules for data-feed: what pages an operator, how urgently, and where the runbook is.

Rules compare with the deployment's own bounds, which the spawner exports as gauges (watchdog, slice,
lateness, stream and spill bounds: ``data_feed.observability.metrics``), so one rules file serves every config. Each
rule has a ``for``, a ``severity`` (``critical``: data is being lost or will be; ``warning``: look
today), a summary, a description and a ``runbook_url`` to its section of ``docs/runbooks.md``.

``rules(FAST)`` is the same set with every ``for`` at 5 s and a 10 s freshness margin, for tests
against a real Prometheus that must not wait minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_feed.contracts.schemas import Channel

RUNBOOK_BASE = "docs/runbooks.md"  # relative to the repository; a deployment may render an absolute base
FRESHNESS_MARGIN_SECONDS = 60  # lake freshness alert: beyond slice + allowed lateness + this
COLLECTOR = 'role=~"collector .+"'
NOT_COLLECTOR = 'role!~"collector .+"'
BY = "job, instance"  # every rule keeps the target's labels: one Prometheus may scrape several pipelines
SPARSE_CHANNELS = Channel.LIQUIDATIONS.value  # event-driven channels whose lake can be quiet for hours in a calm market


@dataclass(frozen=True)
class Timing:
    for_override: str | None = None  # every rule's ``for`` when set
    freshness_margin_seconds: int = FRESHNESS_MARGIN_SECONDS


PRODUCTION = Timing()
FAST = Timing(for_override="5s", freshness_margin_seconds=10)


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def render(self, timing: Timing, runbook_base: str) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": timing.for_override or self.for_,
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook_url": f"{runbook_base}#{self.name.lower()}"}}


def _collection() -> list[Alert]:
    return [
        Alert("DataFeedDown", 'up{job=~".*data-feed.*"} == 0', "1m", "critical",
              "data-feed's /metrics on {{ $labels.instance }} does not answer",
              "Prometheus cannot scrape the spawner: the pipeline is down or unreachable, and no other data-feed "
              "alert can fire while it is."),
        Alert("DataFeedCollectorDown",
              f"max by ({BY}, role) (1 - data_feed_role_up{{{COLLECTOR}}}) > 0\nor\n"
              f"max by ({BY}, role) (increase(data_feed_role_restarts_total{{{COLLECTOR}}}[5m])) > 0",
              "1m", "critical", "{{ $labels.role }} died or is not running",
              "The {{ $labels.role }} process is not running or was restarted in the last 5 minutes: its exchange "
              "was not collected meanwhile (restart gaps in the lake say for how long)."),
        Alert("DataFeedRoleDown",
              f"max by ({BY}, role) (1 - data_feed_role_up{{{NOT_COLLECTOR}}}) > 0\nor\n"
              f"max by ({BY}, role) (increase(data_feed_role_restarts_total{{{NOT_COLLECTOR}}}[5m])) > 0",
              "1m", "warning", "{{ $labels.role }} died or is not running",
              "The {{ $labels.role }} process is not running or was restarted in the last 5 minutes. The aggregator "
              "and featurizer recover from Redis; while down, the streams and spills fill."),
        Alert("DataFeedRoleFlapping",
              f"max by ({BY}, role) (increase(data_feed_role_restarts_total[15m])) > 3", "1m", "critical",
              "{{ $labels.role }} restarted {{ $value | printf \"%.0f\" }} times in 15 minutes",
              "The spawner keeps restarting {{ $labels.role }} (backoff up to spawner.restart_backoff_max_seconds): "
              "it fails again soon after each start."),
        Alert("DataFeedProcessRestarted",
              'changes(process_start_time_seconds{job=~".*data-feed.*"}[15m]) > 0', "1m", "warning",
              "{{ $labels.instance }} restarted {{ $value | printf \"%.0f\" }} times in 15 minutes",
              "A data-feed process serving its own /metrics (a role run alone: a Kubernetes pod or a compose "
              "service, or the spawner itself) started again: its supervisor restarted it after a crash, an OOM "
              "kill or a failed liveness probe. Roles under the spawner are the role alerts' "
              "(data_feed_role_restarts_total)."),
        Alert("DataFeedExchangeSilent",
              "data_feed_exchange_silence_seconds > data_feed_exchange_watchdog_seconds", "1m", "critical",
              "{{ $labels.exchange }} sent no frame for {{ $value | humanizeDuration }}",
              "No websocket frame from {{ $labels.exchange }} for longer than its watchdog "
              "(exchanges.<ID>.watchdog_seconds): the collector reconnects, and nothing is collected meanwhile."),
        Alert("DataFeedGapRateHigh",
              f'sum by ({BY}, exchange, channel) (rate(data_feed_gaps_total{{reason!~"stopped|restart"}}[10m])) '
              "* 60 > 1", "10m", "warning",
              "{{ $labels.exchange }} {{ $labels.channel }}: {{ $value | printf \"%.1f\" }} gaps a minute",
              "More than one gaps row a minute for 10 minutes (disconnects, stalls, sequence gaps, resyncs, bad "
              "frames): the lake holds the data with holes; the reason column says which."),
    ]


def _cache() -> list[Alert]:
    return [
        Alert("DataFeedRecordsDropped",
              f"sum by ({BY}, writer, channel) (increase(data_feed_dropped_records_total[5m])) > 0", "1m",
              "critical", "{{ $labels.writer }} dropped {{ $labels.channel }} records",
              "A stream was at redis.stream_maxlen and the writer's spill at redis.spill_max_mb: records were "
              "dropped (overflow gaps rows say which). Data is being lost."),
        Alert("DataFeedStreamNearBound",
              f"max by ({BY}, stream) (data_feed_stream_length) / ignoring(stream) group_left() "
              f"max by ({BY}) (data_feed_stream_maxlen_entries) > 0.8", "5m", "warning",
              "{{ $labels.stream }} is at {{ $value | humanizePercentage }} of its bound",
              "The stream holds over 80% of redis.stream_maxlen entries: the aggregator is behind. At the bound "
              "the writers spill to disk."),
        Alert("DataFeedSpillNearBound",
              f"max by ({BY}, writer) (data_feed_spill_bytes) / ignoring(writer) group_left() "
              f"max by ({BY}) (data_feed_spill_max_bytes) > 0.8", "2m", "critical",
              "{{ $labels.writer }}'s spill is at {{ $value | humanizePercentage }} of its bound",
              "The writer holds over 80% of redis.spill_max_mb on disk for Redis: at the bound it drops records."),
    ]


def _lake(timing: Timing) -> list[Alert]:
    return [
        Alert("DataFeedLakeStale",
              f'min by ({BY}, exchange, channel) (data_feed_lake_freshness_seconds{{channel!~"{SPARSE_CHANNELS}"}})'
              f"\n  > ignoring(exchange, channel) group_left()\n"
              f"(max by ({BY}) (data_feed_lake_slice_seconds) + max by ({BY}) "
              f"(data_feed_lake_allowed_lateness_seconds) + {timing.freshness_margin_seconds})", "2m", "critical",
              "{{ $labels.exchange }} {{ $labels.channel }}: the lake is {{ $value | humanizeDuration }} old",
              "The newest slice committed for {{ $labels.exchange }} {{ $labels.channel }} ended longer ago than "
              f"lake.slice_seconds + lake.allowed_lateness_seconds + {timing.freshness_margin_seconds} s: nothing "
              "lands (the aggregator is stopped, stuck or failing, or the collector delivers nothing)."),
        Alert("DataFeedLakeWriteErrors",
              f"sum by ({BY}, channel, exchange) (increase(data_feed_lake_write_errors_total[2m])) > 0", "5m",
              "critical", "lake writes of {{ $labels.exchange }} {{ $labels.channel }} keep failing",
              "Lake writes failed in every 2-minute window for 5 minutes (disk full, read-only, S3 errors). The "
              "aggregator keeps the slices and retries; the streams fill meanwhile."),
    ]


def _features() -> list[Alert]:
    return [
        Alert("DataFeedFeaturesLate",
              f"histogram_quantile(0.99, sum by ({BY}, exchange, le) "
              "(rate(data_feed_feature_latency_seconds_bucket[5m]))) > 1", "10m", "warning",
              "{{ $labels.exchange }} features are published {{ $value | humanizeDuration }} after their frame "
              "(p99)", "The p99 frame-to-feature latency (the frame closing a slice to its publication) is over "
              "1 s: the featurizer cannot keep up with its input."),
        Alert("DataFeedFeaturesStalled",
              f"sum by ({BY}, exchange) (rate(data_feed_feature_slices_total[5m])) == 0\n"
              f"and on ({BY}, exchange)\n"
              f'sum by ({BY}, exchange) (rate(data_feed_records_cached_total{{channel=~"trades|l2_book"}}[5m])) > 0',
              "5m", "critical", "no {{ $labels.exchange }} features while its market data flows",
              "The featurizer published no feature slice of {{ $labels.exchange }} for 5 minutes while its trades "
              "and books reached the cache: it is stuck, or receives nothing from the bus."),
        Alert("DataFeedFeatureLateRecords",
              f"sum by ({BY}, exchange, channel) (rate(data_feed_feature_late_records_total[10m])) > 0", "10m",
              "warning", "{{ $labels.exchange }} {{ $labels.channel }} records reach the featurizer after their "
              "slice closed", "Records keep arriving after featurizer.allowed_lateness_seconds: they are counted "
              "and left out of every slice, so the features miss them."),
    ]


def rules(timing: Timing = PRODUCTION, runbook_base: str = RUNBOOK_BASE) -> dict[str, Any]:
    """The rules file: one group per stage of the data flow."""
    groups = {"data-feed-collection": _collection(), "data-feed-cache": _cache(), "data-feed-lake": _lake(timing),
              "data-feed-features": _features()}
    return {"groups": [{"name": name, "rules": [a.render(timing, runbook_base) for a in alerts]}
                       for name, alerts in groups.items()]}


def alert_names() -> list[str]:
    return [rule["alert"] for group in rules()["groups"] for rule in group["rules"]]
