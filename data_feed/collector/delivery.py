"""The collector's delivery: one flush's batches into Redis streams, or the spill when they cannot go.

The writer (``collector.writer``) buffers records and gap rows and hands each flush's batches here:

1. each batch gets its explicit entry id (``cache.EntryIds``) once, so a write retried after a lost reply
   is refused by Redis instead of added twice (``_confirm_own`` checks the refused ids are this writer's);
2. a stream at ``redis.stream_maxlen`` entries, or a Redis that does not answer, sends the stream's batches
   to the spill (``data_feed.cache.spill``), written back in order once there is room; only a full spill drops
   records, and each drop comes back as an ``overflow`` gaps row;
3. one MULTI/EXEC holds the spilled entries, the batches, the gap rows and the collector state hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from data_feed.cache.spill import Spill
from data_feed.cache.streams import (
    STATE_FRAMES_FIELD,
    STATE_FRAMES_OPEN_FIELD,
    STATE_RECORDS_PREFIX,
    STATE_UPDATED_FIELD,
    EntryIds,
    Mark,
    StreamTakenOver,
    already_written,
    collector_state_key,
    encode_batch,
    last_generated_id,
    mark_field,
    parse_entry_id,
    refused_as_old,
    stream_key,
)
from data_feed.collector.gaps import GapRow, summarize
from data_feed.contracts.config import GAPS_CHANNEL, RedisConfig
from data_feed.contracts.schemas import NS_PER_US, US_PER_SECOND, GapReason
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.collector")

RETRY_DELAY_MAX_SECONDS = 5.0
SPILL_FILES_PER_FLUSH = 50  # spilled files written back per stream and flush, at most


def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    if len(rows) <= size:
        yield rows  # the usual flush: one batch, no copy
        return
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@dataclass(frozen=True)
class Batch:
    """One stream entry of new records, with the id it keeps until it is in Redis."""

    key: str
    entry_id: str
    channel: str
    rows: list[tuple[Any, ...]]
    fields: dict[bytes, bytes]


@dataclass
class Plan:
    """What one flush writes: spilled entries first (per stream, in order), then new batches with room."""

    spilled: list[tuple[str, list[tuple[str, dict[bytes, bytes]]]]]
    direct: list[Batch]
    to_spill: list[Batch]
    watched: list[str]  # streams whose length the write reads back (room for the next flush)


@dataclass(frozen=True)
class Delivered:
    """What a flush leaves to the writer."""

    overflow: list[GapRow]  # ``overflow`` gaps rows of records the full spill refused: buffered as gaps
    returned_gaps: list[GapRow]  # gap rows Redis did not take: back at the head of the gaps buffer
    published: list[Batch]  # accepted batches (in Redis or the spill): on the bus too
    published_gaps: list[GapRow]  # gap rows written: on the bus too


class Delivery:
    """One per StreamWriter: entry ids, stream lengths and the spill of its exchange's streams."""

    def __init__(self, client: aioredis.Redis, exchange: str, cfg: RedisConfig, spill: Spill,
                 records_cached: dict[str, int]) -> None:
        self.client = client
        self.exchange = exchange
        self.cfg = cfg
        self.spill = spill
        self.records_cached = records_cached  # the writer's: records this incarnation cached, per channel
        self.ids: dict[str, EntryIds] = {}
        self.lengths: dict[str, int] = {}  # entries per stream at the last write
        self.frames_reported = (0, 0)
        self.retry_delay = 0.0  # after a failed write, how long the flusher waits (doubling, bounded)
        self._bounded: set[str] = set()  # streams at their bound (logged once per episode)
        self._children: dict[tuple[Any, ...], Any] = {}  # labelled metrics, looked up once (see ``child``)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per writer: prometheus_client takes a lock and builds the
        key on every ``labels`` call, and a flush would do that for every stream and channel it touches."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def encode(self, taken: dict[str, list[tuple[Any, ...]]]) -> list[Batch]:
        out = []
        for channel, rows in taken.items():
            key = stream_key(self.exchange, channel)
            for chunk in _chunks(rows, self.cfg.batch_max_records):
                out.append(Batch(key, self.ids[key].next(), channel, chunk, encode_batch(channel, chunk)))
        return out

    def room(self, key: str) -> int:
        return self.cfg.stream_maxlen - self.lengths.get(key, 0)

    def plan(self, batches: list[Batch]) -> Plan:
        drain = self.spill.fitting(self.room, SPILL_FILES_PER_FLUSH)
        spilled, used, behind = drain.spilled, drain.used, drain.behind
        direct: list[Batch] = []
        to_spill: list[Batch] = []
        for batch in batches:
            if batch.key in behind or self.room(batch.key) - used.get(batch.key, 0) <= 0:
                behind.add(batch.key)  # its later batches follow it into the spill
                to_spill.append(batch)
                self._note_bound(batch.key)
            else:
                direct.append(batch)
                used[batch.key] = used.get(batch.key, 0) + 1
        watched = dict.fromkeys(k for k, _ in spilled)
        watched.update(dict.fromkeys(b.key for b in batches))
        watched.update(dict.fromkeys(self.spill.backlogged()))
        return Plan(spilled, direct, to_spill, list(watched))

    def _note_bound(self, key: str) -> None:
        if key in self._bounded or self.room(key) > 0:
            return
        self._bounded.add(key)
        metrics.STREAM_BOUND_HITS.labels(key).inc()
        LOG.warning("exchange=%s: stream %s is at its bound of %d entries (the aggregator is behind); spilling to "
                    "%s until there is room", self.exchange, key, self.cfg.stream_maxlen, self.spill.root)

    async def deliver(self, batches: list[Batch], gaps: list[GapRow], frames: tuple[int, int],
                      marks: Mapping[tuple[str, str], Mark]) -> Delivered:
        """One MULTI/EXEC of spilled entries, new batches with room, gap rows and the collector state (frames,
        records cached, ``marks``); what has no room, or everything when Redis fails, goes to the spill."""
        plan = self.plan(batches)
        overflow: list[GapRow] = []
        try:
            results = await self._write(plan, gaps, frames, marks)
            await self._settle(plan, results)
        except (aioredis.RedisError, OSError) as err:
            if isinstance(err, aioredis.ResponseError):
                raise
            accepted = self._spill([*plan.direct, *plan.to_spill], overflow)
            self.write_failed(f"write of {sum(len(b.rows) for b in plan.direct)} records", err)
            return Delivered(overflow, gaps, accepted, [])
        self.retry_delay = 0.0
        accepted = self._spill(plan.to_spill, overflow)
        self._account(plan, frames)
        return Delivered(overflow, [], [*plan.direct, *accepted], gaps)

    def write_failed(self, what: str, err: BaseException) -> None:
        self.retry_delay = min(max(self.retry_delay * 2, 0.1), RETRY_DELAY_MAX_SECONDS)
        metrics.CACHE_WRITE_ERRORS.labels(self.exchange).inc()
        LOG.error("exchange=%s: Redis %s failed (%s); kept (spill %s), retry in %.1fs", self.exchange, what, err,
                  self.spill.root, self.retry_delay)

    async def _write(self, plan: Plan, gaps: list[GapRow], frames: tuple[int, int],
                     marks: Mapping[tuple[str, str], Mark]) -> list[Any]:
        pipe = self.client.pipeline(transaction=True)
        for key, entries in plan.spilled:
            for eid, fields in entries:
                pipe.xadd(key, fields, id=eid)  # type: ignore[arg-type]
        for batch in plan.direct:
            pipe.xadd(batch.key, batch.fields, id=batch.entry_id)  # type: ignore[arg-type]
        for chunk in _chunks(gaps, self.cfg.batch_max_records):  # several roles write gaps: automatic ids
            pipe.xadd(stream_key(self.exchange, GAPS_CHANNEL), encode_batch(GAPS_CHANNEL, chunk))  # type: ignore[arg-type]
        for key in plan.watched:
            pipe.xlen(key)
        pipe.hset(collector_state_key(self.exchange), mapping=self._state(plan, frames, marks))  # type: ignore[arg-type]
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _state(self, plan: Plan, frames: tuple[int, int], marks: Mapping[tuple[str, str], Mark]) -> dict[str, Any]:
        state: dict[str, Any] = {STATE_FRAMES_FIELD: frames[0], STATE_FRAMES_OPEN_FIELD: frames[1],
                                 STATE_UPDATED_FIELD: repr(time.time())}
        written: dict[str, int] = {}
        for batch in plan.direct:
            written[batch.channel] = written.get(batch.channel, 0) + len(batch.rows)
        for channel, n in written.items():
            state[STATE_RECORDS_PREFIX + channel] = self.records_cached[channel] + n
        state.update({mark_field(ch, sym): mark.pack() for (ch, sym), mark in marks.items()})
        return state

    async def _settle(self, plan: Plan, results: list[Any]) -> None:
        """Check every reply of the transaction; entries refused as old must be this writer's own."""
        n_xadd = sum(len(e) for _, e in plan.spilled) + len(plan.direct)
        written = [(k, eid) for k, entries in plan.spilled for eid, _ in entries]
        written += [(b.key, b.entry_id) for b in plan.direct]
        refused = []
        for (key, eid), result in zip(written, results[:n_xadd], strict=True):
            if refused_as_old(result):
                refused.append((key, eid))
            elif isinstance(result, Exception):
                raise result
        for result in results[n_xadd:]:
            if isinstance(result, Exception):
                raise result
        if refused:
            await self._confirm_own(refused)
        lengths = results[len(results) - 1 - len(plan.watched):-1]
        for key, length in zip(plan.watched, lengths, strict=True):
            self.lengths[key] = int(length)
            self.child(metrics.STREAM_LENGTH, key).set(int(length))
            if self.room(key) > 0 and key in self._bounded and not self.spill.has(key):
                self._bounded.discard(key)
                LOG.info("exchange=%s: stream %s has room again; spill drained", self.exchange, key)
        for key, entries in plan.spilled:
            self._pop_spilled(key, len(entries))

    def _pop_spilled(self, key: str, n_entries: int) -> None:
        while n_entries > 0:
            head = self.spill.head(key)
            self.spill.pop(key)
            n_entries -= len(head)
            metrics.RECORDS_CACHED.labels(self.exchange, key.rsplit(":", 1)[1]).inc(
                sum(int(e.fields.get(b"n", b"0")) for e in head))
        metrics.SPILL_BYTES.labels(self.exchange).set(self.spill.bytes)

    async def _confirm_own(self, refused: list[tuple[str, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, eid in refused:
            pipe.xrange(key, eid, eid)
            pipe.xinfo_stream(key)
        replies = await pipe.execute(raise_on_error=False)
        for i, (key, eid) in enumerate(refused):
            found, info = replies[2 * i], replies[2 * i + 1]
            if not already_written(eid, None if isinstance(found, Exception) else found, last_generated_id(info)):
                raise StreamTakenOver(f"stream {key}: entry {eid} was refused and another writer's entries follow "
                                      f"(last id {last_generated_id(info)}); is a second collector for "
                                      f"{self.exchange} running?")
        LOG.warning("exchange=%s: %d entries were already in Redis (a retry after a lost reply); not added again",
                    self.exchange, len(refused))

    def _spill(self, batches: list[Batch], overflow: list[GapRow]) -> list[Batch]:
        """Put batches in the spill, in order per stream; returns those it took (the rest become ``overflow``
        gaps rows)."""
        by_key: dict[str, list[Batch]] = {}
        for batch in batches:
            by_key.setdefault(batch.key, []).append(batch)
        accepted = []
        for key, group in by_key.items():
            if self.spill.append(key, [(b.entry_id, b.fields) for b in group]):
                metrics.SPILLED_ENTRIES.labels(self.exchange).inc(len(group))
                accepted += group
            else:
                overflow += self._overflow(group)
        metrics.SPILL_BYTES.labels(self.exchange).set(self.spill.bytes)
        return accepted

    def _overflow(self, batches: list[Batch]) -> list[GapRow]:
        """The spill is full: these records are lost; each (channel, symbol) gets an ``overflow`` row."""
        now = time.time()
        rows: list[GapRow] = []
        for batch in batches:
            metrics.DROPPED_RECORDS.labels(self.exchange, batch.channel).inc(len(batch.rows))
            for symbol, s in summarize(batch.channel, batch.rows).items():
                n = sum(1 for r in batch.rows if r[0] == symbol)
                detail = (f"{n} records dropped: stream at its bound and the spill full ({self.cfg.spill_max_mb} MB);"
                          f" received {s.first_recv:.6f} to {s.last_recv:.6f}")
                rows.append((symbol, now, now, batch.channel, GapReason.OVERFLOW.value, s.min_id, s.max_id, detail,
                             round(s.min_event * US_PER_SECOND) * NS_PER_US,
                             round(s.max_event * US_PER_SECOND) * NS_PER_US))
        LOG.error("exchange=%s: spill %s full; dropped %d records (written as overflow gaps)", self.exchange,
                  self.spill.root, sum(len(b.rows) for b in batches))
        return rows

    def _account(self, plan: Plan, frames: tuple[int, int]) -> None:
        for batch in plan.direct:
            self.records_cached[batch.channel] += len(batch.rows)
            self.child(metrics.RECORDS_CACHED, self.exchange, batch.channel).inc(len(batch.rows))
            self.child(metrics.ENTRIES_CACHED, self.exchange, batch.channel).inc()
        if frames[0] > self.frames_reported[0]:
            self.child(metrics.FRAMES_RECEIVED, self.exchange).inc(frames[0] - self.frames_reported[0])
        self.frames_reported = frames

    def drainable(self) -> bool:
        """Whether spilled entries could be written back now (their stream has room)."""
        return any(self.room(k) > 0 for k in self.spill.backlogged())

    def last_id(self, key: str, last_generated: str | None) -> str | None:
        """The higher of the stream's last generated id and the last id waiting in the spill."""
        spilled = self.spill.entries(key)
        ids = [i for i in (last_generated, spilled[-1].entry_id if spilled else None) if i]
        return max(ids, key=parse_entry_id) if ids else None

