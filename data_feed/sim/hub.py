"""Plumbing shared by the protocol modules: per-symbol state, published books, outboxes, stats.

A protocol module (binance.py, coinbase.py) subclasses `ExchangeProtocol`. The server's clock
advances each started `SymbolState`'s market and hands the events to `ExchangeProtocol.publish`,
which renders frames into the `Outbox` of each subscribed connection. Each outbox has a writer
task; bookkeeping (`Delivery`) attached to a frame is applied the first time any connection
actually writes it, so the stats and the published book reflect only what went over a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from aiohttp import web

from data_feed.contracts.config import ExchangeConfig, Fault
from data_feed.sim.faults import MALFORMED_FRAME, FaultInjector
from data_feed.sim.market import BID, PRICE_SCALE, SIZE_SCALE, LevelChange, MarketEvent, SymbolMarket, Trade

START_GRACE_SECONDS: Final = 0.25  # lets a client finish subscribing before the first event
MAX_OUTBOX_FRAMES: Final = 200_000  # a slower consumer is disconnected, as real exchanges do
RECENT_TRADES: Final = 50


def rfc3339(ts: float, digits: int = 9, trim: bool = False) -> str:
    """Epoch seconds as RFC 3339 UTC with `digits` fractional digits: '2024-05-01T12:00:00.123456789Z'.

    trim=True drops trailing zeros like Go's RFC3339Nano ('...:38.50436Z', '...:48Z'), as Coinbase does.
    """
    ns = round(ts * 1e9)
    base = datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{ns % 10**9:09d}"[:digits]
    if trim:
        frac = frac.rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def epoch_ms(ts: float) -> int:
    return int(ts * 1000)


class PublishedBook:
    """The book as reflected by frames already written: the market's changes replayed up to an update id."""

    def __init__(self, market: SymbolMarket) -> None:
        self.bids = {p: s for p, s in market.bids.top(len(market.bids))}
        self.asks = {p: s for p, s in market.asks.top(len(market.asks))}
        self.update_id = market.update_id
        self._pending: deque[tuple[int, LevelChange]] = deque()

    def record(self, events: Iterable[MarketEvent]) -> None:
        for event in events:
            for i, change in enumerate(event.changes):
                self._pending.append((event.first_update_id + i, change))

    def advance_to(self, update_id: int) -> int:
        """Apply pending changes with id <= update_id; returns how many were applied."""
        applied = 0
        while self._pending and self._pending[0][0] <= update_id:
            _, change = self._pending.popleft()
            book = self.bids if change.side == "bid" else self.asks
            if change.size:
                book[change.price] = change.size
            else:
                book.pop(change.price, None)
            applied += 1
        self.update_id = max(self.update_id, update_id)
        return applied

    def top(self, depth: int) -> dict[str, list[list[float]]]:
        bids = sorted(self.bids.items(), reverse=True)[:depth]
        asks = sorted(self.asks.items())[:depth]
        return {"bids": _floats(bids), "asks": _floats(asks)}


def _floats(levels: Sequence[tuple[int, int]]) -> list[list[float]]:
    return [[p / PRICE_SCALE, s / SIZE_SCALE] for p, s in levels]


class SymbolState:
    """Everything the simulator keeps for one (exchange, symbol)."""

    def __init__(self, exchange: str, symbol: str, exchange_symbol: str, market: SymbolMarket) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.exchange_symbol = exchange_symbol
        self.market = market
        self.published = PublishedBook(market)
        self.started = False
        self.resume_at = 0.0  # wall time from which the market clock runs
        self.trades_sent = 0
        self.last_trade_id = 0
        self.book_updates_sent = 0
        self.recent_trades: deque[Trade] = deque(maxlen=RECENT_TRADES)
        self.dropped_trade_ids: list[int] = []  # generated but never written (no subscriber, or a socket closed)
        self.queued_trade_ids: set[int] = set()  # of the current tick: handed to at least one outbox

    def activate(self, now: float) -> None:
        """Lazy start: the market clock starts (after a short grace) when a client first subscribes."""
        if not self.started:
            self.started = True
            self.resume_at = now + START_GRACE_SECONDS

    def advance(self, now: float) -> list[MarketEvent]:
        if not self.started or now <= self.resume_at:
            return []
        events = self.market.advance(min(now - self.resume_at, 1.0), now)
        self.resume_at = now
        self.published.record(events)
        return events

    def account_unqueued(self, events: Sequence[MarketEvent]) -> None:
        """After a tick's publish: trades no connection was given (nobody subscribed) were never sent."""
        for event in events:
            if event.trade is not None and event.trade.trade_id not in self.queued_trade_ids:
                self.dropped_trade_ids.append(event.trade.trade_id)
        self.queued_trade_ids.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "trades_sent": self.trades_sent,
            "last_trade_id": self.last_trade_id,
            "book_updates_sent": self.book_updates_sent,
            "dropped_trade_ids": list(self.dropped_trade_ids),
        }


class Delivery:
    """What a frame carries, credited to the symbol's stats when the frame is first written."""

    __slots__ = ("book_through", "done", "queued", "state", "trades")

    def __init__(self, state: SymbolState, trades: Sequence[Trade] = (), book_through: int | None = None) -> None:
        self.state = state
        self.trades = trades
        self.book_through = book_through
        self.done = False
        self.queued = False

    def queue(self) -> None:
        """Handed to an outbox: from here on it is either written (apply) or dropped with its socket."""
        if not self.queued:
            self.queued = True
            self.state.queued_trade_ids.update(t.trade_id for t in self.trades)

    def drop(self) -> None:
        """The frame will never be written: its trades are lost, its book changes still happened."""
        if self.done:
            return
        self.state.dropped_trade_ids.extend(t.trade_id for t in self.trades)
        trades, self.trades = self.trades, ()
        self.apply()
        self.trades = trades

    def apply(self) -> None:
        if self.done:
            return
        self.done = True
        state = self.state
        if self.trades:
            state.trades_sent += len(self.trades)
            state.last_trade_id = max(state.last_trade_id, self.trades[-1].trade_id)
            state.recent_trades.extend(self.trades)
        if self.book_through is not None:
            state.book_updates_sent += state.published.advance_to(self.book_through)


class Outbox:
    """Frames queued for one websocket, written in order by one writer task."""

    def __init__(self, ws: web.WebSocketResponse, protocol: ExchangeProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self._queue: deque[tuple[str, Delivery | None]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False
        self.frames_written = 0  # to this socket: what its client can have received

    def send(self, text: str, delivery: Delivery | None = None) -> None:
        if self.closed:
            return
        if delivery is not None:
            delivery.queue()
        self._queue.append((text, delivery))
        self._idle.clear()
        self._wake.set()
        if len(self._queue) > MAX_OUTBOX_FRAMES:
            self.closed = True
            asyncio.get_running_loop().create_task(self.ws.close(message=b"slow consumer"))

    async def run(self) -> None:
        """Writer loop; returns when the socket fails or the outbox is closed."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake.clear()
                await self._write_all()
                self._idle.set()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.closed = True
            for _, delivery in self._queue:
                if delivery is not None:
                    delivery.drop()
            self._queue.clear()
            self._idle.set()

    async def _write_all(self) -> None:
        while self._queue and not self.ws.closed:
            text, delivery = self._queue.popleft()
            book_only = delivery is not None and delivery.book_through is not None and not delivery.trades
            fault = self.protocol.faults.next_fault(self.protocol.frames_sent, book_only)
            if fault is not None and await self._inject(fault, text, delivery):
                continue
            await self.ws.send_str(text)
            self.protocol.frames_sent += 1
            self.frames_written += 1
            if delivery is not None:
                delivery.apply()

    async def drained(self) -> None:
        await self._idle.wait()

    async def _inject(self, fault: Fault, text: str, delivery: Delivery | None) -> bool:
        """Inject ``fault`` before ``text``; True when ``text`` must not be sent."""
        if fault is Fault.DISCONNECT:
            self._queue.appendleft((text, delivery))
            self.closed = True
            await self.ws.close(message=b"simulated disconnect")
            return True
        if fault is Fault.SEQUENCE_GAP:
            if delivery is not None:
                delivery.drop()
            return True
        if fault is Fault.STALL:
            await asyncio.sleep(self.protocol.cfg.faults.stall_seconds)
        else:
            await self.ws.send_str(MALFORMED_FRAME if fault is Fault.MALFORMED else text[: len(text) // 2])
            self.protocol.frames_sent += 1
            self.frames_written += 1
        return False


async def open_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    return ws


async def serve_socket(ws: web.WebSocketResponse, outbox: Outbox, on_text: Any = None) -> None:
    """Run the outbox writer while reading client messages until the socket closes."""
    writer = asyncio.get_running_loop().create_task(outbox.run())
    try:
        async for msg in ws:
            if msg.type == web.WSMsgType.TEXT and on_text is not None:
                await on_text(msg.data)
    finally:
        outbox.closed = True
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


Listing = Mapping[str, tuple[str, ...]]  # lake channel -> the symbols a simulated exchange serves it for


def listing(*groups: tuple[tuple[str, ...], tuple[str, ...]]) -> Listing:
    """A protocol's ``listed`` from (symbols, channels) groups, e.g. spot and perpetual markets."""
    out: dict[str, tuple[str, ...]] = {}
    for symbols, channels in groups:
        for channel in channels:
            out[channel] = (*out.get(channel, ()), *symbols)
    return out


class UnlistedSymbol(ValueError):
    """A configured symbol the simulated exchange does not list (it would be an invented market)."""


class ExchangeProtocol(ABC):
    """Base of a protocol module: symbols, connections and stats of one simulated exchange."""

    name: str  # config key, e.g. "BINANCE"
    prefix: str  # URL prefix, e.g. "/binance"
    listed: ClassVar[Listing]  # what it serves: channel -> symbols (config validation checks against it)

    def __init__(self, cfg: ExchangeConfig, seed: int) -> None:
        unlisted = [s for s in cfg.symbols() if not any(s in symbols for symbols in self.listed.values())]
        if unlisted:
            raise UnlistedSymbol(f"exchange={self.name}: the simulator lists no market {', '.join(unlisted)}")
        self.cfg = cfg
        self.frames_sent = 0
        self.faults = FaultInjector(self.name, cfg.faults)
        self.outboxes: set[Outbox] = set()
        self.symbols: dict[str, SymbolState] = {}
        for symbol in cfg.symbols():
            market = SymbolMarket(self.name, symbol, cfg.market, seed)
            self.symbols[symbol] = SymbolState(self.name, symbol, self.exchange_symbol(symbol), market)
        self.by_exchange_symbol = {s.exchange_symbol: s for s in self.symbols.values()}

    @staticmethod
    @abstractmethod
    def exchange_symbol(symbol: str) -> str:
        """Normalized symbol (BTC-USDT) -> the exchange's own spelling."""

    @abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """REST and websocket routes, already under `prefix`."""

    @abstractmethod
    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        """Render one clock tick's events for `state` into subscribers' outboxes."""

    def on_tick(self, now: float) -> None:  # noqa: B027 - optional hook
        """Time-driven frames (depth intervals, heartbeats)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Emit anything accumulated but not yet due (used by pause)."""

    async def drained(self) -> None:
        await asyncio.gather(*(o.drained() for o in list(self.outboxes)))

    def stats(self) -> dict[str, Any]:
        open_boxes = [o for o in self.outboxes if not o.closed]
        return {"frames_sent": self.frames_sent, "faults": self.faults.stats(),
                "frames_sent_open": sum(o.frames_written for o in open_boxes), "connections": len(open_boxes),
                "symbols": {s: st.stats() for s, st in self.symbols.items()}}

    async def serve_connection(self, ws: web.WebSocketResponse, conn: Any, connections: set[Any],
                               on_text: Callable[[str], None]) -> web.WebSocketResponse:
        """Keep `conn` registered while its socket is open; each client text frame goes to `on_text`."""
        connections.add(conn)
        self.outboxes.add(conn.outbox)

        async def handle(text: str) -> None:
            on_text(text)

        try:
            await serve_socket(ws, conn.outbox, handle)
        finally:
            connections.discard(conn)
            self.outboxes.discard(conn.outbox)
        return ws

    def sync_unwatched_book(self, state: SymbolState, watched: bool) -> None:
        """Without book subscribers nothing reflects the book: keep the published book current."""
        if not watched:
            state.published.advance_to(state.market.update_id)


def now() -> float:
    return time.time()


BookView = tuple[dict[int, int], dict[int, int]]  # bids, asks: price ticks -> size units


def copy_book(state: SymbolState) -> BookView:
    """A checksum-keeping exchange's own view of a symbol's book, starting from the market's."""
    market = state.market
    return dict(market.bids.top(len(market.bids))), dict(market.asks.top(len(market.asks)))


def apply_change(book: BookView, change: LevelChange) -> None:
    side = book[0] if change.side == BID else book[1]
    if change.size:
        side[change.price] = change.size
    else:
        side.pop(change.price, None)
