"""cryptofeed callbacks that turn normalized objects into cached batches.

The callbacks only append a tuple to an in-memory buffer: no I/O on the hot
path, and times stay float seconds as cryptofeed gives them (the aggregator
converts whole columns to int64 nanoseconds, far cheaper than per record).

A flusher writes the buffers to Redis as pipelined ``XADD`` entries every
``batch_max_ms`` or when ``batch_max_records`` are waiting, in order, one flush
at a time, so the stream keeps the exchange's order. A failed write keeps its
records and retries; cryptofeed calls ``stop()`` on shutdown, which flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from cryptofeed.defines import ASK, BID, L2_BOOK, TICKER, TRADES
from cryptofeed.types import OrderBook, Ticker, Trade

from data_feed import metrics
from data_feed.cache import collector_state_key, encode_batch, stream_key
from data_feed.config import RedisConfig

LOG = logging.getLogger("data_feed.collector")

RETRY_DELAY_MAX_SECONDS = 5.0

CHANNEL_OF_CALLBACK = {TRADES: "trades", L2_BOOK: "l2_book", TICKER: "ticker"}


RECV_STEP_SECONDS = 1e-6
def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class StreamWriter:
    """One per collector process: buffers records per channel and writes them to Redis streams."""

    def __init__(self, client: aioredis.Redis, exchange: str, cfg: RedisConfig) -> None:
        self.client = client
        self.exchange = exchange
        self.cfg = cfg
        self.buffers: dict[str, list[tuple[Any, ...]]] = {name: [] for name in CHANNEL_OF_CALLBACK.values()}
        self.pending = 0
        self.feed: Any = None  # the cryptofeed feed, whose frames_received the writer reports
        self.frames_reported = 0
        self.records_cached: dict[str, int] = dict.fromkeys(self.buffers, 0)
        self._last_recv: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._stopped = False
        self._retry_delay = 0.0
        self.batch_max_records = cfg.batch_max_records
        self.trade = TradeCallback(self)
        self.book = BookCallback(self)
        self.ticker = TickerCallback(self)

    @property
    def frames_received(self) -> int:
        return int(getattr(self.feed, "frames_received", 0))

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
        return {TRADES: self.trade, L2_BOOK: self.book, TICKER: self.ticker}

    # -- cryptofeed backend protocol: start(loop, multiprocess) / stop() ---------------------

    def start(self, loop: asyncio.AbstractEventLoop, multiprocess: bool = False) -> None:
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_loop())

    async def stop(self) -> None:
        """Flush everything accepted; idempotent (cryptofeed calls it once per channel)."""
        if self._stopped:
            return
        self._stopped = True
        if self._flusher is not None:
            self._flusher.cancel()
        deadline = time.monotonic() + 30
        while self.pending and time.monotonic() < deadline:
            await self.flush()
            if self.pending:
                await asyncio.sleep(0.2)
        if self.pending:
            LOG.error("exchange=%s: %d records could not be written to Redis at stop", self.exchange, self.pending)

    async def _flush_loop(self) -> None:
        interval = self.cfg.batch_max_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=interval)
            self._kick.clear()
            await self.flush()
            if self._retry_delay:
                await asyncio.sleep(self._retry_delay)

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._lock:
            taken = {ch: rows for ch, rows in self.buffers.items() if rows}
            frames = self.frames_received
            if not taken and frames == self.frames_reported:
                return
            for ch in taken:
                self.buffers[ch] = []
            count = sum(len(r) for r in taken.values())
            self.pending -= count
            try:
                await self._write(taken, frames)
            except (aioredis.RedisError, OSError) as err:
                self._restore(taken, count)
                self._retry_delay = min(max(self._retry_delay * 2, 0.1), RETRY_DELAY_MAX_SECONDS)
                metrics.CACHE_WRITE_ERRORS.labels(self.exchange).inc()
                LOG.error("exchange=%s: Redis write of %d records failed (%s); keeping them, retry in %.1fs",
                          self.exchange, count, err, self._retry_delay)
                return
            self._retry_delay = 0.0
            self._account(taken, frames)

    def _restore(self, taken: dict[str, list[tuple[Any, ...]]], count: int) -> None:
        for ch, rows in taken.items():
            self.buffers[ch] = rows + self.buffers[ch]
        self.pending += count

    async def _write(self, taken: dict[str, list[tuple[Any, ...]]], frames: int) -> None:
        pipe = self.client.pipeline(transaction=True)
        for channel, rows in taken.items():
            key = stream_key(self.exchange, channel)
            for chunk in _chunks(rows, self.cfg.batch_max_records):
                fields = encode_batch(channel, chunk)
                pipe.xadd(key, fields, maxlen=self.cfg.stream_maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.xlen(key)
        state = {"frames_received": frames, "updated_at": time.time()}
        state.update({f"records_{ch}": self.records_cached[ch] + len(rows) for ch, rows in taken.items()})
        pipe.hset(collector_state_key(self.exchange), mapping=state)  # type: ignore[arg-type]
        results = await pipe.execute()
        self._check_bounds(taken, results)

    def _check_bounds(self, taken: dict[str, list[tuple[Any, ...]]], results: list[Any]) -> None:
        # results: per channel, its XADD ids then its XLEN
        pos = 0
        for channel, rows in taken.items():
            pos += -(-len(rows) // self.cfg.batch_max_records)
            length = int(results[pos])
            pos += 1
            key = stream_key(self.exchange, channel)
            metrics.STREAM_LENGTH.labels(key).set(length)
            if length >= self.cfg.stream_maxlen:
                metrics.STREAM_BOUND_HITS.labels(key).inc()
                LOG.warning("exchange=%s channel=%s: stream %s is at its bound of %d entries; the oldest are "
                            "trimmed and are lost if the aggregator has not read them", self.exchange, channel,
                            key, self.cfg.stream_maxlen)

    def _account(self, taken: dict[str, list[tuple[Any, ...]]], frames: int) -> None:
        for channel, rows in taken.items():
            self.records_cached[channel] += len(rows)
            metrics.RECORDS_CACHED.labels(self.exchange, channel).inc(len(rows))
            metrics.ENTRIES_CACHED.labels(self.exchange, channel).inc(-(-len(rows) // self.cfg.batch_max_records))
        if frames > self.frames_reported:
            metrics.FRAMES_RECEIVED.labels(self.exchange).inc(frames - self.frames_reported)
            self.frames_reported = frames


class _Callback:
    """A cryptofeed callback with backend hooks, so FeedHandler starts the flusher and flushes at stop.

    The ``__call__`` of each subclass is the hot path: convert, append a tuple, count. Nothing else.
    """

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer

    def start(self, loop: asyncio.AbstractEventLoop, multiprocess: bool = False) -> None:
        self.writer.start(loop, multiprocess)

    async def stop(self) -> None:
        await self.writer.stop()


class TradeCallback(_Callback):
    async def __call__(self, t: Trade, receipt: float) -> None:
        try:
            tid, tid_text = int(t.id), None
        except (TypeError, ValueError):
            tid, tid_text = None, None if t.id is None else str(t.id)
        w = self.writer
        w.buffers["trades"].append((t.symbol, t.timestamp or receipt, receipt, tid, tid_text, t.side, float(t.price),
                                    float(t.amount)))
        w.pending += 1
        if w.pending >= w.batch_max_records:
            w._kick.set()


class TickerCallback(_Callback):
    async def __call__(self, t: Ticker, receipt: float) -> None:
        w = self.writer
        w.buffers["ticker"].append((t.symbol, t.timestamp or receipt, receipt, float(t.bid), float(t.ask)))
        w.count(1)


class BookCallback(_Callback):
    """One row per level change; a delta-less callback is a full snapshot that replaces the book."""

    async def __call__(self, book: OrderBook, receipt: float) -> None:
        w = self.writer
        ts_recv = w.monotonic_recv(book.symbol, receipt)
        ts_event = book.timestamp or ts_recv
        seq = book.sequence_number
        rows = w.buffers["l2_book"]
        snapshot = book.delta is None
        changes = book.book.to_dict() if snapshot else book.delta
        for side, key in (("bid", BID), ("ask", ASK)):
            levels = changes[key].items() if snapshot else changes[key]
            for price, size in levels:
                rows.append((book.symbol, ts_event, ts_recv, side, float(price), float(size), snapshot, seq))
        w.count(len(changes[BID]) + len(changes[ASK]))
