"""The collector's writer: buffered records (``collector.callbacks``) into Redis streams.

A flusher writes the buffers to Redis every ``batch_max_ms`` or when
``batch_max_records`` are waiting, one flush at a time, in order:

1. each batch gets its explicit entry id (``cache.EntryIds``) once, so a write
   retried after a lost reply is refused by Redis instead of added twice;
2. a stream at ``redis.stream_maxlen`` entries, or a Redis that does not answer,
   sends the stream's batches to the spill on local disk (``data_feed.spill``),
   drained in order once there is room; only a full spill drops records, and
   each drop is an ``overflow`` gaps row with the count and the trade ids;
3. one MULTI/EXEC holds the batches, the gap rows and the collector state: frames
   received (all, and on the connections open now, which the spawner compares
   with what the simulator sent) and each (channel, symbol)'s *mark*, the last
   record that reached the cache (``collector.gaps``). A restarted collector
   reads the marks and writes a ``restart`` gap for its downtime; reconnects,
   stalls and skipped frames become gaps rows bounded by the same marks.

Stop: cryptofeed calls ``stop()``; the flush in flight completes (never cancelled
mid-write), then the flusher writes what is left, closing every open gap and a
``stopped`` row per channel and symbol. An unexpected error in the flusher is
logged and stops the collector with a non-zero exit, so its supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis
from cryptofeed.connection import WSAsyncConn
from cryptofeed.defines import CANDLES, FUNDING, L2_BOOK, LIQUIDATIONS, OPEN_INTEREST, TICKER, TRADES

from data_feed import metrics
from data_feed.bus import Publisher
from data_feed.cache import (
    BOOK_SNAPSHOT_REQUEST_KEY,
    ENTRY_PAYLOAD_FIELD,
    STATE_FRAMES_FIELD,
    STATE_FRAMES_OPEN_FIELD,
    STATE_RECORDS_PREFIX,
    STATE_STARTED_FIELD,
    STATE_UPDATED_FIELD,
    EntryIds,
    StreamTakenOver,
    already_written,
    collector_state_key,
    encode_batch,
    last_generated_id,
    mark_field,
    parse_entry_id,
    parse_mark_field,
    refused_as_old,
    stream_key,
)
from data_feed.collector.callbacks import (
    OUR_CHANNEL,
    BookCallback,
    CandleCallback,
    FullBook,
    FundingCallback,
    LiquidationCallback,
    OpenInterestCallback,
    TickerCallback,
    TradeCallback,
)
from data_feed.collector.gaps import EVENT_INDEX, RECV_INDEX, GapRow, GapTracker, Mark, summarize
from data_feed.config import GAPS_CHANNEL, RedisConfig
from data_feed.schemas import MS_PER_SECOND, GapReason
from data_feed.spill import Spill

LOG = logging.getLogger("data_feed.collector")

RETRY_DELAY_MAX_SECONDS = 5.0

CHANNEL_OF_CALLBACK = OUR_CHANNEL
BYTES_PER_MB = 1024 * 1024
RECV_STEP_SECONDS = 1e-6  # book messages of one symbol get distinct receive times at least this far apart
STOP_FLUSH_SECONDS = 30.0  # how long stop() keeps retrying Redis for what it still holds
SPILL_FILES_PER_FLUSH = 50  # spilled files written back per stream and flush, at most
SNAPSHOT_REQUEST_CHECK_SECONDS = 1.0  # how often the flusher looks for a featurizer's book snapshot request


def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
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


class StreamWriter:
    """One per collector process: buffers records per channel and writes them to Redis streams."""

    def __init__(self, client: aioredis.Redis, exchange: str, cfg: RedisConfig, spill: Spill | None = None,
                 subscription: Mapping[str, Sequence[str]] | None = None) -> None:
        self.client = client
        self.exchange = exchange
        self.cfg = cfg
        self.spill = spill or Spill(Path(tempfile.mkdtemp(prefix="data-feed-spill-")), cfg.spill_max_mb * BYTES_PER_MB)
        self.subscription = {ch: tuple(syms) for ch, syms in (subscription or {}).items()}
        self.buffers: dict[str, list[tuple[Any, ...]]] = {
            name: [] for name in (*CHANNEL_OF_CALLBACK.values(), GAPS_CHANNEL)}
        self.pending = 0
        self.feed: Any = None  # the cryptofeed feed, whose frames the writer reports
        self.frames_reported = (0, 0)
        self.records_cached: dict[str, int] = dict.fromkeys(self.buffers, 0)
        self.tracker = GapTracker()
        self.ids: dict[str, EntryIds] = {}
        self.lengths: dict[str, int] = {}  # entries per stream at the last write
        self.failed: BaseException | None = None  # an unexpected flusher error: the process exits non-zero
        self._last_recv: dict[str, float] = {}
        self._frames_seen = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = False
        self._prepared = False
        self._bounded: set[str] = set()  # streams at their bound (logged once per episode)
        self._retry_delay = 0.0
        self._snapshot_answered = 0.0  # the newest book snapshot request answered
        self.answers_snapshot_requests = True  # not in a replay: it lands what the recording holds, nothing else
        self._snapshot_checked = 0.0
        self.batch_max_records = cfg.batch_max_records
        self.bus: Publisher | None = None  # set when the bus runs: each accepted batch is also published
        self.trade = TradeCallback(self)
        self.book = BookCallback(self)
        self.ticker = TickerCallback(self)
        self.funding = FundingCallback(self)
        self.open_interest = OpenInterestCallback(self)
        self.liquidations = LiquidationCallback(self)
        self.candles = CandleCallback(self)

    @property
    def frames_received(self) -> int:
        return int(getattr(self.feed, "frames_received", 0))

    def frames_open(self) -> int:
        """Frames received on the websocket connections open now (cryptofeed counts per connection)."""
        handlers = getattr(self.feed, "connection_handlers", ())
        return sum(h.conn.received for h in handlers if isinstance(h.conn, WSAsyncConn) and h.conn.is_open)

    def monotonic_recv(self, symbol: str, ts_recv: float) -> float:
        # Book rows are replayed by ts_recv; two messages must never share one (at microsecond resolution).
        last = self._last_recv.get(symbol, 0.0)
        if ts_recv < last + RECV_STEP_SECONDS:
            ts_recv = last + RECV_STEP_SECONDS
        self._last_recv[symbol] = ts_recv
        return ts_recv

    def count(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.batch_max_records:
            self._kick.set()

    def callbacks(self) -> dict[str, Any]:
        return {TRADES: self.trade, L2_BOOK: self.book, TICKER: self.ticker, FUNDING: self.funding,
                OPEN_INTEREST: self.open_interest, LIQUIDATIONS: self.liquidations, CANDLES: self.candles}

    # -- gaps --------------------------------------------------------------------------------

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        """A row for the ``gaps`` table: data of (channel, symbol) may be missing from here on."""
        ts = self._gap_time(channel, symbol, when)
        self._add_gap_rows([(symbol, ts, ts, channel, GapReason(reason).value, first_missing, last_missing, detail,
                             None, None)])

    def open_gap(self, symbol: str, channel: str, reason: str, detail: str = "", when: float | None = None) -> None:
        """An outage whose end is the next record of (channel, symbol): its row then bounds the missing ids."""
        boundary = len(self.buffers.get(channel, ()))
        self.tracker.open_gap(channel, symbol, GapReason(reason), self._gap_time(channel, symbol, when), detail,
                              boundary)
        self._announce_open([(channel, symbol)])

    def _announce_open(self, keys: Sequence[tuple[str, str]]) -> None:
        """Open gaps on the bus at once (``gaps.open_notice``): live consumers hold the slices they touch as
        incomplete before any later record of another symbol can close them."""
        if self.bus is not None and keys:
            self.bus.publish_batches(self.exchange, {GAPS_CHANNEL: [self.tracker.open_notice(*k) for k in keys]})

    def _gap_time(self, channel: str, symbol: str, when: float | None) -> float:
        """Detection times strictly increasing per (channel, symbol), a microsecond apart at least: two outages
        are two rows, never one the aggregator would take for a retried write (identical rows land once)."""
        ts = time.time() if when is None else when
        key = f"gap:{channel}:{symbol}"
        last = self._last_recv.get(key, 0.0)
        ts = max(ts, last + RECV_STEP_SECONDS)
        self._last_recv[key] = ts
        return ts

    def _add_gap_rows(self, rows: list[GapRow]) -> None:
        self._count_gaps(rows)
        self.buffers[GAPS_CHANNEL].extend(rows)
        self.count(len(rows))

    def _count_gaps(self, rows: list[GapRow]) -> None:
        for _, _, _, channel, reason, _, _, _, missing_from, missing_to in rows:
            metrics.count_gap(self.exchange, channel, reason, missing_from, missing_to)

    # -- cryptofeed backend protocol: start(loop, multiprocess) / stop() ---------------------

    def start(self, loop: asyncio.AbstractEventLoop, multiprocess: bool = False) -> None:
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_loop())

    async def stop(self) -> None:
        """Flush everything accepted; idempotent (cryptofeed calls it once per channel)."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        self._kick.set()
        if self._flusher is not None:
            await self._flusher  # returns after the flush in flight: a write is never cut in half
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
        try:
            await self._final_flush(deadline)  # what is buffered first: the marks must include it
            if self._prepared and self.failed is None:
                self._add_gap_rows(self.tracker.close_all(time.time(), self._stopping_keys()))
                await self._final_flush(deadline)
        except Exception as err:  # the process is ending: say what is left
            LOG.exception("exchange=%s: final flush failed (%s)", self.exchange, err)
        if self.pending:
            LOG.error("exchange=%s: %d records could not be written to Redis or the spill at stop", self.exchange,
                      self.pending)
        if self.spill.backlogged():
            LOG.warning("exchange=%s: %d spilled files stay in %s; the next start writes them first",
                        self.exchange, self.spill.backlog_files(), self.spill.root)

    async def _final_flush(self, deadline: float) -> None:
        await self.flush()
        while (self.pending or self._drainable()) and time.monotonic() < deadline:
            await asyncio.sleep(min(max(self._retry_delay, 0.05), 1.0))
            await self.flush()

    def _drainable(self) -> bool:
        return any(self._room(k) > 0 for k in self.spill.backlogged())

    def _stopping_keys(self) -> list[tuple[str, str]]:
        if self.subscription:
            return [(ch, sym) for ch, syms in self.subscription.items() for sym in syms]
        return sorted(self.tracker.marks)

    async def _flush_loop(self) -> None:
        interval = self.cfg.batch_max_ms / 1000
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout=interval)
                self._kick.clear()
                if self._stopping.is_set():
                    break
                await self._answer_snapshot_request()
                await self.flush()
                if self._retry_delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=self._retry_delay)
        except Exception as err:  # the boundary: log, then end the process non-zero
            self.failed = err
            LOG.exception("exchange=%s: the flusher failed (%s: %s); stopping the collector so it is restarted",
                          self.exchange, type(err).__name__, err)
            os.kill(os.getpid(), signal.SIGTERM)  # cryptofeed's handler stops the feed; run() exits non-zero

    async def _answer_snapshot_request(self) -> None:
        """A restarted featurizer asks for every book once (it has none to apply deltas to): send each book
        the feed keeps as one snapshot message, like any book message (cache, lake and bus alike)."""
        now = time.monotonic()
        if not self.answers_snapshot_requests or not self._prepared \
                or now - self._snapshot_checked < SNAPSHOT_REQUEST_CHECK_SECONDS:
            return
        self._snapshot_checked = now
        try:
            raw = await self.client.get(BOOK_SNAPSHOT_REQUEST_KEY)
        except (aioredis.RedisError, OSError):
            return  # the flush reports Redis trouble
        asked = float(raw) if raw else 0.0
        if asked <= self._snapshot_answered:
            return
        self._snapshot_answered = asked
        books = dict(getattr(self.feed, "_l2_book", None) or {})  # cryptofeed's Feed keeps one per symbol
        for book in books.values():
            await self.book(FullBook(book), time.time())
        LOG.info("exchange=%s: sent a full snapshot of %d books on request", self.exchange, len(books))

    # -- start-up ----------------------------------------------------------------------------

    async def _ensure_prepared(self) -> bool:
        """Entry ids above every stream's last one, marks of the previous run, a restart gap for its downtime."""
        if self._prepared:
            return True
        keys = [stream_key(self.exchange, ch) for ch in CHANNEL_OF_CALLBACK.values()]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xinfo_stream(key)
        pipe.hgetall(collector_state_key(self.exchange))
        try:
            *infos, state = await pipe.execute(raise_on_error=False)
        except (aioredis.RedisError, OSError) as err:
            self._write_failed("start-up read", err)
            return False
        if isinstance(state, Exception):
            raise state
        now = time.time()
        for key, info in zip(keys, infos, strict=True):
            self.ids[key] = EntryIds.after(self._last_id(key, last_generated_id(info)), int(now * MS_PER_SECOND))
        self._restore_marks({k.decode(): v.decode() for k, v in state.items()}, now)
        asked = await self.client.get(BOOK_SNAPSHOT_REQUEST_KEY)
        self._snapshot_answered = float(asked) if asked else 0.0  # requests before this start: our books are new
        await self.client.hset(collector_state_key(self.exchange), mapping={  # type: ignore[misc]
            STATE_STARTED_FIELD: repr(now), STATE_FRAMES_FIELD: 0, STATE_FRAMES_OPEN_FIELD: 0})
        self._prepared = True
        return True

    def _last_id(self, key: str, last_generated: str | None) -> str | None:
        """The higher of the stream's last generated id and the last id waiting in the spill."""
        spilled = self.spill.entries(key)
        ids = [i for i in (last_generated, spilled[-1].entry_id if spilled else None) if i]
        return max(ids, key=parse_entry_id) if ids else None

    def _restore_marks(self, state: dict[str, str], now: float) -> None:
        for name, value in state.items():
            parsed = parse_mark_field(name)
            if parsed is not None:
                self.tracker.marks[parsed] = Mark.unpack(value)
        for key in self.spill.backlogged():  # records spilled by an earlier run reached the cache, late
            channel = key.rsplit(":", 1)[1]
            for entry in self.spill.entries(key):
                self.tracker.observe(channel, msgpack.unpackb(entry.fields[ENTRY_PAYLOAD_FIELD], raw=False))
        previous = state.get(STATE_STARTED_FIELD)
        if previous is None:
            return
        for channel, symbol in self._stopping_keys():
            self.tracker.open_gap(channel, symbol, GapReason.RESTART, now, "collector not running",
                                  since=float(previous))
        self._announce_open(self._stopping_keys())
        LOG.info("exchange=%s: previous collector started at %s; its downtime becomes restart gaps",
                 self.exchange, previous)

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._lock:
            if not await self._ensure_prepared():
                return
            frames = (self.frames_received, self.frames_open())
            self._note_frames(frames[0])
            if not self.pending and frames == self.frames_reported and not self.spill.backlogged():
                return
            taken = self._take()
            gaps = taken.pop(GAPS_CHANNEL, [])
            batches = self._encode(taken)
            await self._deliver(self._plan(batches), gaps, frames)

    def _take(self) -> dict[str, list[tuple[Any, ...]]]:
        taken = {ch: rows for ch, rows in self.buffers.items() if rows}
        for ch in taken:
            self.buffers[ch] = []
        self.pending -= sum(len(rows) for rows in taken.values())
        closed: list[GapRow] = []
        for channel, rows in taken.items():
            if channel != GAPS_CHANNEL:
                closed += self.tracker.observe(channel, rows)
                self._sample_latency(channel, rows)
        if closed:
            self._count_gaps(closed)
            taken.setdefault(GAPS_CHANNEL, []).extend(closed)
        return taken

    def _sample_latency(self, channel: str, rows: list[tuple[Any, ...]]) -> None:
        """Exchange-to-receipt latency of a few of a flush's rows, evenly spread: the callbacks stay as cheap
        as they are, and a flush costs a handful of observations whatever its size."""
        histogram = metrics.RECEIPT_LATENCY.labels(self.exchange, channel)
        step = -(-len(rows) // metrics.RECEIPT_SAMPLES_PER_FLUSH)
        for row in rows[::step]:
            histogram.observe(max(0.0, row[RECV_INDEX] - row[EVENT_INDEX]))

    def _note_frames(self, frames: int) -> None:
        """When frames last arrived: the exchange's silence (``data_feed_exchange_silence_seconds``) counts
        from here, whether or not Redis takes what they held."""
        if frames != self._frames_seen:
            self._frames_seen = frames
            metrics.LAST_FRAME.labels(self.exchange).set(time.time())

    def _encode(self, taken: dict[str, list[tuple[Any, ...]]]) -> list[Batch]:
        out = []
        for channel, rows in taken.items():
            key = stream_key(self.exchange, channel)
            for chunk in _chunks(rows, self.cfg.batch_max_records):
                out.append(Batch(key, self.ids[key].next(), channel, chunk, encode_batch(channel, chunk)))
        return out

    def _room(self, key: str) -> int:
        return self.cfg.stream_maxlen - self.lengths.get(key, 0)

    def _plan(self, batches: list[Batch]) -> Plan:
        drain = self.spill.fitting(self._room, SPILL_FILES_PER_FLUSH)
        spilled, used, behind = drain.spilled, drain.used, drain.behind
        direct: list[Batch] = []
        to_spill: list[Batch] = []
        for batch in batches:
            if batch.key in behind or self._room(batch.key) - used.get(batch.key, 0) <= 0:
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
        if key in self._bounded or self._room(key) > 0:
            return
        self._bounded.add(key)
        metrics.STREAM_BOUND_HITS.labels(key).inc()
        LOG.warning("exchange=%s: stream %s is at its bound of %d entries (the aggregator is behind); spilling to "
                    "%s until there is room", self.exchange, key, self.cfg.stream_maxlen, self.spill.root)

    async def _deliver(self, plan: Plan, gaps: list[tuple[Any, ...]], frames: tuple[int, int]) -> None:
        try:
            results = await self._write(plan, gaps, frames)
            await self._settle(plan, results)
        except (aioredis.RedisError, OSError) as err:
            if isinstance(err, aioredis.ResponseError):
                raise
            accepted = self._spill([*plan.direct, *plan.to_spill])
            self.buffers[GAPS_CHANNEL] = [*gaps, *self.buffers[GAPS_CHANNEL]]
            self.pending += len(gaps)
            self._write_failed(f"write of {sum(len(b.rows) for b in plan.direct)} records", err)
            self._publish(accepted, [])
            return
        self._retry_delay = 0.0
        accepted = self._spill(plan.to_spill)
        self._account(plan, frames)
        self._publish([*plan.direct, *accepted], gaps)

    def _write_failed(self, what: str, err: BaseException) -> None:
        self._retry_delay = min(max(self._retry_delay * 2, 0.1), RETRY_DELAY_MAX_SECONDS)
        metrics.CACHE_WRITE_ERRORS.labels(self.exchange).inc()
        LOG.error("exchange=%s: Redis %s failed (%s); kept (spill %s), retry in %.1fs", self.exchange, what, err,
                  self.spill.root, self._retry_delay)

    async def _write(self, plan: Plan, gaps: list[tuple[Any, ...]], frames: tuple[int, int]) -> list[Any]:
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
        pipe.hset(collector_state_key(self.exchange), mapping=self._state(plan, frames))  # type: ignore[arg-type]
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def _state(self, plan: Plan, frames: tuple[int, int]) -> dict[str, Any]:
        state: dict[str, Any] = {STATE_FRAMES_FIELD: frames[0], STATE_FRAMES_OPEN_FIELD: frames[1],
                                 STATE_UPDATED_FIELD: repr(time.time())}
        written: dict[str, int] = {}
        for batch in plan.direct:
            written[batch.channel] = written.get(batch.channel, 0) + len(batch.rows)
        for channel, n in written.items():
            state[STATE_RECORDS_PREFIX + channel] = self.records_cached[channel] + n
        state.update({mark_field(ch, sym): mark.pack() for (ch, sym), mark in self.tracker.marks.items()})
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
            metrics.STREAM_LENGTH.labels(key).set(int(length))
            if self._room(key) > 0 and key in self._bounded and not self.spill.has(key):
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

    def _spill(self, batches: list[Batch]) -> list[Batch]:
        """Put batches in the spill, in order per stream; returns those it took (the rest are overflow gaps)."""
        by_key: dict[str, list[Batch]] = {}
        for batch in batches:
            by_key.setdefault(batch.key, []).append(batch)
        accepted = []
        for key, group in by_key.items():
            if self.spill.append(key, [(b.entry_id, b.fields) for b in group]):
                metrics.SPILLED_ENTRIES.labels(self.exchange).inc(len(group))
                accepted += group
            else:
                self._overflow(group)
        metrics.SPILL_BYTES.labels(self.exchange).set(self.spill.bytes)
        return accepted

    def _overflow(self, batches: list[Batch]) -> None:
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
                             round(s.min_event * 1e6) * 1000, round(s.max_event * 1e6) * 1000))
        LOG.error("exchange=%s: spill %s full; dropped %d records (written as overflow gaps)", self.exchange,
                  self.spill.root, sum(len(b.rows) for b in batches))
        self._add_gap_rows(rows)

    def _account(self, plan: Plan, frames: tuple[int, int]) -> None:
        for batch in plan.direct:
            self.records_cached[batch.channel] += len(batch.rows)
            metrics.RECORDS_CACHED.labels(self.exchange, batch.channel).inc(len(batch.rows))
            metrics.ENTRIES_CACHED.labels(self.exchange, batch.channel).inc()
        if frames[0] > self.frames_reported[0]:
            metrics.FRAMES_RECEIVED.labels(self.exchange).inc(frames[0] - self.frames_reported[0])
        self.frames_reported = frames

    def _publish(self, batches: list[Batch], gaps: list[tuple[Any, ...]]) -> None:
        """Accepted batches (in Redis or the spill) go on the bus too; dropped ones are gaps rows instead."""
        if self.bus is None or not (batches or gaps):
            return
        by_channel: dict[str, list[tuple[Any, ...]]] = {GAPS_CHANNEL: list(gaps)} if gaps else {}
        for batch in batches:  # after the gaps: a subscriber learns of an outage before the data that ends it
            by_channel.setdefault(batch.channel, []).extend(batch.rows)
        self.bus.publish_batches(self.exchange, by_channel)
