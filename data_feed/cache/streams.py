"""Redis stream cache: the one place that names keys, groups and bounds, and encodes batches.

Writers (collectors, the featurizer) append batches (many records per entry) with
explicit entry ids ``{base_ms}-{seq}``: ``base_ms`` is fixed for the writer's life
and above the stream's last generated id, ``seq`` counts its batches. A batch
retried after a lost reply carries the id it already has, so Redis refuses the
copy ("equal or smaller than the target stream top item") instead of adding it.
Nobody trims with MAXLEN: the aggregator trims below its oldest unacknowledged
entry, and a writer that finds a stream at ``redis.stream_maxlen`` entries keeps
its batches in a local spill (``data_feed.cache.spill``) until there is room.
The ``gaps`` stream is the exception: several roles write it, with automatic ids,
and the aggregator drops repeated identical gap rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa

from data_feed.contracts.config import FEATURES_CHANNEL
from data_feed.contracts.schemas import SYMBOL_COLUMN, batch_columns, schema_for

STREAM_KEY_PREFIX = "df:stream"
CONSUMER_GROUP = "aggregator"
COLLECTOR_STATE_KEY_PREFIX = "df:collector"  # hash per exchange: frames/records counters
AGGREGATOR_WRITTEN_KEY = "df:aggregator:written"  # hash: {channel}:{rows|files|bytes} totals
ENTRY_PAYLOAD_FIELD = b"b"
ENTRY_COUNT_FIELD = b"n"
TIME_COLUMNS = ("ts_event", "ts_recv")  # float seconds in cached rows
BOOK_SNAPSHOT_REQUEST_KEY = "df:control:book-snapshot"  # epoch seconds of the newest request: collectors answer
# with a full snapshot of every book they keep (a restarted featurizer has no book to apply deltas to)
EMITTED_KEY = "df:featurizer:emitted"  # hash: "{exchange}|{symbol}|{interval}" -> newest slice start (ns) cached
HEALTH_KEY_PREFIX = "df:health"  # string per role instance: JSON {status, reason, pid, at}, expiring
HEALTH_TTL_SECONDS = 15
ID_TOO_SMALL_ERROR = "equal or smaller than the target stream top item"  # Redis's XADD refusal of an old id
STATE_STARTED_FIELD = "started_at"  # collector state hash: when the current incarnation started
STATE_FRAMES_FIELD = "frames_received"  # frames this incarnation received
STATE_FRAMES_OPEN_FIELD = "frames_open"  # frames received on the connections open now
STATE_UPDATED_FIELD = "updated_at"
STATE_RECORDS_PREFIX = "records_"  # records_{channel}: records this incarnation cached
STATE_MARK_PREFIX = "mark:"  # mark:{channel}:{symbol} -> "ts_recv last_id": the last record that reached the cache


def stream_key(exchange: str, channel: str) -> str:
    return f"{STREAM_KEY_PREFIX}:{exchange}:{channel}"


def shard_of(key: str, shards: int) -> int:
    """The aggregator shard that lands stream ``key`` (of ``aggregator.shards``): a stable hash, so every
    process and host agrees without talking."""
    return zlib.crc32(key.encode()) % shards


def consumer_name(shard: int) -> str:
    """The consumer-group member name of aggregator shard ``shard``; a shard restarted anywhere keeps it."""
    return f"{CONSUMER_GROUP}-{shard + 1}"


def configured_streams(cfg: Any) -> list[str]:
    """Every stream a config's roles write and the aggregator reads: each exchange's channels, its ``gaps``
    and, with the featurizer on, its ``features`` (``cfg`` is a ``config.Config``)."""
    keys = [stream_key(ex, ch) for ex, exc in cfg.exchanges.items() for ch in exc.stream_channels()]
    if cfg.featurizer.enabled:
        keys += [stream_key(ex, FEATURES_CHANNEL) for ex in cfg.exchanges]
    return keys


def parse_stream_key(key: str | bytes) -> tuple[str, str]:
    """(exchange, channel) of a stream key."""
    text = key.decode() if isinstance(key, bytes) else key
    prefix, exchange, channel = text.rsplit(":", 2)
    if prefix != STREAM_KEY_PREFIX:
        raise ValueError(f"not a data-feed stream key: {text!r}")
    return exchange, channel


def collector_state_key(exchange: str) -> str:
    return f"{COLLECTOR_STATE_KEY_PREFIX}:{exchange}"


def health_key(role: str) -> str:
    """Where a role instance (``aggregator``, ``collector BINANCE``) reports whether it is ok or degraded."""
    return f"{HEALTH_KEY_PREFIX}:{role.replace(' ', ':')}"


def mark_field(channel: str, symbol: str) -> str:
    return f"{STATE_MARK_PREFIX}{channel}:{symbol}"


def parse_mark_field(field: str) -> tuple[str, str] | None:
    """(channel, symbol) of a ``mark:`` field of the collector state hash; None for other fields."""
    if not field.startswith(STATE_MARK_PREFIX):
        return None
    channel, _, symbol = field[len(STATE_MARK_PREFIX):].partition(":")
    return channel, symbol


def parse_entry_id(eid: str | bytes) -> tuple[int, int]:
    text = eid.decode() if isinstance(eid, bytes) else eid
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class EntryIds:
    """One writer's explicit ids on one stream: ``{base_ms}-{seq}``, strictly increasing."""

    base_ms: int
    seq: int = 0

    @classmethod
    def after(cls, last_generated: str | bytes | None, now_ms: int) -> EntryIds:
        """Ids above ``last_generated`` (the stream's ``last-generated-id``, None for a new stream)."""
        last_ms = parse_entry_id(last_generated)[0] if last_generated else 0
        return cls(max(now_ms, last_ms + 1))

    def next(self) -> str:
        eid = f"{self.base_ms}-{self.seq}"
        self.seq += 1
        return eid


def last_generated_id(info: Any) -> str | None:
    """``last-generated-id`` of an ``XINFO STREAM`` reply; None when the reply is an error (no such key)."""
    if isinstance(info, Exception) or not info:
        return None
    last = info.get("last-generated-id") or info.get(b"last-generated-id")
    return last.decode() if isinstance(last, bytes) else last


def refused_as_old(result: Any) -> bool:
    """An XADD reply saying the id is not above the stream's top: the entry may already be there."""
    return isinstance(result, Exception) and ID_TOO_SMALL_ERROR in str(result)


def already_written(eid: str, found: Any, last_generated: str | None) -> bool:
    """After ``refused_as_old``: the refused entry is the writer's own earlier write (a retry after a lost
    reply) when it is still in the stream, or when the stream's newest id still has its ``base_ms`` (nobody
    else wrote since; the aggregator may have landed and trimmed it)."""
    if found:
        return True
    return last_generated is not None and parse_entry_id(last_generated)[0] == parse_entry_id(eid)[0]


class StreamTakenOver(RuntimeError):
    """Another writer added entries above this writer's ids: two writers for one stream (a stale process?)."""


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


# the value of a collector state hash's mark:{channel}:{symbol} field, written by the collector's writer and read by
# the featurizer (where a restarted exchange's data resumes) and the spawner's scrape (the newest cached record's age)
@dataclass(frozen=True)
class Mark:
    ts_recv: float
    last_id: int | None = None
    ts_event: float = 0.0  # the newest exchange time (the featurizer's restart reads it)

    def pack(self) -> str:
        return f"{self.ts_recv!r} {'' if self.last_id is None else self.last_id} {self.ts_event!r}"

    @classmethod
    def unpack(cls, text: str) -> Mark:
        recv, last, event = [*text.split(" "), "", ""][:3]
        return cls(float(recv), int(last) if last else None, float(event) if event else 0.0)

    def merged(self, other: Mark) -> Mark:
        ids = [i for i in (self.last_id, other.last_id) if i is not None]
        return Mark(max(self.ts_recv, other.ts_recv), max(ids) if ids else None, max(self.ts_event, other.ts_event))


DEAD_LETTER_PREFIX = "df:dead"  # undecodable entries are moved here (kept, not lost) before being acknowledged
DEAD_LETTER_MAXLEN = 10_000


def dead_letter_key(key: str) -> str:
    exchange, channel = parse_stream_key(key)
    return f"{DEAD_LETTER_PREFIX}:{exchange}:{channel}"


AGGREGATOR_JOURNAL_PREFIX = "df:aggregator:journal"  # hash per stream: lake file -> slice, entry ids, committed


def journal_key(key: str) -> str:
    """The aggregator's intent/commit journal for one stream (see data_feed.aggregator.role)."""
    exchange, channel = parse_stream_key(key)
    return f"{AGGREGATOR_JOURNAL_PREFIX}:{exchange}:{channel}"


def ensure_group(client: Any, key: str) -> None:
    """The aggregators' consumer group on stream ``key`` (and the stream), created unless it exists."""
    import redis

    try:
        client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def decode_read_reply(resp: Any) -> list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]]:
    """An XREADGROUP reply as (stream key, [(entry id, fields)]) with text keys and ids."""
    out = []
    for key, entries in resp or []:
        k = key.decode() if isinstance(key, bytes) else key
        out.append((k, [(e.decode() if isinstance(e, bytes) else e, f) for e, f in entries]))
    return out


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
