"""Live rows: the records still in the cache (Redis streams) that the lake does not hold yet, for
``data-feed query --live``.

A record reaches the lake when its slice closes (``lake.slice_seconds`` plus
``lake.allowed_lateness_seconds`` of exchange time after the slice starts); until then it is in
its stream, unacknowledged. Which cached rows are already landed is told by the aggregator's
own bookkeeping, never guessed:

1. one MULTI/EXEC reads every configured stream, its consumer group (pending entries, last
   delivered id) and its journal: an entry the group acknowledged is landed; of an entry still
   pending, the rows of a slice the journal names it in are landed when that journal record is
   committed, or its file is in the query's catalog snapshot (taken next, step 2);
2. the query's catalog snapshot is taken after that read, so a file landed in between is seen,
   and the journal is read once more to catch a write that began in between;
3. each remaining entry is cut into slices with the aggregator's own slicer
   (``data_feed.aggregator.slicer``), so rows fall in exactly the slices the aggregator will write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis

from data_feed.aggregator.slicer import split_entry
from data_feed.cache.streams import CONSUMER_GROUP, decode_batch, journal_key, parse_entry_id, parse_stream_key
from data_feed.contracts.config import Config
from data_feed.contracts.rundir import RunDir, Runtime
from data_feed.contracts.schemas import NS_PER_SECOND, SYMBOL_COLUMN
from data_feed.lake.layout import SliceKey

LOG = logging.getLogger("data_feed.live")

XRANGE_PAGE = 1000


class NoCache(RuntimeError):
    """No running pipeline's Redis to read live records from; the message says where it looked."""


def redis_url(cfg: Config) -> str:
    """``redis.url``, or the private redis-server of the pipeline running in ``spawner.run_dir``."""
    if cfg.redis.url:
        return cfg.redis.url
    runtime = RunDir(Path(cfg.spawner.run_dir)).runtime_file
    try:
        return Runtime.load(runtime).redis_url
    except (OSError, ValueError, TypeError) as err:
        raise NoCache(f"--live reads the running pipeline's cache, but there is none: no {runtime} ({err}); "
                      "start `data-feed run` (or set redis.url)") from None


@dataclass
class StreamState:
    """One stream as read in one transaction."""

    key: str
    entries: list[tuple[str, dict[bytes, bytes]]]
    pending: set[str]
    last_delivered: tuple[int, int]
    journal: dict[str, bytes] = field(default_factory=dict)  # lake path -> packed JournalRecord


def read_streams(client: redis.Redis, keys: list[str]) -> list[StreamState]:
    """Every entry of each stream, its group's pending ids and last delivered id, and its journal, as of
    one instant (a MULTI/EXEC)."""
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.xrange(key)
        pipe.xpending_range(key, CONSUMER_GROUP, "-", "+", 10**9)
        pipe.xinfo_groups(key)
        pipe.hgetall(journal_key(key))
    try:
        replies = pipe.execute(raise_on_error=False)
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise NoCache(f"--live: the cache does not answer ({err})") from None
    out = []
    for i, key in enumerate(keys):
        entries, pending, groups, journal = replies[4 * i: 4 * i + 4]
        if isinstance(entries, Exception):  # a stream nobody wrote yet
            continue
        ids = set() if isinstance(pending, Exception) else {_text(p["message_id"]) for p in pending}
        records = {} if isinstance(journal, Exception) else {_text(k): v for k, v in journal.items()}
        out.append(StreamState(key, [(_text(e), f) for e, f in entries], ids, _last_delivered(groups), records))
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _last_delivered(groups: Any) -> tuple[int, int]:
    if isinstance(groups, Exception):
        return (-1, -1)
    for group in groups:
        if _text(group["name"]) == CONSUMER_GROUP:
            return parse_entry_id(_text(group["last-delivered-id"]))
    return (-1, -1)


def landed_pairs(journal: dict[str, bytes], registered: set[str]) -> set[tuple[SliceKey, str]]:
    """(slice, entry) pairs the journal says are in the lake: committed, or written to a registered file."""
    from data_feed.aggregator.ledger import JournalRecord

    out: set[tuple[SliceKey, str]] = set()
    for path, raw in journal.items():
        record = JournalRecord.unpack(raw)
        if record.committed or path in registered:
            out.update((record.key, eid) for eid in record.entries)
    return out


def live_rows(states: list[StreamState], registered: set[str], again: Callable[[str], dict[str, bytes]],
              width_ns: int) -> dict[str, list[pa.Table]]:
    """Per channel, the cached rows the lake does not hold, with ``exchange``, ``symbol`` and ``date``."""
    out: dict[str, list[pa.Table]] = {}
    for state in states:
        exchange, channel = parse_stream_key(state.key)
        landed = landed_pairs(state.journal, registered) | landed_pairs(again(state.key), registered)
        for eid, fields in state.entries:
            if eid not in state.pending and parse_entry_id(eid) <= state.last_delivered:
                continue  # acknowledged: every row of it is in the lake
            table = decode_batch(channel, fields, state.key, eid)
            for sk, part in split_entry(channel, exchange, table, width_ns):
                if (sk, eid) not in landed:
                    out.setdefault(channel, []).append(_with_partition(part, exchange, sk.symbol))
    return out


def _with_partition(part: pa.Table, exchange: str, symbol: str) -> pa.Table:
    n = part.num_rows
    days = pc.cast(pc.divide(part.column("ts_event"), NS_PER_SECOND * 86_400), pa.int32())
    return part.append_column("exchange", pa.array([exchange] * n, pa.string())) \
        .append_column(SYMBOL_COLUMN, pa.array([symbol] * n, pa.string())) \
        .append_column("date", pc.cast(days, pa.date32()))


def cached_tables(cfg: Config, snapshot_paths: Callable[[], set[str]]) -> dict[str, pa.Table]:
    """The live rows per channel; ``snapshot_paths`` takes the query's catalog snapshot (after the cache read)
    and returns the paths it lists."""
    from data_feed.cache.streams import configured_streams

    client = redis.Redis.from_url(redis_url(cfg), socket_connect_timeout=2)
    states = read_streams(client, configured_streams(cfg))
    registered = snapshot_paths()

    def again(key: str) -> dict[str, bytes]:
        journal: dict[bytes, bytes] = client.hgetall(journal_key(key))  # type: ignore[assignment]
        return {_text(k): v for k, v in journal.items()}

    rows = live_rows(states, registered, again, cfg.lake.slice_seconds * NS_PER_SECOND)
    return {channel: pa.concat_tables(parts) for channel, parts in rows.items()}
