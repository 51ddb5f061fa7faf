"""Kraken websocket API v1 (what cryptofeed 2.4.1 speaks), mounted under /kraken.

REST: /0/public/AssetPairs. Websocket: the root path; {"event": "subscribe", "pair": ["XBT/USD"],
"subscription": {"name": "book", "depth": 100}} is answered with a subscriptionStatus carrying a
channelID, then data arrays [channelID, payload, channelName, pair]: "trade", "ticker",
"book-<depth>" (a snapshot {"as", "bs"}, then updates {"a"|"b": [[price, volume, time]], "c": crc}),
"ohlc-1". Book checksums are computed as Kraken does (CRC32 of the top 10 asks then top 10 bids,
price and volume with the dot and leading zeros removed), over the book the client holds after the
frame, so cryptofeed with checksum_validation=True accepts them. A heartbeat goes out every second.
"""

from __future__ import annotations

import itertools
import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.schemas import Channel
from data_feed.sim.hub import (
    BookView,
    Delivery,
    ExchangeProtocol,
    Outbox,
    SymbolState,
    apply_change,
    copy_book,
    listing,
    now,
    open_socket,
)
from data_feed.sim.market import (
    BID,
    PRICE_SCALE,
    SIZE_SCALE,
    Candle,
    MarketEvent,
    Trade,
    price_str,
    size_str,
)

PRICE_EXTRA_ZEROS: Final = "000"  # Kraken prints 5 decimals for USD pairs: 65000.01000
CHECKSUM_LEVELS: Final = 10
VALID_DEPTHS: Final = (10, 25, 100, 500, 1000)
HEARTBEAT_SECONDS: Final = 1.0
CANDLE_SECONDS: Final = 60
NAMES: Final = {"BTC": "XBT", "DOGE": "XDG"}
CHANNELS: Final = ("trade", "ticker", "book", "ohlc")

Book = BookView


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def kraken_price(ticks: int) -> str:
    return price_str(ticks) + PRICE_EXTRA_ZEROS


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def checksum(book: Book) -> int:
    """Kraken's book checksum: CRC32 over top-10 asks (ascending) then top-10 bids (descending)."""
    bids, asks = book
    parts = [_digits(kraken_price(p)) + _digits(size_str(asks[p])) for p in sorted(asks)[:CHECKSUM_LEVELS]]
    top_bids = sorted(bids, reverse=True)[:CHECKSUM_LEVELS]
    parts += [_digits(kraken_price(p)) + _digits(size_str(bids[p])) for p in top_bids]
    return zlib.crc32("".join(parts).encode())


@dataclass(eq=False)
class KrakenConnection:
    outbox: Outbox
    channels: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (name, symbol) -> (id, name)
    next_heartbeat: float = 0.0


class KrakenProtocol(ExchangeProtocol):
    name = "KRAKEN"
    prefix = "/kraken"
    listed = listing((("BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD", "DOT-USD", "LTC-USD", "XRP-USD", "LINK-USD",
                       "ATOM-USD", "AVAX-USD", "UNI-USD", "DOGE-USD"), (Channel.TRADES, Channel.L2_BOOK, Channel.TICKER,
                                                                      Channel.CANDLES)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[KrakenConnection] = set()
        self.view: dict[str, Book] = {s: copy_book(st) for s, st in self.symbols.items()}
        self.candles: dict[str, Candle] = {}
        self._ids = itertools.count(1)
        self._last_top: dict[str, tuple[int, int, int, int]] = {}

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USD -> XBT/USD (the websocket name)."""
        base, quote = symbol.split("-", 1)
        return f"{NAMES.get(base, base)}/{NAMES.get(quote, quote)}"

    def routes(self) -> list[web.RouteDef]:
        return [web.get(f"{self.prefix}/0/public/AssetPairs", self.asset_pairs), web.get(self.prefix, self.websocket)]

    async def asset_pairs(self, request: web.Request) -> web.Response:
        """GET /0/public/AssetPairs -> {"error": [], "result": {"XBTUSD": {"altname": "XBTUSD",
        "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD", "pair_decimals": 5, "lot_decimals": 8}}}"""
        result = {st.exchange_symbol.replace("/", ""): {
            "altname": st.exchange_symbol.replace("/", ""), "wsname": st.exchange_symbol,
            "base": st.exchange_symbol.split("/")[0], "quote": st.exchange_symbol.split("/")[1],
            "pair_decimals": 5, "lot_decimals": 8, "status": "online"} for st in self.symbols.values()}
        return web.json_response({"error": [], "result": result})

    # -- websocket --------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = await open_socket(request)
        conn = KrakenConnection(Outbox(ws, self), next_heartbeat=now() + HEARTBEAT_SECONDS)
        conn.outbox.send(_dumps({"connectionID": id(conn), "event": "systemStatus", "status": "online",
                                 "version": "1.9.0"}))
        return await self.serve_connection(ws, conn, self.connections, lambda text: self._handle_request(conn, text))

    def _handle_request(self, conn: KrakenConnection, text: str) -> None:
        try:
            msg = json.loads(text)
            event, pairs, sub = msg["event"], list(msg.get("pair") or []), dict(msg.get("subscription") or {})
        except (ValueError, KeyError, TypeError):
            conn.outbox.send(_dumps({"event": "error", "errorMessage": "Malformed request", "status": "error"}))
            return
        if event == "ping":
            conn.outbox.send(_dumps({"event": "pong", "reqid": msg.get("reqid")}))
            return
        for pair in pairs:
            problem = self._problem(event, pair, sub)
            if problem:
                conn.outbox.send(_dumps({"errorMessage": problem, "event": "subscriptionStatus", "pair": pair,
                                         "status": "error", "subscription": sub}))
            elif event == "subscribe":
                self._subscribe(conn, self.by_exchange_symbol[pair], sub)
            else:
                conn.channels.pop((sub["name"], self.by_exchange_symbol[pair].symbol), None)
                conn.outbox.send(_dumps({"event": "subscriptionStatus", "pair": pair, "status": "unsubscribed",
                                         "subscription": sub}))

    def _problem(self, event: str, pair: str, sub: dict[str, Any]) -> str | None:
        if event not in ("subscribe", "unsubscribe"):
            return f"Unsupported event {event}"
        if pair not in self.by_exchange_symbol:
            return "Currency pair not supported"
        if sub.get("name") not in CHANNELS:
            return "Subscription name invalid"
        if sub["name"] == "book" and int(sub.get("depth", 10)) not in VALID_DEPTHS:
            return "Subscription depth not supported"
        if sub["name"] == "ohlc" and int(sub.get("interval", 1)) != 1:
            return "Subscription ohlc interval not supported"
        return None

    def _subscribe(self, conn: KrakenConnection, state: SymbolState, sub: dict[str, Any]) -> None:
        """{"channelID": 10001, "channelName": "book-100", "event": "subscriptionStatus", "pair": "XBT/USD",
        "status": "subscribed", "subscription": {"depth": 100, "name": "book"}}"""
        name = sub["name"]
        channel_name = {"book": f"book-{int(sub.get('depth', 10))}", "ohlc": "ohlc-1"}.get(name, name)
        channel_id = next(self._ids)
        conn.channels[(name, state.symbol)] = (channel_id, channel_name)
        conn.outbox.send(_dumps({"channelID": channel_id, "channelName": channel_name, "event": "subscriptionStatus",
                                 "pair": state.exchange_symbol, "status": "subscribed", "subscription": sub}))
        state.activate(now())
        if name == "book":
            self._send_snapshot(conn, state, int(sub.get("depth", 10)))

    def _send_snapshot(self, conn: KrakenConnection, state: SymbolState, depth: int) -> None:
        """[10001, {"as": [["65000.01000", "1.20000000", "1714564800.123456"]], "bs": [...]}, "book-100", "XBT/USD"]"""
        bids, asks = self.view[state.symbol]
        ts = f"{now():.6f}"
        payload = {"as": [[kraken_price(p), size_str(asks[p]), ts] for p in sorted(asks)[:depth]],
                   "bs": [[kraken_price(p), size_str(bids[p]), ts] for p in sorted(bids, reverse=True)[:depth]]}
        channel_id, channel_name = conn.channels[("book", state.symbol)]
        text = _dumps([channel_id, payload, channel_name, state.exchange_symbol])
        # The view is updated as events are published, so between ticks it is the market's book.
        conn.outbox.send(text, Delivery(state, book_through=state.market.update_id))

    # -- frames -----------------------------------------------------------------------------

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        subscribed = [(c, c.channels) for c in self.connections]
        for event in events:
            frames = self._book_frames(state, event)
            for conn, chans in subscribed:
                if ("book", state.symbol) in chans:
                    channel_id, channel_name = chans[("book", state.symbol)]
                    for i, payload in enumerate(frames):
                        last = i == len(frames) - 1
                        text = _dumps([channel_id, payload, channel_name, state.exchange_symbol])
                        conn.outbox.send(text, Delivery(state, book_through=event.last_update_id) if last else None)
            if event.trade is not None:
                self._on_trade(state, event.trade, subscribed)
            self._send_ticker(state, event, subscribed)
        self.sync_unwatched_book(state, any(("book", state.symbol) in ch for _, ch in subscribed))

    def _book_frames(self, state: SymbolState, event: MarketEvent) -> list[dict[str, Any]]:
        """One update per side that changed, each with the checksum of the book after it:
        {"a": [["65000.35000", "0.00000000", "1714564800.123456"]], "c": "3258975213"}"""
        frames = []
        view = self.view[state.symbol]
        ts = f"{event.timestamp:.6f}"
        for side_key, side in (("a", "ask"), ("b", BID)):
            changes = [c for c in event.changes if (c.side == BID) == (side == BID)]
            if not changes:
                continue
            for change in changes:
                apply_change(view, change)
            updates = [[kraken_price(c.price), size_str(c.size), ts] for c in changes]
            frames.append({side_key: updates, "c": str(checksum(view))})
        return frames

    def _on_trade(self, state: SymbolState, trade: Trade,
                  subscribed: list[tuple[KrakenConnection, dict[tuple[str, str], tuple[int, str]]]]) -> None:
        """[10002, [["65000.01000", "0.01200000", "1714564800.123456", "b", "m", ""]], "trade", "XBT/USD"]
        [10003, ["1714564800.123456", "1714564860.000000", "65000.01000", "65000.01000", "65000.01000",
         "65000.01000", "65000.01000", "0.01200000", 1], "ohlc-1", "XBT/USD"]"""
        row = [kraken_price(trade.price), size_str(trade.size), f"{trade.timestamp:.6f}",
               "b" if trade.taker_side == "buy" else "s", "m", ""]
        candle = self._candle(state, trade)
        delivery = Delivery(state, trades=(trade,))
        for conn, chans in subscribed:
            if ("trade", state.symbol) in chans:
                channel_id, name = chans[("trade", state.symbol)]
                conn.outbox.send(_dumps([channel_id, [row], name, state.exchange_symbol]), delivery)
            if ("ohlc", state.symbol) in chans:
                channel_id, name = chans[("ohlc", state.symbol)]
                conn.outbox.send(_dumps([channel_id, self._ohlc(candle, trade.timestamp), name,
                                         state.exchange_symbol]))

    def _candle(self, state: SymbolState, trade: Trade) -> Candle:
        start = int(trade.timestamp) // CANDLE_SECONDS * CANDLE_SECONDS
        c = self.candles[state.symbol] = Candle.fold(self.candles.get(state.symbol), start, trade)
        return c

    @staticmethod
    def _ohlc(c: Candle, ts: float) -> list[Any]:
        vwap = c.notional / c.volume / PRICE_SCALE if c.volume else c.close / PRICE_SCALE
        return [f"{ts:.6f}", f"{c.start + CANDLE_SECONDS:.6f}", kraken_price(c.open), kraken_price(c.high),
                kraken_price(c.low), kraken_price(c.close), f"{vwap:.5f}", size_str(c.volume), c.trades]

    def _send_ticker(self, state: SymbolState, event: MarketEvent,
                     subscribed: list[tuple[KrakenConnection, dict[tuple[str, str], tuple[int, str]]]]) -> None:
        """[10004, {"a": ["65000.01000", 1, "1.20000000"], "b": ["64999.99000", 0, "0.43100000"],
        "c": ["65000.01000", "0.01200000"], "v": [...], "p": [...], "t": [...], "l": [...], "h": [...],
        "o": [...]}, "ticker", "XBT/USD"]"""
        if self._last_top.get(state.symbol) == event.top:
            return
        self._last_top[state.symbol] = event.top
        bid, bid_size, ask, ask_size = event.top
        mid = kraken_price((bid + ask) // 2)
        payload = {"a": [kraken_price(ask), ask_size // SIZE_SCALE, size_str(ask_size)],
                   "b": [kraken_price(bid), bid_size // SIZE_SCALE, size_str(bid_size)],
                   "c": [mid, "0.00000000"], "v": ["0", "0"], "p": [mid, mid], "t": [0, 0], "l": [mid, mid],
                   "h": [mid, mid], "o": [mid, mid]}
        for conn, chans in subscribed:
            if ("ticker", state.symbol) in chans:
                channel_id, name = chans[("ticker", state.symbol)]
                conn.outbox.send(_dumps([channel_id, payload, name, state.exchange_symbol]))

    def on_tick(self, now_ts: float) -> None:
        """{"event": "heartbeat"} once a second on every connection."""
        for conn in self.connections:
            if now_ts >= conn.next_heartbeat:
                conn.next_heartbeat = now_ts + HEARTBEAT_SECONDS
                conn.outbox.send(_dumps({"event": "heartbeat"}))


