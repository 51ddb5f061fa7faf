"""Redis stream cache: the one place that names keys, groups and bounds, and encodes batches.

Collectors append batches (many records per entry) with ``XADD ... MAXLEN ~``;
the aggregator reads them through one consumer group and acknowledges an entry
only once every record in it is durable in the lake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa

from data_feed.schemas import SYMBOL_COLUMN, batch_columns, schema_for

STREAM_KEY_PREFIX = "df:stream"
CONSUMER_GROUP = "aggregator"
COLLECTOR_STATE_KEY_PREFIX = "df:collector"  # hash per exchange: frames/records counters
AGGREGATOR_WRITTEN_KEY = "df:aggregator:written"  # hash: {channel}:{rows|files|bytes} totals
ENTRY_PAYLOAD_FIELD = b"b"
ENTRY_COUNT_FIELD = b"n"
TIME_COLUMNS = ("ts_event", "ts_recv")  # float seconds in cached rows
STATE_TTL_SECONDS = 3600


def stream_key(exchange: str, channel: str) -> str:
    return f"{STREAM_KEY_PREFIX}:{exchange}:{channel}"


def parse_stream_key(key: str | bytes) -> tuple[str, str]:
    """(exchange, channel) of a stream key."""
    text = key.decode() if isinstance(key, bytes) else key
    prefix, exchange, channel = text.rsplit(":", 2)
    if prefix != STREAM_KEY_PREFIX:
        raise ValueError(f"not a data-feed stream key: {text!r}")
    return exchange, channel


def collector_state_key(exchange: str) -> str:
    return f"{COLLECTOR_STATE_KEY_PREFIX}:{exchange}"


def encode_batch(channel: str, rows: Sequence[Sequence[Any]]) -> dict[bytes, bytes]:
    """Stream-entry fields for one batch of rows, each following ``batch_columns(channel)``.

    Rows, not columns, and times as float seconds: the collector's hot path only
    packs what it appended; the aggregator transposes and converts whole columns.
    """
    expected = len(batch_columns(channel))
    if rows and len(rows[0]) != expected:
        raise ValueError(f"{channel}: rows have {len(rows[0])} fields, expected {expected}")
    payload = msgpack.packb(rows, use_bin_type=True)
    return {ENTRY_PAYLOAD_FIELD: payload, ENTRY_COUNT_FIELD: str(len(rows)).encode()}


@dataclass(frozen=True)
class BadEntry(Exception):
    """A stream entry that cannot be decoded; carries where it came from."""

    key: str
    entry_id: str
    reason: str

    def __str__(self) -> str:
        return f"stream {self.key} entry {self.entry_id}: {self.reason}"


def seconds_to_ns(seconds: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Float epoch seconds to int64 nanoseconds, rounded to the microsecond a float second holds."""
    return np.rint(seconds * 1e6).astype(np.int64) * 1000


def _column(values: Sequence[Any], field: pa.Field) -> pa.Array:
    if field.name in TIME_COLUMNS:  # cached as float seconds, stored as int64 ns
        return pa.array(seconds_to_ns(np.asarray(values, dtype=np.float64)), pa.int64())
    if field.type == pa.float64() and not field.nullable:  # numpy converts a tuple of floats faster than Arrow
        return pa.array(np.asarray(values, dtype=np.float64))
    return pa.array(values, field.type)


def decode_batch(channel: str, fields: dict[bytes, bytes], key: str = "?", entry_id: str = "?") -> pa.Table:
    """One stream entry as an Arrow table: a ``symbol`` column plus the channel's schema."""
    schema = schema_for(channel)
    try:
        # tuples, not lists: msgpack builds them about 3x faster, and zip only iterates them
        rows = msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD], raw=False, use_list=False)
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * (len(schema) + 1)
        arrays = [pa.array(columns[0], pa.string())]
        arrays += [_column(col, field) for col, field in zip(columns[1:], schema, strict=True)]
    except (KeyError, ValueError, TypeError, pa.ArrowException, msgpack.UnpackException) as err:
        raise BadEntry(key, entry_id, f"{type(err).__name__}: {err}") from err
    names = [SYMBOL_COLUMN, *schema.names]
    return pa.Table.from_arrays(arrays, names=names)


DEAD_LETTER_PREFIX = "df:dead"  # undecodable entries are moved here (kept, not lost) before being acknowledged
DEAD_LETTER_MAXLEN = 10_000


def dead_letter_key(key: str) -> str:
    exchange, channel = parse_stream_key(key)
    return f"{DEAD_LETTER_PREFIX}:{exchange}:{channel}"


AGGREGATOR_JOURNAL_PREFIX = "df:aggregator:journal"  # hash per stream: lake file -> slice, entry ids, committed


def journal_key(key: str) -> str:
    """The aggregator's intent/commit journal for one stream (see data_feed.aggregator)."""
    exchange, channel = parse_stream_key(key)
    return f"{AGGREGATOR_JOURNAL_PREFIX}:{exchange}:{channel}"


def stream_lag(client: Any, key: str) -> int:
    """Entries of ``key`` the aggregator has not acknowledged: pending plus not yet delivered."""
    try:
        groups = client.xinfo_groups(key)
    except Exception:
        return 0
    for group in groups:
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name != CONSUMER_GROUP:
            continue
        lag = group.get("lag")
        if lag is None:  # Redis < 7: count what follows the last delivered id
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            lag = len(client.xrange(key, min=f"({last}", max="+", count=100_000))
        return int(group["pending"]) + int(lag)
    return int(client.xlen(key))
