"""Record contract: one Arrow schema per channel, shared by collector, cache, lake and query.

Every record carries ``ts_event`` (exchange time) and ``ts_recv`` (local receive
time) as int64 nanoseconds UTC. Exchange and symbol are not file columns: they
are Hive partition keys of the lake path, so Athena, DuckDB and pandas all see
them as ordinary columns without storing them millions of times.

The order book is stored long: one row per price-level change. Rows of one
exchange message share ``ts_recv`` (the collector keeps it strictly increasing
per symbol), so replaying rows ordered by ``ts_recv`` rebuilds the book; a run of
rows with ``snapshot = true`` replaces the whole book.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pyarrow as pa

TS = pa.int64()

TRADES = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("id", pa.int64()),  # the exchange's trade id when it is an integer
        pa.field("id_text", pa.string()),  # the exchange's trade id when it is not
        pa.field("side", pa.string(), nullable=False),  # buy | sell (taker side)
        pa.field("price", pa.float64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
    ]
)

L2_BOOK = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("side", pa.string(), nullable=False),  # bid | ask
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),  # 0 removes the level
        pa.field("snapshot", pa.bool_(), nullable=False),
        pa.field("sequence", pa.int64()),  # the exchange's update id, when it sends one
    ]
)

TICKER = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("bid", pa.float64(), nullable=False),
        pa.field("ask", pa.float64(), nullable=False),
    ]
)

FUNDING = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("mark_price", pa.float64()),
        pa.field("rate", pa.float64()),  # funding rate of the current interval
        pa.field("predicted_rate", pa.float64()),
        pa.field("next_funding_time", TS),  # int64 ns UTC
    ]
)

OPEN_INTEREST = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("open_interest", pa.float64(), nullable=False),  # contracts (base units) open
    ]
)

LIQUIDATIONS = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("id_text", pa.string()),  # the exchange's order id, when it sends one
        pa.field("side", pa.string(), nullable=False),  # buy | sell (side of the liquidation order)
        pa.field("price", pa.float64(), nullable=False),
        pa.field("quantity", pa.float64(), nullable=False),
        pa.field("status", pa.string()),  # filled | unfilled, when known
    ]
)

CANDLES = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),
        pa.field("ts_recv", TS, nullable=False),
        pa.field("start", TS, nullable=False),  # int64 ns UTC, candle open time
        pa.field("stop", TS, nullable=False),  # int64 ns UTC, candle close time
        pa.field("interval", pa.string(), nullable=False),  # e.g. 1m
        pa.field("trades", pa.int64()),  # trades in the candle, when the exchange says
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("closed", pa.bool_()),  # the final update of this candle
    ]
)

# Time units: every record time is int64 nanoseconds UTC; caches and exchanges speak seconds, ms and us.
NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
US_PER_SECOND = 1_000_000
MS_PER_SECOND = 1_000


class Channel(StrEnum):
    """Every channel: a Redis stream per exchange, a bus topic prefix and a lake table of its own schema."""

    TRADES = "trades"
    L2_BOOK = "l2_book"
    TICKER = "ticker"
    FUNDING = "funding"
    OPEN_INTEREST = "open_interest"
    LIQUIDATIONS = "liquidations"
    CANDLES = "candles"
    GAPS = "gaps"  # disconnects, sequence gaps, resyncs, bad frames: written by the collectors, landed like data
    FEATURES = "features"  # per-slice statistics: written by the featurizer, landed like data


MARKET_CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel if c not in (Channel.GAPS, Channel.FEATURES))
LAKE_CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)  # every lake table


class GapReason(StrEnum):
    """Why data may be missing: the ``reason`` column of ``gaps`` (README, "Gaps")."""

    DISCONNECT = "disconnect"  # the exchange closed the connection; reconnected
    STALL = "stall"  # the connection was silent past the watchdog; reconnected
    SEQUENCE_GAP = "sequence_gap"  # the exchange's sequence numbers skipped
    RESYNC = "resync"  # a book was reset (and re-snapshotted) because of another symbol's gap
    CHECKSUM = "checksum"  # the exchange's book checksum did not match; resubscribed
    BAD_FRAME = "bad_frame"  # a frame could not be parsed; skipped
    SNAPSHOT_FAILED = "snapshot_failed"  # a REST book snapshot failed; retried
    SLOW_SNAPSHOT = "slow_snapshot"  # a REST book snapshot was slow; deltas buffered meanwhile
    RESTART = "restart"  # the collector process was not running (crash, kill or a stop between runs)
    STOPPED = "stopped"  # the collector stopped cleanly: nothing was collected after this
    OVERFLOW = "overflow"  # the cache and the collector's spill were full: records dropped
    LOST_ENTRIES = "lost_entries"  # stream entries vanished before they landed (trimmed or lost by Redis)


# Gaps are data: a disconnect, sequence gap, resync or dropped frame, one row per affected channel and symbol.
OPEN_NOTICE = "open, not yet ended: "  # detail prefix of a bus-only gaps row of an open gap (gaps.open_notice)

GAPS = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),  # when the gap was detected (local time)
        pa.field("ts_recv", TS, nullable=False),
        pa.field("channel", pa.string(), nullable=False),  # the channel that lost data
        pa.field("reason", pa.string(), nullable=False),  # a GapReason
        pa.field("first_missing", pa.int64()),  # first missing sequence number or trade id, when known
        pa.field("last_missing", pa.int64()),  # last missing sequence number or trade id, when known
        pa.field("detail", pa.string()),
        # exchange time without data, when known: from the last record before the outage to the first after it
        # (null: unknown or, for missing_to_ts, not over yet); slices overlapping it are marked incomplete
        pa.field("missing_from_ts", TS),
        pa.field("missing_to_ts", TS),
    ]
)

# Per-slice statistics from the featurizer, one row per (symbol, interval, slice); ts_event is the slice start.
# Besides the statistics it keeps their mergeable state (counts, sums, time integrals), so slices can be
# re-aggregated exactly: vwap = notional / volume, twap_mid = mid_integral / book_time_ns, and so on.
FEATURES = pa.schema(
    [
        pa.field("ts_event", TS, nullable=False),  # slice start, exchange time
        pa.field("ts_recv", TS, nullable=False),  # when the featurizer closed the slice
        pa.field("interval", pa.string(), nullable=False),  # 1s, 1m, ...
        pa.field("trade_count", pa.int64(), nullable=False),
        *(pa.field(name, pa.float64()) for name in ("open", "high", "low", "close")),  # NaN without trades
        *(pa.field(name, pa.float64(), nullable=False)
          for name in ("volume", "buy_volume", "sell_volume", "notional")),
        pa.field("vwap", pa.float64()),
        pa.field("realized_variance", pa.float64(), nullable=False),  # sum of squared log returns, trade to trade
        pa.field("first_trade_ts", TS),  # int64 ns UTC, earliest trade event time; null without trades
        pa.field("last_trade_ts", TS),
        pa.field("book_updates", pa.int64(), nullable=False),  # book messages
        pa.field("twap_mid", pa.float64()),  # time-weighted mid
        pa.field("mean_spread_bps", pa.float64()),  # mean over book messages
        pa.field("max_spread_bps", pa.float64()),
        pa.field("microprice", pa.float64()),  # at the slice end
        pa.field("mean_imbalance", pa.float64()),  # (bid - ask) / (bid + ask) size of the top N levels
        pa.field("depth_bid", pa.float64()),  # size within X bps of mid, at the slice end
        pa.field("depth_ask", pa.float64()),
        pa.field("book_time_ns", pa.int64(), nullable=False),  # time with a two-sided book in the slice
        pa.field("mid_integral", pa.float64(), nullable=False),  # sum of mid x ns
        pa.field("spread_samples", pa.int64(), nullable=False),
        pa.field("spread_sum_bps", pa.float64(), nullable=False),
        pa.field("imbalance_sum", pa.float64(), nullable=False),
        # False when the featurizer did not see the slice whole: it (re)started inside it, lost bus batches in
        # it, had no book yet, or closed it at a stop before its end. `featurizer backfill --incomplete` redoes them.
        pa.field("complete", pa.bool_(), nullable=False),
    ]
)

CHANNEL_SCHEMAS: dict[str, pa.Schema] = {
    Channel.TRADES: TRADES,
    Channel.L2_BOOK: L2_BOOK,
    Channel.TICKER: TICKER,
    Channel.FUNDING: FUNDING,
    Channel.OPEN_INTEREST: OPEN_INTEREST,
    Channel.LIQUIDATIONS: LIQUIDATIONS,
    Channel.CANDLES: CANDLES,
    Channel.GAPS: GAPS,
    Channel.FEATURES: FEATURES,
}

# int64 nanosecond UTC instants: shown as timestamps in table output (CSV and JSON keep the exact integers).
# Durations such as features.book_time_ns are not instants.
INSTANT_COLUMNS = frozenset({"ts_event", "ts_recv", "next_funding_time", "start", "stop", "first_trade_ts",
                             "last_trade_ts", "missing_from_ts", "missing_to_ts"})

# Columns every cached batch carries besides the schema's own: which symbol a row is for.
SYMBOL_COLUMN = "symbol"

# Hive partition keys, in path order; added by the lake, never stored in files.
PARTITION_KEYS = ("exchange", "symbol", "date")


def parquet_write_options(channel: str, compression_level: int) -> dict[str, Any]:
    """How every lake file of ``channel`` is encoded (slices and compacted files, local and S3 alike).

    int64 columns of the market channels (instants, trade ids, update ids) are near-monotonic within a
    slice: DELTA_BINARY_PACKED stores them in a few bits a row where dictionary/plain spend 5 bytes even
    after zstd; every other column keeps dictionary encoding, which prices (few distinct ticks) and sides
    need. Both encodings are read by pyarrow, DuckDB and Athena (Trino). ``bench/lake_size.py`` measures it.
    """
    schema = schema_for(channel)
    delta = [] if channel in (Channel.FEATURES, Channel.GAPS) else [f.name for f in schema if f.type == pa.int64()]
    return {"compression": "zstd", "compression_level": compression_level,
            "use_dictionary": [f.name for f in schema if f.name not in delta],
            "column_encoding": dict.fromkeys(delta, "DELTA_BINARY_PACKED")}


def schema_for(channel: str) -> pa.Schema:
    try:
        return CHANNEL_SCHEMAS[channel]
    except KeyError:
        raise KeyError(f"unknown channel {channel!r}; known: {', '.join(CHANNEL_SCHEMAS)}") from None


def batch_columns(channel: str) -> tuple[str, ...]:
    """Column order of a cached batch for ``channel``: symbol first, then the schema's."""
    return (SYMBOL_COLUMN, *schema_for(channel).names)
