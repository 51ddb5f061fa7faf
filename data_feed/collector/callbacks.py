"""cryptofeed callbacks: normalized objects into the writer's buffers, the collector's hot path.

Each ``__call__`` converts, appends a tuple to the writer's buffer for its channel and counts:
no I/O, and times stay float seconds as cryptofeed gives them (the aggregator converts whole
columns to int64 nanoseconds, far cheaper than per record). The callbacks also carry
cryptofeed's backend hooks (``start``/``stop``), so the FeedHandler starts the writer's flusher
and flushes it at stop. Row layouts follow ``schemas.batch_columns(channel)``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
TRADES_BUFFER, BOOK_BUFFER, TICKER_BUFFER = Channel.TRADES.value, Channel.L2_BOOK.value, Channel.TICKER.value

# Some cryptofeed classes hand over exchange times in epoch milliseconds (Bybit's books, tickers, candles);
# as seconds such a value would lie past the year 5000, so anything above this is milliseconds.
MS_EPOCH_THRESHOLD = 1e11


@dataclass(frozen=True)
class FullBook:
    """A cryptofeed book presented as a snapshot message (no delta): the BookCallback writes every level."""

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
        w.buffers[TRADES_BUFFER].append((t.symbol, t.timestamp or receipt, receipt, tid, tid_text, t.side,
                                         float(t.price), float(t.amount)))
        w.pending += 1
        if w.pending >= w.batch_max_records:
            w._kick.set()


class TickerCallback(_Callback):
    async def __call__(self, t: Ticker, receipt: float) -> None:
        w = self.writer
        w.buffers[TICKER_BUFFER].append((t.symbol, _seconds(t.timestamp) or receipt, receipt, float(t.bid),
                                         float(t.ask)))
        w.count(1)


class BookCallback(_Callback):
    """One row per level change; a delta-less callback is a full snapshot that replaces the book."""

    async def __call__(self, book: OrderBook, receipt: float) -> None:
        w = self.writer
        ts_recv = w.monotonic_recv(book.symbol, receipt)
        ts_event = _seconds(book.timestamp) or ts_recv
        seq = book.sequence_number
        rows = w.buffers[BOOK_BUFFER]
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
        self.writer.buffers[Channel.FUNDING.value].append(row)
        self.writer.count(1)


class OpenInterestCallback(_Callback):
    async def __call__(self, o: OpenInterest, receipt: float) -> None:
        ts = _seconds(o.timestamp) or receipt
        self.writer.buffers[Channel.OPEN_INTEREST.value].append((o.symbol, ts, receipt, float(o.open_interest)))
        self.writer.count(1)


class LiquidationCallback(_Callback):
    async def __call__(self, liq: Liquidation, receipt: float) -> None:
        oid = None if liq.id is None else str(liq.id)
        ts = _seconds(liq.timestamp) or receipt
        row = (liq.symbol, ts, receipt, oid, liq.side, float(liq.price), float(liq.quantity), liq.status)
        self.writer.buffers[Channel.LIQUIDATIONS.value].append(row)
        self.writer.count(1)


class CandleCallback(_Callback):
    """Every candle update; ``closed`` marks the final one (cryptofeed 2.4.1's Bybit sends it as ``trades``)."""

    async def __call__(self, c: Candle, receipt: float) -> None:
        trades = None if c.trades is None or isinstance(c.trades, bool) else int(c.trades)
        closed = c.closed if isinstance(c.closed, bool) else (c.trades if isinstance(c.trades, bool) else None)
        ts = _seconds(c.timestamp) or receipt
        row = (c.symbol, ts, receipt, _ns(c.start), _ns(c.stop), str(c.interval), trades, float(c.open),
               float(c.high), float(c.low), float(c.close), float(c.volume), closed)
        self.writer.buffers[Channel.CANDLES.value].append(row)
        self.writer.count(1)
