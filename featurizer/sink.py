"""The featurizer's way into Redis: feature batches written once, in order, never trimmed, never silently lost.

Data flow: closed slices (``featurizer.role``) -> ``FeatureSink.add`` -> the stream
``df:stream:{exchange}:features`` -> the aggregator -> the lake's ``features`` table.

The same contract as the collectors' writer (``data_feed.collector.writer``): every
batch gets an explicit entry id (``cache.EntryIds``) when it is added, so a write
retried after a lost reply is refused instead of doubled; a stream at
``redis.stream_maxlen``, or Redis not answering, sends batches to a local spill
(``data_feed.cache.spill``) that drains in order; a full spill drops the batch as an
``overflow`` gaps row for channel ``features``. Each write also records, per
(exchange, symbol, interval), the newest slice start now in the cache (the
*emitted* hash), which a restarted featurizer reads so that no feature key ever
lands twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import redis

from data_feed.cache.spill import Spill
from data_feed.cache.streams import (
    EMITTED_KEY,
    ENTRY_COUNT_FIELD,
    ENTRY_PAYLOAD_FIELD,
    EntryIds,
    StreamTakenOver,
    already_written,
    encode_batch,
    last_generated_id,
    parse_entry_id,
    parse_stream_key,
    refused_as_old,
    stream_key,
)
from data_feed.contracts.config import FEATURES_CHANNEL, GAPS_CHANNEL, RedisConfig
from data_feed.contracts.schemas import NS_PER_SECOND, GapReason
from data_feed.observability import metrics

LOG = logging.getLogger("featurizer")

WRITER_LABEL = "featurizer"
RETRY_SECONDS = 1.0
MAX_MEMORY_BATCHES = 1000  # batches kept in memory before they go to the spill
SPILL_FILES_PER_WRITE = 50
START_COLUMN, INTERVAL_COLUMN = 1, 3  # of a features row: (symbol, ts_event s, ts_recv s, interval, ...)


def emitted_field(exchange: str, symbol: str, interval: str) -> str:
    return f"{exchange}|{symbol}|{interval}"


@dataclass(frozen=True)
class FeatureBatch:
    exchange: str
    entry_id: str
    rows: list[tuple[Any, ...]]
    fields: dict[bytes, bytes]

    @property
    def key(self) -> str:
        return stream_key(self.exchange, FEATURES_CHANNEL)


def newest_starts(exchange: str, rows: list[Any]) -> dict[str, int]:
    """Per emitted-hash field, the newest slice start (ns) among ``rows``."""
    out: dict[str, int] = {}
    for row in rows:
        name = emitted_field(exchange, row[0], row[INTERVAL_COLUMN])
        start = round(row[START_COLUMN] * NS_PER_SECOND)
        if start > out.get(name, -1):
            out[name] = start
    return out


class FeatureSink:
    def __init__(self, client: redis.Redis, exchanges: list[str], cfg: RedisConfig, spill: Spill) -> None:
        self.client = client
        self.exchanges = exchanges
        self.cfg = cfg
        self.spill = spill
        self.memory: list[FeatureBatch] = []  # added, not yet written nor spilled, in order
        self.ids: dict[str, EntryIds] = {}
        self.lengths: dict[str, int] = {}
        self.emitted: dict[str, int] = {}  # what the cache (or the spill) holds: never emit a key again
        self._last_error = 0.0

    def prepare(self) -> None:
        """Ids above each stream's last, and what earlier runs already emitted (raises while Redis is down)."""
        keys = [stream_key(ex, FEATURES_CHANNEL) for ex in self.exchanges]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xinfo_stream(key)
        pipe.hgetall(EMITTED_KEY)
        *infos, emitted = pipe.execute(raise_on_error=False)
        if isinstance(emitted, Exception):
            raise emitted
        now_ms = int(time.time() * 1000)
        for key, info in zip(keys, infos, strict=True):
            spilled = self.spill.entries(key)
            ids = [i for i in (last_generated_id(info), spilled[-1].entry_id if spilled else None) if i]
            self.ids[key] = EntryIds.after(max(ids, key=parse_entry_id) if ids else None, now_ms)
            for entry in spilled:
                exchange = key.split(":")[2]
                self._raise(newest_starts(exchange, msgpack.unpackb(entry.fields[ENTRY_PAYLOAD_FIELD], raw=False)))
        self._raise({k.decode(): int(v) for k, v in emitted.items()})

    def _raise(self, starts: dict[str, int]) -> None:
        for name, start in starts.items():
            if start > self.emitted.get(name, -1):
                self.emitted[name] = start

    def already_emitted(self, exchange: str, symbol: str, interval: str, start_ns: int) -> bool:
        return start_ns <= self.emitted.get(emitted_field(exchange, symbol, interval), -1)

    def add(self, exchange: str, rows: list[tuple[Any, ...]]) -> None:
        key = stream_key(exchange, FEATURES_CHANNEL)
        self.memory.append(FeatureBatch(exchange, self.ids[key].next(), rows, encode_batch(FEATURES_CHANNEL, rows)))
        self._raise(newest_starts(exchange, rows))
        if len(self.memory) > MAX_MEMORY_BATCHES:
            self._to_spill(self.memory)
            self.memory = []

    @property
    def pending(self) -> int:
        return len(self.memory) + self.spill.backlog_files()

    def write(self) -> None:
        """Write what fits, spill first, then memory; keep the rest. Never raises for Redis being away."""
        if not self.pending or time.monotonic() - self._last_error < RETRY_SECONDS:
            return
        spilled, direct, watched = self._plan()
        pipe = self.client.pipeline(transaction=True)
        for key, entries in spilled:
            for eid, fields in entries:
                pipe.xadd(key, fields, id=eid)  # type: ignore[arg-type]
        for batch in direct:
            pipe.xadd(batch.key, batch.fields, id=batch.entry_id)  # type: ignore[arg-type]
        for key in watched:
            pipe.xlen(key)
        starts = self._written_starts(spilled, direct)
        if starts:
            pipe.hset(EMITTED_KEY, mapping=starts)  # type: ignore[arg-type]
        try:
            results = pipe.execute(raise_on_error=False)
            self._settle(spilled, direct, watched, results)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
            self._last_error = time.monotonic()
            LOG.error("Redis write of %d feature batches failed (%s); keeping them (spill %s), retrying in %.0fs",
                      len(direct), err, self.spill.root, RETRY_SECONDS)
            if len(self.memory) > MAX_MEMORY_BATCHES // 10:
                self._to_spill(self.memory)
                self.memory = []

    def _plan(self) -> tuple[list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]], list[FeatureBatch], list[str]]:
        drain = self.spill.fitting(lambda key: self.cfg.stream_maxlen - self.lengths.get(key, 0),
                                   SPILL_FILES_PER_WRITE)
        spilled, used, behind = drain.spilled, drain.used, drain.behind
        direct = []
        for batch in self.memory:
            if batch.key in behind or self.cfg.stream_maxlen - self.lengths.get(batch.key, 0) - used.get(
                    batch.key, 0) <= 0:
                behind.add(batch.key)
                continue
            direct.append(batch)
            used[batch.key] = used.get(batch.key, 0) + 1
        watched = sorted({*used, *behind, *(b.key for b in self.memory)})
        return spilled, direct, watched

    def _written_starts(self, spilled: list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]],
                        direct: list[FeatureBatch]) -> dict[str, int]:
        starts: dict[str, int] = {}
        for key, entries in spilled:
            exchange = key.split(":")[2]
            for _, fields in entries:
                for name, start in newest_starts(exchange, msgpack.unpackb(fields[ENTRY_PAYLOAD_FIELD])).items():
                    starts[name] = max(start, starts.get(name, -1))
        for batch in direct:
            for name, start in newest_starts(batch.exchange, batch.rows).items():
                starts[name] = max(start, starts.get(name, -1))
        return starts

    def _settle(self, spilled: list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]], direct: list[FeatureBatch],
                watched: list[str], results: list[Any]) -> None:
        written = [(k, eid) for k, entries in spilled for eid, _ in entries] + [(b.key, b.entry_id) for b in direct]
        refused = [kw for kw, r in zip(written, results, strict=False) if refused_as_old(r)]
        errors = [r for r in results if isinstance(r, Exception) and not refused_as_old(r)]
        if errors:
            raise errors[0]
        for key, eid in refused:
            found, info = self.client.xrange(key, eid, eid), self.client.xinfo_stream(key)
            if not already_written(eid, found, last_generated_id(info)):
                raise StreamTakenOver(f"stream {key}: entry {eid} refused and another writer's entries follow")
        lengths = results[len(written):len(written) + len(watched)]
        self.lengths.update({key: int(n) for key, n in zip(watched, lengths, strict=True)})
        for key, entries in spilled:
            n = len(entries)
            while n > 0:
                n -= len(self.spill.head(key))
                self.spill.pop(key)
        done = {id(b) for b in direct}
        self.memory = [b for b in self.memory if id(b) not in done]
        _count_cached(spilled, direct)
        if any(self.lengths.get(k, 0) >= self.cfg.stream_maxlen for k in watched) and len(self.memory) > 1:
            self._to_spill(self.memory)  # the aggregator is behind: keep memory small, the spill holds the rest
            self.memory = []
        metrics.SPILL_BYTES.labels(WRITER_LABEL).set(self.spill.bytes)

    def _to_spill(self, batches: list[FeatureBatch]) -> None:
        by_key: dict[str, list[FeatureBatch]] = {}
        for batch in batches:
            by_key.setdefault(batch.key, []).append(batch)
        for key, group in by_key.items():
            if self.spill.append(key, [(b.entry_id, b.fields) for b in group]):
                metrics.SPILLED_ENTRIES.labels(WRITER_LABEL).inc(len(group))
            else:
                self._overflow(group)
        metrics.SPILL_BYTES.labels(WRITER_LABEL).set(self.spill.bytes)

    def _overflow(self, batches: list[FeatureBatch]) -> None:
        """The spill is full: the slices are lost to the lake (``featurizer backfill`` can recompute them)."""
        now = time.time()
        for batch in batches:
            metrics.DROPPED_RECORDS.labels(WRITER_LABEL, FEATURES_CHANNEL).inc(len(batch.rows))
            detail = (f"{len(batch.rows)} feature slices dropped ({', '.join(sorted({r[3] for r in batch.rows}))}): "
                      f"stream at its bound and the spill full; recompute with featurizer backfill")
            rows = [(sym, now, now, FEATURES_CHANNEL, GapReason.OVERFLOW.value, None, None, detail, None, None)
                    for sym in sorted({r[0] for r in batch.rows})]
            LOG.error("exchange=%s: %s", batch.exchange, detail)
            try:
                self.client.xadd(stream_key(batch.exchange, GAPS_CHANNEL), encode_batch(GAPS_CHANNEL, rows))  # type: ignore[arg-type]
            except (redis.RedisError, OSError) as err:
                LOG.error("exchange=%s: the overflow gap could not be written either (%s)", batch.exchange, err)


def _count_cached(spilled: list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]], direct: list[FeatureBatch]) -> None:
    """Feature rows (and entries) now in Redis, like a collector's records."""
    for batch in direct:
        metrics.RECORDS_CACHED.labels(batch.exchange, FEATURES_CHANNEL).inc(len(batch.rows))
        metrics.ENTRIES_CACHED.labels(batch.exchange, FEATURES_CHANNEL).inc()
    for key, entries in spilled:
        exchange = parse_stream_key(key)[0]
        metrics.RECORDS_CACHED.labels(exchange, FEATURES_CHANNEL).inc(
            sum(int(fields.get(ENTRY_COUNT_FIELD, b"0")) for _, fields in entries))
        metrics.ENTRIES_CACHED.labels(exchange, FEATURES_CHANNEL).inc(len(entries))
