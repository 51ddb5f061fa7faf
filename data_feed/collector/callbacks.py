"""cryptofeed callbacks: normalized objects into the writer's buffers, the collector's hot path.

Each callback converts, appends one tuple to its channel's buffer and, when a full batch waits
there, wakes the flusher: no I/O, no counters, no metric lookups (the flusher counts per batch),
and times stay float seconds as cryptofeed gives them (the aggregator converts whole columns to
int64 nanoseconds, far cheaper than per record). Row layouts follow ``schemas.batch_columns(channel)``.

A callback is a plain coroutine function built once per writer and channel, with the buffer, the
batch size and the wake-up bound in its closure: calling it costs what cryptofeed's own dispatch
costs, where an object with a Python ``__call__`` costs a method lookup more for every record. It
carries cryptofeed's backend hooks (``start``/``stop`` attributes), so the FeedHandler starts the
writer's flusher and flushes it at stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from cryptofeed.defines import ASK, BID, CANDLES, FUNDING, L2_BOOK, LIQUIDATIONS, OPEN_INTEREST, TICKER
from cryptofeed.defines import TRADES as CF_TRADES
from cryptofeed.types import Candle, Funding, Liquidation, OpenInterest, OrderBook, Ticker, Trade

from data_feed.contracts.schemas import NS_PER_US, US_PER_SECOND, Channel

if TYPE_CHECKING:
    from data_feed.collector.writer import StreamWriter

# our channel -> cryptofeed's (the one map between the two vocabularies)
CRYPTOFEED_CHANNEL: dict[str, str] = {
    Channel.TRADES: CF_TRADES, Channel.L2_BOOK: L2_BOOK, Channel.TICKER: TICKER, Channel.FUNDING: FUNDING,
    Channel.OPEN_INTEREST: OPEN_INTEREST, Channel.LIQUIDATIONS: LIQUIDATIONS, Channel.CANDLES: CANDLES}
OUR_CHANNEL: dict[str, str] = {cf: str(ours) for ours, cf in CRYPTOFEED_CHANNEL.items()}

# Some cryptofeed classes hand over exchange times in epoch milliseconds (Bybit's books, tickers, candles);
# as seconds such a value would lie past the year 5000, so anything above this is milliseconds.
MS_EPOCH_THRESHOLD = 1e11


class Callback(Protocol):
    """What cryptofeed awaits per record, with its backend protocol (``start(loop, multiprocess)``, ``stop()``)."""

    def __call__(self, obj: Any, receipt: float) -> Coroutine[Any, Any, None]: ...

    def start(self, loop: asyncio.AbstractEventLoop, multiprocess: bool = False) -> None: ...

    def stop(self) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True)
class FullBook:
    """A cryptofeed book presented as a snapshot message (no delta): the book callback writes every level."""

    source: Any

    @property
    def symbol(self) -> str:
        return str(self.source.symbol)

    @property
    def book(self) -> Any:
        return self.source.book

    @property
    def timestamp(self) -> Any:
        return self.source.timestamp

    @property
    def sequence_number(self) -> Any:
        return self.source.sequence_number

    delta = None


def _hooked(fn: Callable[[Any, float], Coroutine[Any, Any, None]], writer: StreamWriter) -> Callback:
    """``fn`` with cryptofeed's backend hooks: the FeedHandler starts the writer's flusher and stops it."""
    vars(fn).update(start=writer.start, stop=writer.stop)
    return cast(Callback, fn)


def trade_callback(writer: StreamWriter) -> Callback:
    rows, full, wake = writer.buffers[Channel.TRADES.value], writer.batch_max_records, writer.wake
    append = rows.append

    async def on_trade(t: Trade, receipt: float) -> None:
        try:
            tid, tid_text = int(t.id), None
        except (TypeError, ValueError):
            tid, tid_text = None, None if t.id is None else str(t.id)
        append((t.symbol, t.timestamp or receipt, receipt, tid, tid_text, t.side, float(t.price), float(t.amount)))
        if len(rows) >= full:
            wake()

    return _hooked(on_trade, writer)


def ticker_callback(writer: StreamWriter) -> Callback:
    rows, full, wake = writer.buffers[Channel.TICKER.value], writer.batch_max_records, writer.wake

    async def on_ticker(t: Ticker, receipt: float) -> None:
        rows.append((t.symbol, _seconds(t.timestamp) or receipt, receipt, float(t.bid), float(t.ask)))
        if len(rows) >= full:
            wake()

    return _hooked(on_ticker, writer)


def book_callback(writer: StreamWriter) -> Callback:
    """One row per level change; a delta-less message is a full snapshot that replaces the book."""
    rows, full, wake = writer.buffers[Channel.L2_BOOK.value], writer.batch_max_records, writer.wake
    monotonic_recv = writer.monotonic_recv

    async def on_book(book: OrderBook, receipt: float) -> None:
        symbol = book.symbol
        ts_recv = monotonic_recv(symbol, receipt)
        ts_event = _seconds(book.timestamp) or ts_recv
        seq = book.sequence_number
        snapshot = book.delta is None
        changes = book.book.to_dict() if snapshot else book.delta
        for side, key in (("bid", BID), ("ask", ASK)):
            levels = changes[key].items() if snapshot else changes[key]
            rows.extend([(symbol, ts_event, ts_recv, side, float(price), float(size), snapshot, seq)
                         for price, size in levels])
        if len(rows) >= full:
            wake()

    return _hooked(on_book, writer)


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


def funding_callback(writer: StreamWriter) -> Callback:
    rows, full, wake = writer.buffers[Channel.FUNDING.value], writer.batch_max_records, writer.wake

    async def on_funding(f: Funding, receipt: float) -> None:
        rows.append((f.symbol, _seconds(f.timestamp) or receipt, receipt, _opt_float(f.mark_price),
                     _opt_float(f.rate), _opt_float(f.predicted_rate), _ns(f.next_funding_time)))
        if len(rows) >= full:
            wake()

    return _hooked(on_funding, writer)


def open_interest_callback(writer: StreamWriter) -> Callback:
    rows, full, wake = writer.buffers[Channel.OPEN_INTEREST.value], writer.batch_max_records, writer.wake

    async def on_open_interest(o: OpenInterest, receipt: float) -> None:
        rows.append((o.symbol, _seconds(o.timestamp) or receipt, receipt, float(o.open_interest)))
        if len(rows) >= full:
            wake()

    return _hooked(on_open_interest, writer)


def liquidation_callback(writer: StreamWriter) -> Callback:
    rows, full, wake = writer.buffers[Channel.LIQUIDATIONS.value], writer.batch_max_records, writer.wake

    async def on_liquidation(liq: Liquidation, receipt: float) -> None:
        oid = None if liq.id is None else str(liq.id)
        rows.append((liq.symbol, _seconds(liq.timestamp) or receipt, receipt, oid, liq.side, float(liq.price),
                     float(liq.quantity), liq.status))
        if len(rows) >= full:
            wake()

    return _hooked(on_liquidation, writer)


def candle_callback(writer: StreamWriter) -> Callback:
    """Every candle update; ``closed`` marks the final one (cryptofeed 2.4.1's Bybit sends it as ``trades``)."""
    rows, full, wake = writer.buffers[Channel.CANDLES.value], writer.batch_max_records, writer.wake

    async def on_candle(c: Candle, receipt: float) -> None:
        trades = None if c.trades is None or isinstance(c.trades, bool) else int(c.trades)
        closed = c.closed if isinstance(c.closed, bool) else (c.trades if isinstance(c.trades, bool) else None)
        rows.append((c.symbol, _seconds(c.timestamp) or receipt, receipt, _ns(c.start), _ns(c.stop),
                     str(c.interval), trades, float(c.open), float(c.high), float(c.low), float(c.close),
                     float(c.volume), closed))
        if len(rows) >= full:
            wake()

    return _hooked(on_candle, writer)
