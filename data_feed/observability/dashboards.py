"""The operators' dashboards: overview, one exchange, the lake, features and their delivery.

Each panel answers one question an operator asks (its title) and says how to read it (its description).
Metrics are those of ``data_feed.observability.metrics``; a test checks that every name used here is one of them and
a real Prometheus scraping a real run answers every query with data.
"""

from __future__ import annotations

from data_feed.cache.streams import STREAM_KEY_PREFIX
from data_feed.observability.grafana import (
    Dashboard,
    Panel,
    Query,
    Row,
    Variable,
    stat,
    table,
    timeseries,
    up_stat,
)

RATE = "$__rate_interval"
EXCHANGE = Variable("exchange", "Exchange", "label_values(data_feed_frames_received_total, exchange)")
EXCHANGES = Variable("exchange", "Exchange", "label_values(data_feed_frames_received_total, exchange)", multi=True)
SYMBOL = Variable("symbol", "Symbol", 'label_values(data_feed_symbol_cache_age_seconds{exchange="$exchange"}, symbol)',
                  multi=True)
INTERVAL = Variable("interval", "Interval", "label_values(data_feed_feature_slices_total, interval)", multi=True)
FRESHNESS_STEPS = ((120.0, "orange"), (300.0, "red"))  # seconds; with 60 s slices a lake up to ~65 s old is normal


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _rate(metric: str, by: str, selector: str = "", per: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{selector}[{RATE}])){per}"


def overview() -> Dashboard:
    return Dashboard("data-feed-overview", "data-feed: overview",
                     "Is every exchange flowing, is the lake fresh, is anything lost?",
                     (Row("Is every exchange flowing?"), *_flowing(), Row("Is the lake fresh?"), *_fresh(),
                      Row("Is anything lost?"), *_lost()))


def _flowing() -> list[Panel]:
    return [
        up_stat("Roles running", "Each role's process (the spawner restarts a role that dies).",
                q("data_feed_role_up", "{{role}}"), width=12),
        stat("Seconds since the last frame", "Per exchange. Above exchanges.<ID>.watchdog_seconds the collector "
             "reconnects; the ExchangeSilent alert fires.", q("data_feed_exchange_silence_seconds", "{{exchange}}"),
             unit="s", width=12, thresholds=((10.0, "orange"), (30.0, "red"))),
        timeseries("Frames received per second", "Websocket frames from each exchange.",
                   q(_rate("data_feed_frames_received_total", "exchange"), "{{exchange}}"), unit="cps"),
        timeseries("Records cached per second", "Records the collectors wrote to the Redis streams.",
                   q(_rate("data_feed_records_cached_total", "exchange"), "{{exchange}}"), unit="cps"),
        timeseries("Exchange-to-receipt latency, p99", "ts_recv - ts_event of sampled records: the exchange's "
                   "clock, the network and the collector's parse. A rise on one exchange is that exchange.",
                   q(f"histogram_quantile(0.99, sum by (exchange, le) (rate(data_feed_receipt_latency_seconds_bucket"
                     f"[{RATE}])))", "{{exchange}}"), unit="s"),
        timeseries("Role restarts", "Restarts by the spawner in each interval; a collector restart is a restart "
                   "gap.", q(f"sum by (role) (increase(data_feed_role_restarts_total[{RATE}]))", "{{role}}")),
    ]


def _fresh() -> list[Panel]:
    return [
        stat("Lake freshness", "Now minus the end of the newest committed slice, per channel (its freshest "
             "exchange and symbol). Normal: up to lake.slice_seconds + allowed_lateness.",
             q("min by (channel) (data_feed_lake_freshness_seconds)", "{{channel}}"), unit="s", width=24,
             thresholds=FRESHNESS_STEPS),
        timeseries("Lake freshness by exchange", "Per exchange and channel; a single exchange rising while the "
                   "others stay low is that exchange's collector or stream.",
                   q("min by (exchange, channel) (data_feed_lake_freshness_seconds)", "{{exchange}} {{channel}}"),
                   unit="s", thresholds=FRESHNESS_STEPS),
        timeseries("Rows landed per second", "Rows the aggregator committed to the lake.",
                   q(_rate("data_feed_rows_written_total", "channel"), "{{channel}}"), unit="rowsps"),
        timeseries("Oldest unacknowledged entry", "Age of the oldest stream entry the aggregator has not "
                   "acknowledged (read from Redis at scrape time). Grows without bound when the aggregator stops.",
                   q("max by (stream) (data_feed_stream_oldest_pending_age_seconds)", "{{stream}}"), unit="s"),
        timeseries("Stream fill", "Entries per stream over redis.stream_maxlen; at 1 the collectors spill.",
                   q("max by (stream) (data_feed_stream_length) / ignoring(stream) group_left() "
                     "max(data_feed_stream_maxlen_entries)", "{{stream}}"), unit="percentunit",
                   thresholds=((0.8, "red"),)),
    ]


def _lost() -> list[Panel]:
    return [
        timeseries("Gaps per minute", "gaps rows by reason: each one says where the lake may miss data.",
                   q(_rate("data_feed_gaps_total", "reason", per=" * 60"), "{{reason}}"), unit="short"),
        timeseries("Records dropped per second", "The stream and the writer's spill were both full: each drop "
                   "is an overflow gap. Anything above zero is data lost.",
                   q(_rate("data_feed_dropped_records_total", "writer, channel"), "{{writer}} {{channel}}"),
                   unit="cps"),
        timeseries("Spill on disk", "Compressed batches a writer holds because its stream is at its bound or "
                   "Redis is away; over redis.spill_max_mb it drops records.",
                   q("max by (writer) (data_feed_spill_bytes)", "{{writer}}"), unit="bytes"),
        timeseries("Lake write errors per second", "Disk full, read-only, S3 errors; retried, the slice kept.",
                   q(_rate("data_feed_lake_write_errors_total", "channel"), "{{channel}}"), unit="cps"),
        timeseries("Bus batches lost per second", "Batches a featurizer found missing from a publisher's "
                   "sequence (a slow subscriber at the high-water mark); the slices touched are incomplete.",
                   q(_rate("data_feed_bus_dropped_batches_total", "channel"), "{{channel}}"), unit="cps"),
        timeseries("Cache write errors per second", "Failed Redis writes (kept in the spill and retried).",
                   q(_rate("data_feed_cache_write_errors_total", "exchange"), "{{exchange}}"), unit="cps"),
    ]


def exchange() -> Dashboard:
    return Dashboard("data-feed-exchange", "data-feed: exchange", "One exchange and its symbols, from the "
                     "websocket to the lake.",
                     (Row("Collector"), *_collector(), Row("Symbols"), *_symbols(), Row("Gaps"), *_gaps(),
                      Row("Cache"), *_cache()), variables=(EXCHANGE, SYMBOL))


def _collector() -> list[Panel]:
    ex = '{exchange="$exchange"}'
    return [
        up_stat("Collector running", "The collector's process.", q('data_feed_role_up{role="collector $exchange"}')),
        stat("Seconds since the last frame", "The ExchangeSilent alert fires past the exchange's watchdog.",
             q(f"data_feed_exchange_silence_seconds{ex}"), unit="s", width=6,
             thresholds=((10.0, "orange"), (30.0, "red"))),
        stat("Watchdog", "exchanges.<ID>.watchdog_seconds: silence this long makes cryptofeed reconnect.",
             q(f"data_feed_exchange_watchdog_seconds{ex}"), unit="s", width=6),
        stat("Restarts in the range", "Collector restarts by the spawner.",
             q('sum(increase(data_feed_role_restarts_total{role="collector $exchange"}[$__range]))'), width=6,
             thresholds=((1.0, "orange"), (3.0, "red"))),
        timeseries("Frames per second", "Frames received, and frames that could not be parsed.",
                   q(f"sum(rate(data_feed_frames_received_total{ex}[{RATE}]))", "received"),
                   q(f"sum(rate(data_feed_bad_frames_total{ex}[{RATE}]))", "bad"), unit="cps"),
        timeseries("Records cached per second", "Per channel, into the Redis streams.",
                   q(_rate("data_feed_records_cached_total", "channel", ex), "{{channel}}"), unit="cps"),
        timeseries("Exchange-to-receipt latency", "p50 and p99 per channel, of sampled records.",
                   *(q(f"histogram_quantile({p}, sum by (channel, le) (rate(data_feed_receipt_latency_seconds_bucket"
                       f"{ex}[{RATE}])))", f"p{round(p * 100)} {{{{channel}}}}") for p in (0.5, 0.99)), unit="s",
                   width=24),
    ]


def _symbols() -> list[Panel]:
    sel = '{exchange="$exchange", symbol=~"$symbol"}'
    return [
        timeseries("Newest cached record", "Per channel and symbol: now minus the receive time of its newest "
                   "record in Redis. A symbol that stops trading rises alone; a whole exchange rising is the "
                   "collector.", q(f"data_feed_symbol_cache_age_seconds{sel}", "{{channel}} {{symbol}}"), unit="s"),
        timeseries("Lake freshness", "Per channel and symbol: now minus the end of its newest committed slice.",
                   q(f"data_feed_lake_freshness_seconds{sel}", "{{channel}} {{symbol}}"), unit="s",
                   thresholds=FRESHNESS_STEPS),
        timeseries("Rows landed per second", "Per channel and symbol, committed to the lake.",
                   q(_rate("data_feed_symbol_rows_written_total", "channel, symbol", sel), "{{channel}} {{symbol}}"),
                   unit="rowsps", width=24),
    ]


def _gaps() -> list[Panel]:
    ex = '{exchange="$exchange"}'
    return [
        timeseries("Gaps per minute", "gaps rows by channel and reason.",
                   q(_rate("data_feed_gaps_total", "channel, reason", ex, " * 60"), "{{channel}} {{reason}}")),
        timeseries("Time without data per minute", "Seconds of exchange time that gaps rows bound on both ends "
                   "(missing_from_ts to missing_to_ts), per minute, by reason.",
                   q(_rate("data_feed_gap_duration_seconds_sum", "reason", ex, " * 60"), "{{reason}}"), unit="s"),
        table("Gap windows in the range", "Count and longest class of the bounded gap windows, by reason.",
              q(f"sum by (channel, reason) (increase(data_feed_gap_duration_seconds_count{ex}[$__range]))"),
              width=24),
    ]


def _cache() -> list[Panel]:
    streams = f'{{stream=~"{STREAM_KEY_PREFIX}:$exchange:.*"}}'
    return [
        timeseries("Stream length", "Entries in each of the exchange's streams (bound: redis.stream_maxlen).",
                   q(f"max by (stream) (data_feed_stream_length{streams})", "{{stream}}")),
        timeseries("Oldest unacknowledged entry", "Per stream, read from Redis at scrape time.",
                   q(f"max by (stream) (data_feed_stream_oldest_pending_age_seconds{streams})", "{{stream}}"),
                   unit="s"),
        timeseries("Spill on disk", "The collector's spill (bound: redis.spill_max_mb).",
                   q('max(data_feed_spill_bytes{writer="$exchange"})', "spill"),
                   q("max(data_feed_spill_max_bytes)", "bound"), unit="bytes"),
        timeseries("Writes that failed or were dropped", "Per second: Redis writes that failed, entries spilled, "
                   "records dropped.", q('sum(rate(data_feed_cache_write_errors_total{exchange="$exchange"}'
                                         f'[{RATE}]))', "write errors"),
                   q(f'sum(rate(data_feed_spilled_entries_total{{writer="$exchange"}}[{RATE}]))', "spilled entries"),
                   q(f'sum(rate(data_feed_dropped_records_total{{writer="$exchange"}}[{RATE}]))', "dropped records"),
                   unit="cps"),
    ]


def lake() -> Dashboard:
    return Dashboard("data-feed-lake", "data-feed: lake", "What lands in the lake, how it lies (files, "
                     "partitions, small-file debt) and how fresh it is.",
                     (Row("Landing"), *_landing(), Row("Shape"), *_shape()))


def _landing() -> list[Panel]:
    return [
        timeseries("Bytes landed per second", "Parquet bytes committed, per channel.",
                   q(_rate("data_feed_bytes_written_total", "channel"), "{{channel}}"), unit="Bps", stacked=True),
        timeseries("Files landed per minute", "Slice files committed, per channel.",
                   q(_rate("data_feed_slices_written_total", "channel", per=" * 60"), "{{channel}}"), stacked=True),
        timeseries("Mean file size", "Bytes over files landed in each interval: small files cost Athena and S3.",
                   q(f"{_rate('data_feed_bytes_written_total', 'channel')} / clamp_min("
                     f"{_rate('data_feed_slices_written_total', 'channel')}, 1e-9)", "{{channel}}"), unit="bytes"),
        timeseries("Lake freshness", "Now minus the end of the newest committed slice, per channel.",
                   q("min by (channel) (data_feed_lake_freshness_seconds)", "{{channel}}"), unit="s",
                   thresholds=FRESHNESS_STEPS),
        timeseries("Late records per second", "Records that arrived after their slice was written (an "
                   "additional part): exchange clocks, or a lake.allowed_lateness_seconds too short.",
                   q(_rate("data_feed_late_records_total", "channel"), "{{channel}}"), unit="cps"),
        timeseries("Lake write errors per second", "Failed writes (retried; the slice stays in Redis).",
                   q(_rate("data_feed_lake_write_errors_total", "channel, exchange"), "{{channel}} {{exchange}}"),
                   unit="cps"),
    ]


def _shape() -> list[Panel]:
    return [
        timeseries("Files in the catalog", "Per channel (refreshed by the aggregator every 30 s locally, 5 min "
                   "on S3).", q("sum by (channel) (data_feed_lake_files)", "{{channel}}"), stacked=True),
        timeseries("Partitions", "Symbol and date partitions per channel: what Athena and Glue enumerate.",
                   q("sum by (channel) (data_feed_lake_partitions)", "{{channel}}"), stacked=True),
        timeseries("Small-file debt", "Files in the fullest partition, and the mean per partition; "
                   "`data-feed lake compact` merges closed slices into one file.",
                   q("max by (channel) (data_feed_lake_partition_files_max)", "max {{channel}}"),
                   q("sum by (channel) (data_feed_lake_files) / clamp_min(sum by (channel) "
                     "(data_feed_lake_partitions), 1)", "mean {{channel}}")),
        table("Catalog by channel and exchange", "Files, partitions and the fullest partition's files.",
              q("sum by (channel, exchange) (data_feed_lake_files)"),
              q("sum by (channel, exchange) (data_feed_lake_partitions)"),
              q("max by (channel, exchange) (data_feed_lake_partition_files_max)")),
    ]


def features() -> Dashboard:
    return Dashboard("data-feed-features", "data-feed: features and delivery", "Feature slices: how late they "
                     "are computed, what is lost on the way, and their delivery on the bus and into the lake.",
                     (Row("Computing"), *_computing(), Row("Delivery"), *_delivery()),
                     variables=(EXCHANGES, INTERVAL))


def _computing() -> list[Panel]:
    sel = '{exchange=~"$exchange", interval=~"$interval"}'
    return [
        up_stat("Featurizer running", "The featurizer's process.", q('data_feed_role_up{role="featurizer"}'),
                width=12),
        stat("Allowed lateness", "featurizer.allowed_lateness_seconds: a slice closes this long after its end.",
             q("data_feed_featurizer_allowed_lateness_seconds"), unit="s", width=12),
        timeseries("Feature slices published per second", "Per exchange and interval.",
                   q(_rate("data_feed_feature_slices_total", "exchange, interval", sel), "{{exchange}} {{interval}}"),
                   unit="cps"),
        timeseries("Frame-to-feature latency", "From the receipt of the frame that closed a slice to the slice's "
                   "publication (bus and featurizer), p50 and p99.",
                   *(q(f"histogram_quantile({p}, sum by (exchange, le) (rate(data_feed_feature_latency_seconds_bucket"
                       f"{sel}[{RATE}])))", f"p{round(p * 100)} {{{{exchange}}}}") for p in (0.5, 0.99)), unit="s"),
        timeseries("Publication after the slice end", "Wall time from a slice's end to its publication (last "
                   "slice): the allowed lateness plus the pipeline's delay.",
                   q('max by (exchange) (data_feed_feature_publish_delay_seconds{exchange=~"$exchange"})',
                     "{{exchange}}"), unit="s"),
        timeseries("Late records per second", "Records that reached the featurizer after their slice closed: "
                   "counted, in no slice.",
                   q(_rate("data_feed_feature_late_records_total", "exchange, channel", '{exchange=~"$exchange"}'),
                     "{{exchange}} {{channel}}"), unit="cps"),
    ]


def _delivery() -> list[Panel]:
    sel = '{channel="features", exchange=~"$exchange"}'
    return [
        timeseries("Bus batches lost per second", "Market data the featurizer missed on the bus.",
                   q(_rate("data_feed_bus_dropped_batches_total", "channel"), "{{channel}}"), unit="cps"),
        timeseries("Features cached per second", "Feature rows the featurizer wrote to its Redis stream.",
                   q(_rate("data_feed_records_cached_total", "exchange", sel), "{{exchange}}"), unit="cps"),
        timeseries("Features landed per second", "Feature rows committed to the lake's features table.",
                   q(_rate("data_feed_rows_written_total", "exchange", sel), "{{exchange}}"), unit="rowsps"),
        timeseries("Features lake freshness", "Now minus the end of the newest committed features slice.",
                   q(f"min by (exchange) (data_feed_lake_freshness_seconds{sel})", "{{exchange}}"), unit="s"),
        timeseries("Featurizer spill", "Feature batches held on disk for Redis, and feature rows dropped.",
                   q('max(data_feed_spill_bytes{writer="featurizer"})', "spill bytes"), unit="bytes"),
        timeseries("Feature rows dropped per second", "The featurizer's stream and spill were full.",
                   q(f'sum(rate(data_feed_dropped_records_total{{writer="featurizer"}}[{RATE}]))', "dropped"),
                   unit="cps"),
    ]


DASHBOARDS = {"overview": overview, "exchange": exchange, "lake": lake, "features": features}
