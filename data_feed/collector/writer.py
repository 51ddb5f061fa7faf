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
from cryptofeed.defines import ASK, BID, CANDLES, FUNDING, L2_BOOK, LIQUIDATIONS, OPEN_INTEREST, TICKER, TRADES
from cryptofeed.types import Candle, Funding, Liquidation, OpenInterest, OrderBook, Ticker, Trade

from data_feed import metrics
from data_feed.bus import Publisher
from data_feed.cache import collector_state_key, encode_batch, stream_key
from data_feed.config import RedisConfig

LOG = logging.getLogger("data_feed.collector")

RETRY_DELAY_MAX_SECONDS = 5.0

CHANNEL_OF_CALLBACK = {TRADES: "trades", L2_BOOK: "l2_book", TICKER: "ticker", FUNDING: "funding",
                       OPEN_INTEREST: "open_interest", LIQUIDATIONS: "liquidations", CANDLES: "candles"}
GAPS_CHANNEL = "gaps"  # written by the collector itself, not by a cryptofeed callback
US_PER_SECOND = 1_000_000
NS_PER_US = 1000
# Some cryptofeed classes hand over exchange times in epoch milliseconds (Bybit's books, tickers, candles);
# as seconds such a value would lie past the year 5000, so anything above this is milliseconds.
MS_EPOCH_THRESHOLD = 1e11
RECV_STEP_SECONDS = 1e-6  # book messages of one symbol get distinct receive times at least this far apart
STOP_FLUSH_SECONDS = 30.0  # how long stop() keeps retrying Redis for what it still holds


def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


class StreamWriter:
    """One per collector process: buffers records per channel and writes them to Redis streams."""

    def __init__(self, client: aioredis.Redis, exchange: str, cfg: RedisConfig) -> None:
        self.client = client
        self.exchange = exchange
        self.cfg = cfg
        self.buffers: dict[str, list[tuple[Any, ...]]] = {
            name: [] for name in (*CHANNEL_OF_CALLBACK.values(), GAPS_CHANNEL)}
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
        self.bus: Publisher | None = None  # set when the bus runs: each flushed batch is also published
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

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        """A row for the ``gaps`` table: data of (channel, symbol) may be missing from here on."""
        ts = time.time() if when is None else when
        self.buffers[GAPS_CHANNEL].append((symbol, ts, ts, channel, reason, first_missing, last_missing, detail))
        metrics.GAPS.labels(self.exchange, channel, reason).inc()
        self.count(1)

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
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
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
            if self.bus is not None:  # after Redis: the bus never carries what the cache lacks
                self.bus.publish_batches(self.exchange, taken)

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
        w.buffers["ticker"].append((t.symbol, _seconds(t.timestamp) or receipt, receipt, float(t.bid), float(t.ask)))
        w.count(1)


class BookCallback(_Callback):
    """One row per level change; a delta-less callback is a full snapshot that replaces the book."""

    async def __call__(self, book: OrderBook, receipt: float) -> None:
        w = self.writer
        ts_recv = w.monotonic_recv(book.symbol, receipt)
        ts_event = _seconds(book.timestamp) or ts_recv
        seq = book.sequence_number
        rows = w.buffers["l2_book"]
        snapshot = book.delta is None
        changes = book.book.to_dict() if snapshot else book.delta
        for side, key in (("bid", BID), ("ask", ASK)):
            levels = changes[key].items() if snapshot else changes[key]
            for price, size in levels:
                rows.append((book.symbol, ts_event, ts_recv, side, float(price), float(size), snapshot, seq))
        w.count(len(changes[BID]) + len(changes[ASK]))


def _seconds(value: Any) -> float | None:
    """Epoch seconds of an exchange time cryptofeed gave as seconds or (by mistake) milliseconds."""
    if value is None:
        return None
    seconds = float(value)
    return seconds / 1000 if seconds > MS_EPOCH_THRESHOLD else seconds


def _ns(value: Any) -> int | None:
    seconds = _seconds(value)  # rounded to the microsecond a float second holds, like the cache's times
    return None if seconds is None else round(seconds * US_PER_SECOND) * NS_PER_US


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


class FundingCallback(_Callback):
    async def __call__(self, f: Funding, receipt: float) -> None:
        ts = _seconds(f.timestamp) or receipt
        row = (f.symbol, ts, receipt, _opt_float(f.mark_price), _opt_float(f.rate), _opt_float(f.predicted_rate),
               _ns(f.next_funding_time))
        self.writer.buffers["funding"].append(row)
        self.writer.count(1)


class OpenInterestCallback(_Callback):
    async def __call__(self, o: OpenInterest, receipt: float) -> None:
        ts = _seconds(o.timestamp) or receipt
        self.writer.buffers["open_interest"].append((o.symbol, ts, receipt, float(o.open_interest)))
        self.writer.count(1)


class LiquidationCallback(_Callback):
    async def __call__(self, liq: Liquidation, receipt: float) -> None:
        oid = None if liq.id is None else str(liq.id)
        ts = _seconds(liq.timestamp) or receipt
        row = (liq.symbol, ts, receipt, oid, liq.side, float(liq.price), float(liq.quantity), liq.status)
        self.writer.buffers["liquidations"].append(row)
        self.writer.count(1)


class CandleCallback(_Callback):
    """Every candle update; ``closed`` marks the final one (cryptofeed 2.4.1's Bybit sends it as ``trades``)."""

    async def __call__(self, c: Candle, receipt: float) -> None:
        trades = None if c.trades is None or isinstance(c.trades, bool) else int(c.trades)
        closed = c.closed if isinstance(c.closed, bool) else (c.trades if isinstance(c.trades, bool) else None)
        ts = _seconds(c.timestamp) or receipt
        row = (c.symbol, ts, receipt, _ns(c.start), _ns(c.stop), str(c.interval), trades, float(c.open),
               float(c.high), float(c.low), float(c.close), float(c.volume), closed)
        self.writer.buffers["candles"].append(row)
        self.writer.count(1)
