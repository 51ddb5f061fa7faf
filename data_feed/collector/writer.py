"""The collector's writer: buffered records (``collector.callbacks``) into Redis streams.

A flusher writes the buffers to Redis every ``batch_max_ms`` or as soon as one
channel's buffer holds ``batch_max_records`` (a full batch), one flush at a time,
in order (steps 1-3 are ``collector.delivery``):

1. each batch gets its explicit entry id (``cache.EntryIds``) once, so a write
   retried after a lost reply is refused by Redis instead of added twice;
2. a stream at ``redis.stream_maxlen`` entries, or a Redis that does not answer,
   sends the stream's batches to the spill on local disk (``data_feed.cache.spill``),
   drained in order once there is room; only a full spill drops records, and
   each drop is an ``overflow`` gaps row with the count and the trade ids;
3. one MULTI/EXEC holds the batches, the gap rows and the collector state: frames
   received (all, and on the connections open now, which the spawner compares
   with what the simulator sent) and each (channel, symbol)'s *mark*, the last
   record that reached the cache (``collector.gaps``). A restarted collector
   reads the marks and writes a ``restart`` gap for its downtime; reconnects,
   stalls and skipped frames become gaps rows bounded by the same marks.

With the bus running, accepted batches (in Redis or the spill) go on it after each flush. With
``bus.publish_on_receipt`` each frame's rows go on it within the frame's event-loop pass instead
(``collector.bus_feed``), and the flush keeps the lake's accounting (a drop it makes is an ``overflow``
gaps row, on the bus too).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import redis.asyncio as aioredis
from cryptofeed.connection import WSAsyncConn
from cryptofeed.defines import CANDLES, FUNDING, L2_BOOK, LIQUIDATIONS, OPEN_INTEREST, TICKER, TRADES

from data_feed.bus.wire import Publisher
from data_feed.cache.spill import Spill
from data_feed.cache.streams import (
    BOOK_SNAPSHOT_REQUEST_KEY,
    ENTRY_PAYLOAD_FIELD,
    STATE_FRAMES_FIELD,
    STATE_FRAMES_OPEN_FIELD,
    STATE_STARTED_FIELD,
    EntryIds,
    Mark,
    collector_state_key,
    last_generated_id,
    parse_mark_field,
    stream_key,
)
from data_feed.collector.bus_feed import BusFeed
from data_feed.collector.callbacks import (
    OUR_CHANNEL,
    Callback,
    FullBook,
    book_callback,
    candle_callback,
    funding_callback,
    liquidation_callback,
    open_interest_callback,
    ticker_callback,
    trade_callback,
)
from data_feed.collector.delivery import Batch, Delivery
from data_feed.collector.gaps import EVENT_INDEX, RECV_INDEX, GapRow, GapTracker
from data_feed.contracts.config import GAPS_CHANNEL, RedisConfig
from data_feed.contracts.schemas import MS_PER_SECOND, GapReason
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.collector")


CHANNEL_OF_CALLBACK = OUR_CHANNEL
BYTES_PER_MB = 1024 * 1024
RECV_STEP_SECONDS = 1e-6  # book messages of one symbol get distinct receive times at least this far apart
STOP_FLUSH_SECONDS = 30.0  # how long stop() keeps retrying Redis for what it still holds
SNAPSHOT_REQUEST_CHECK_SECONDS = 1.0  # how often the flusher looks for a featurizer's book snapshot request


class StreamWriter:
    """One per collector process: buffers records per channel and writes them to Redis streams."""

    def __init__(self, client: aioredis.Redis, exchange: str, cfg: RedisConfig, spill: Spill | None = None,
                 subscription: Mapping[str, Sequence[str]] | None = None) -> None:
        self.client = client
        self.exchange = exchange
        self.cfg = cfg
        self.spill = spill or Spill(Path(tempfile.mkdtemp(prefix="data-feed-spill-")), cfg.spill_max_mb * BYTES_PER_MB)
        self.subscription = {ch: tuple(syms) for ch, syms in (subscription or {}).items()}
        # one list per channel for the writer's life: the callbacks hold them, a flush empties them in place
        self.buffers: dict[str, list[tuple[Any, ...]]] = {
            name: [] for name in (*CHANNEL_OF_CALLBACK.values(), GAPS_CHANNEL)}
        self.feed: Any = None  # the cryptofeed feed, whose frames the writer reports
        self.records_cached: dict[str, int] = dict.fromkeys(self.buffers, 0)
        self.delivery = Delivery(client, exchange, cfg, self.spill, self.records_cached)
        self.tracker = GapTracker()
        self.failed: BaseException | None = None  # an unexpected flusher error: the process exits non-zero
        self._last_recv: dict[str, float] = {}
        self._frames_seen = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self.wake = self._kick.set  # a full batch waits: flush now rather than at the next interval
        self._stopping = asyncio.Event()
        self._stopped = False
        self._prepared = False
        self._snapshot_answered = 0.0  # the newest book snapshot request answered
        self.answers_snapshot_requests = True  # not in a replay: it lands what the recording holds, nothing else
        self._snapshot_checked = 0.0
        self.batch_max_records = cfg.batch_max_records
        self.bus: Publisher | None = None  # set when the bus runs: each accepted batch is also published
        self.live: BusFeed | None = None  # bus.publish_on_receipt: every row published as it arrives instead
        self.trade = trade_callback(self)
        self.book = book_callback(self)
        self.ticker = ticker_callback(self)
        self.funding = funding_callback(self)
        self.open_interest = open_interest_callback(self)
        self.liquidations = liquidation_callback(self)
        self.candles = candle_callback(self)

    def publish_on_receipt(self) -> None:
        """Rows go on ``self.bus`` as they arrive (``bus_feed``), not behind the Redis write."""
        assert self.bus is not None, "publish_on_receipt needs the bus"
        self.live = BusFeed(self.bus, self.exchange, self.buffers)

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

    @property
    def pending(self) -> int:
        """Records and gap rows buffered, not yet taken by a flush."""
        return sum(map(len, self.buffers.values()))

    def callbacks(self) -> dict[str, Callback]:
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
        buffer = self.buffers[GAPS_CHANNEL]
        buffer.extend(rows)
        if len(buffer) >= self.batch_max_records:
            self.wake()

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
        while (self.pending or self.delivery.drainable()) and time.monotonic() < deadline:
            await asyncio.sleep(min(max(self.delivery.retry_delay, 0.05), 1.0))
            await self.flush()

    def _stopping_keys(self) -> list[tuple[str, str]]:
        if self.subscription:
            return [(ch, sym) for ch, syms in self.subscription.items() for sym in syms]
        return sorted(self.tracker.marks)

    async def _flush_loop(self) -> None:
        interval = self.cfg.batch_max_ms / 1000
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                timer = loop.call_later(interval, self.wake)  # a plain timer: wait_for would start a task per wait
                await self._kick.wait()
                timer.cancel()
                self._kick.clear()
                if self._stopping.is_set():
                    break
                await self._answer_snapshot_request()
                await self.flush()
                if self.delivery.retry_delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=self.delivery.retry_delay)
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
            self.delivery.write_failed("start-up read", err)
            return False
        if isinstance(state, Exception):
            raise state
        now = time.time()
        for key, info in zip(keys, infos, strict=True):
            last = self.delivery.last_id(key, last_generated_id(info))
            self.delivery.ids[key] = EntryIds.after(last, int(now * MS_PER_SECOND))
        self._restore_marks({k.decode(): v.decode() for k, v in state.items()}, now)
        asked = await self.client.get(BOOK_SNAPSHOT_REQUEST_KEY)
        self._snapshot_answered = float(asked) if asked else 0.0  # requests before this start: our books are new
        await self.client.hset(collector_state_key(self.exchange), mapping={  # type: ignore[misc]
            STATE_STARTED_FIELD: repr(now), STATE_FRAMES_FIELD: 0, STATE_FRAMES_OPEN_FIELD: 0})
        self._prepared = True
        return True

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
            if not self.pending and frames == self.delivery.frames_reported and not self.spill.backlogged():
                return
            taken = self._take()
            gaps = taken.pop(GAPS_CHANNEL, [])
            done = await self.delivery.deliver(self.delivery.encode(taken), gaps, frames, self.tracker.marks)
            if done.overflow:
                self._add_gap_rows(done.overflow)
            if done.returned_gaps:
                self.buffers[GAPS_CHANNEL][:0] = done.returned_gaps
                if self.live is not None:
                    self.live.returned(GAPS_CHANNEL, len(done.returned_gaps))
            if self.live is None:
                self._publish(done.published, done.published_gaps)
                return
            if done.overflow:
                self.live.publish()  # the bus carried those records: their loss goes on it now
            newest = [rows[-1][RECV_INDEX] for ch, rows in taken.items() if rows]
            if newest:
                self.live.confirm(max(newest))

    def _take(self) -> dict[str, list[tuple[Any, ...]]]:
        if self.live is not None:
            self.live.publish()  # whatever the frames' passes have not published yet, before it leaves the buffers
        taken = {ch: rows.copy() for ch, rows in self.buffers.items() if rows}
        for ch in taken:
            self.buffers[ch].clear()
        if self.live is not None:
            self.live.taken()
        closed: list[GapRow] = []
        for channel, rows in taken.items():
            if channel != GAPS_CHANNEL:
                closed += self.tracker.observe(channel, rows)
                self._sample_latency(channel, rows)
        if closed:
            self._count_gaps(closed)
            taken.setdefault(GAPS_CHANNEL, []).extend(closed)
            if self.live is not None:
                self.live.extra_gaps(closed)
        return taken

    def _sample_latency(self, channel: str, rows: list[tuple[Any, ...]]) -> None:
        """Exchange-to-receipt latency of a few of a flush's rows, evenly spread: the callbacks stay as cheap
        as they are, and a flush costs a handful of observations whatever its size."""
        histogram = self.delivery.child(metrics.RECEIPT_LATENCY, self.exchange, channel)
        step = -(-len(rows) // metrics.RECEIPT_SAMPLES_PER_FLUSH)
        for row in rows[::step]:
            histogram.observe(max(0.0, row[RECV_INDEX] - row[EVENT_INDEX]))

    def _note_frames(self, frames: int) -> None:
        """When frames last arrived: the exchange's silence (``data_feed_exchange_silence_seconds``) counts
        from here, whether or not Redis takes what they held."""
        if frames != self._frames_seen:
            self._frames_seen = frames
            self.delivery.child(metrics.LAST_FRAME, self.exchange).set(time.time())

    def _publish(self, batches: list[Batch], gaps: list[tuple[Any, ...]]) -> None:
        """Accepted batches (in Redis or the spill) go on the bus too; dropped ones are gaps rows instead."""
        if self.bus is None or not (batches or gaps):
            return
        by_channel: dict[str, list[tuple[Any, ...]]] = {GAPS_CHANNEL: list(gaps)} if gaps else {}
        for batch in batches:  # after the gaps: a subscriber learns of an outage before the data that ends it
            by_channel.setdefault(batch.channel, []).extend(batch.rows)
        self.bus.publish_batches(self.exchange, by_channel)
