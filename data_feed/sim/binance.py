"""Binance spot wire protocol, mounted under /binance.

REST: /api/v3/exchangeInfo and /api/v3/depth. Websocket: the combined stream endpoint
/stream?streams=<sym>@aggTrade/<sym>@depth@100ms/<sym>@bookTicker, every frame wrapped as
{"stream": "<name>", "data": {...}}. Depth diffs follow Binance's update-id rules: every level
change has its own id, a diff covers ids U..u, and the REST snapshot's lastUpdateId is the id of
the last change it contains, so a client can sync exactly as Binance documents.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.config import Fault
from data_feed.contracts.schemas import Channel
from data_feed.sim.hub import (
    Delivery,
    ExchangeProtocol,
    Outbox,
    SymbolState,
    epoch_ms,
    listing,
    now,
    serve_socket,
)
from data_feed.sim.market import BID, PRICE_DECIMALS, MarketEvent, Trade, size_str
from data_feed.sim.market import price_str as _price2

DEPTH_INTERVALS: Final = {"100ms": 0.1, "1000ms": 1.0}
MAX_DEPTH_LIMIT: Final = 5000
HTTP_TOO_MANY_REQUESTS: Final = 429


def price_str(ticks: int) -> str:
    """Binance prints prices with 8 decimals: 6500001 -> '65000.01000000'."""
    return _price2(ticks) + "0" * (8 - PRICE_DECIMALS)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _error(status: int, code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=status)


@dataclass
class DepthDiff:
    """Level changes accumulated for one connection's <sym>@depth stream between two flushes."""

    stream: str  # as requested, e.g. "btcusdt@depth@100ms"
    interval: float
    next_flush: float
    first_id: int | None = None
    last_id: int = 0
    bids: dict[int, int] = field(default_factory=dict)
    asks: dict[int, int] = field(default_factory=dict)

    def add(self, event: MarketEvent) -> None:
        if not event.changes:
            return
        if self.first_id is None:
            self.first_id = event.first_update_id
        self.last_id = event.last_update_id
        for change in event.changes:
            (self.bids if change.side == BID else self.asks)[change.price] = change.size

    def take(self, state: SymbolState, ts: float) -> dict[str, Any] | None:
        """The depthUpdate payload for what accumulated, or None; resets the accumulator.

        {"e": "depthUpdate", "E": 1714564800123, "s": "BTCUSDT", "U": 1000001, "u": 1000004,
         "b": [["64999.99000000", "0.51000000"]], "a": [["65000.02000000", "0.00000000"]]}
        """
        if self.first_id is None:
            return None
        payload = {
            "e": "depthUpdate", "E": epoch_ms(ts), "s": state.exchange_symbol, "U": self.first_id, "u": self.last_id,
            "b": [[price_str(p), size_str(s)] for p, s in self.bids.items()],
            "a": [[price_str(p), size_str(s)] for p, s in self.asks.items()],
        }
        self.first_id, self.bids, self.asks = None, {}, {}
        return payload


@dataclass(eq=False)
class BinanceConnection:
    """One combined-stream websocket and the streams it asked for."""

    outbox: Outbox
    trades: set[str] = field(default_factory=set)  # normalized symbols
    tickers: set[str] = field(default_factory=set)
    depth: dict[str, DepthDiff] = field(default_factory=dict)

    def watched(self) -> set[str]:
        """Symbols with any stream on this connection."""
        return self.trades | self.tickers | set(self.depth)


class BinanceProtocol(ExchangeProtocol):
    name = "BINANCE"
    prefix = "/binance"
    listed = listing((("BTC-USDT", "ETH-USDT", "SOL-USDT"), (Channel.TRADES, Channel.L2_BOOK, Channel.TICKER)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[BinanceConnection] = set()
        self._last_top: dict[str, tuple[int, int, int, int]] = {}

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USDT -> BTCUSDT."""
        return symbol.replace("-", "")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{self.prefix}/api/v3/exchangeInfo", self.exchange_info),
            web.get(f"{self.prefix}/api/v3/depth", self.depth),
            web.get(f"{self.prefix}/stream", self.stream),
        ]

    # -- REST -------------------------------------------------------------------------------

    async def exchange_info(self, request: web.Request) -> web.Response:
        """GET /api/v3/exchangeInfo

        {"timezone": "UTC", "serverTime": 1714564800123, "rateLimits": [], "exchangeFilters": [],
         "symbols": [{"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT",
                      "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01000000", ...}, ...], ...}]}
        """
        symbols = [self._symbol_info(state) for state in self.symbols.values()]
        body = {"timezone": "UTC", "serverTime": epoch_ms(now()), "rateLimits": [], "exchangeFilters": [],
                "symbols": symbols}
        return web.json_response(body)

    @staticmethod
    def _symbol_info(state: SymbolState) -> dict[str, Any]:
        base, quote = state.symbol.split("-", 1)
        return {
            "symbol": state.exchange_symbol, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
            "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                 "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "minQty": "0.00000001", "maxQty": "9000.00000000",
                 "stepSize": "0.00000001"},
            ],
            "permissions": ["SPOT"],
        }

    async def depth(self, request: web.Request) -> web.Response:
        """GET /api/v3/depth?symbol=BTCUSDT&limit=100 — the current book; lastUpdateId = id of its last change.

        {"lastUpdateId": 1027024, "bids": [["64999.99000000", "0.43100000"], ...],
         "asks": [["65000.01000000", "1.20000000"], ...]}
        """
        state = self.by_exchange_symbol.get(request.query.get("symbol", ""))
        if state is None:
            return _error(400, -1121, "Invalid symbol.")
        fault = self.faults.snapshot_fault()
        if fault is Fault.SNAPSHOT_FAILURE:
            status = self.cfg.faults.snapshot_failure_status
            return _error(status, -1003 if status == HTTP_TOO_MANY_REQUESTS else -1001, "Simulated failure.")
        if fault is Fault.SNAPSHOT_DELAY:
            await asyncio.sleep(self.cfg.faults.snapshot_delay_seconds)
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _error(400, -1100, "Illegal characters found in parameter 'limit'.")
        limit = max(1, min(limit, MAX_DEPTH_LIMIT))
        return web.json_response(self._depth_body(state, limit))

    def _depth_body(self, state: SymbolState, limit: int) -> dict[str, Any]:
        market = state.market
        return {
            "lastUpdateId": market.update_id,
            "bids": [[price_str(p), size_str(s)] for p, s in market.bids.top(limit)],
            "asks": [[price_str(p), size_str(s)] for p, s in market.asks.top(limit)],
        }

    # -- websocket --------------------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Combined stream: /stream?streams=btcusdt@aggTrade/btcusdt@depth@100ms/btcusdt@bookTicker."""
        outbox_ws = web.WebSocketResponse(compress=False)
        conn = self.new_connection(Outbox(outbox_ws, self))
        problem = self._parse_streams(conn, request.query.get("streams", ""))
        if problem:
            return _error(400, -1100, problem)
        await outbox_ws.prepare(request)
        self._attach(conn)
        try:
            await serve_socket(outbox_ws, conn.outbox)
        finally:
            self.connections.discard(conn)
            self.outboxes.discard(conn.outbox)
        return outbox_ws

    def new_connection(self, outbox: Outbox) -> BinanceConnection:
        return BinanceConnection(outbox)

    def depth_diff(self, stream: str, interval: float) -> DepthDiff:
        return DepthDiff(stream, interval, now() + interval)

    def extra_stream(self, conn: BinanceConnection, state: SymbolState, kind: str) -> bool:
        """Streams beyond aggTrade, depth and bookTicker (futures adds its own); False: unsupported."""
        return False

    def _parse_streams(self, conn: BinanceConnection, streams: str) -> str | None:
        for name in filter(None, streams.split("/")):
            sym, _, kind = name.partition("@")
            state = self.by_exchange_symbol.get(sym.upper())
            if state is None or sym != sym.lower():
                return f"Invalid stream name {name!r}"
            if kind == "aggTrade":
                conn.trades.add(state.symbol)
            elif kind == "bookTicker":
                conn.tickers.add(state.symbol)
            elif kind in ("depth", "depth@100ms", "depth@1000ms"):
                interval = DEPTH_INTERVALS.get(kind.partition("@")[2] or "1000ms", 1.0)
                conn.depth[state.symbol] = self.depth_diff(name, interval)
            elif not self.extra_stream(conn, state, kind):
                return f"Unsupported stream {name!r}"
        return None if conn.watched() else "No streams requested"

    def _attach(self, conn: BinanceConnection) -> None:
        self.connections.add(conn)
        self.outboxes.add(conn.outbox)
        t = now()
        for symbol in conn.watched():
            self.symbols[symbol].activate(t)

    # -- frames -----------------------------------------------------------------------------

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        stream = state.exchange_symbol.lower()
        trade_conns = [c for c in self.connections if state.symbol in c.trades]
        ticker_conns = [c for c in self.connections if state.symbol in c.tickers]
        depth_diffs = [c.depth[state.symbol] for c in self.connections if state.symbol in c.depth]
        for event in events:
            if event.trade is not None and trade_conns:
                self._send_trade(state, stream, event, event.trade, trade_conns)
            if ticker_conns:
                self._send_ticker(state, stream, event, ticker_conns)
            for diff in depth_diffs:
                diff.add(event)
        self.sync_unwatched_book(state, bool(depth_diffs))

    @staticmethod
    def _send_trade(state: SymbolState, stream: str, event: MarketEvent, trade: Trade,
                    conns: list[BinanceConnection]) -> None:
        """aggTrade, one per trade; m = buyer is the maker, i.e. the taker sold.

        {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1714564800123, "s": "BTCUSDT", "a": 17,
         "p": "65000.01000000", "q": "0.01200000", "f": 17, "l": 17, "T": 1714564800122, "m": false, "M": true}}
        """
        ms = epoch_ms(event.timestamp)
        data = {"e": "aggTrade", "E": ms, "s": state.exchange_symbol, "a": trade.trade_id,
                "p": price_str(trade.price), "q": size_str(trade.size), "f": trade.trade_id, "l": trade.trade_id,
                "T": ms, "m": trade.taker_side == "sell", "M": True}
        text = _dumps({"stream": f"{stream}@aggTrade", "data": data})
        delivery = Delivery(state, trades=(trade,))
        for conn in conns:
            conn.outbox.send(text, delivery)

    def _send_ticker(self, state: SymbolState, stream: str, event: MarketEvent,
                     conns: list[BinanceConnection]) -> None:
        """bookTicker, whenever the best bid or ask (price or size) changes.

        {"stream": "btcusdt@bookTicker", "data": {"u": 1000123, "s": "BTCUSDT", "b": "64999.99000000",
         "B": "0.43100000", "a": "65000.01000000", "A": "1.20000000"}}
        """
        top = event.top
        if self._last_top.get(state.symbol) == top:
            return
        self._last_top[state.symbol] = top
        data = self.ticker_payload(state, event)
        text = _dumps({"stream": f"{stream}@bookTicker", "data": data})
        for conn in conns:
            conn.outbox.send(text)

    @staticmethod
    def ticker_payload(state: SymbolState, event: MarketEvent) -> dict[str, Any]:
        top = event.top
        return {"u": event.last_update_id, "s": state.exchange_symbol, "b": price_str(top[0]), "B": size_str(top[1]),
                "a": price_str(top[2]), "A": size_str(top[3])}

    def on_tick(self, now_ts: float) -> None:
        for conn in self.connections:
            for symbol, diff in conn.depth.items():
                if now_ts >= diff.next_flush:
                    diff.next_flush = max(diff.next_flush + diff.interval, now_ts)
                    self._send_depth(conn, self.symbols[symbol], diff, now_ts)

    def flush(self) -> None:
        t = now()
        for conn in self.connections:
            for symbol, diff in conn.depth.items():
                self._send_depth(conn, self.symbols[symbol], diff, t)

    @staticmethod
    def _send_depth(conn: BinanceConnection, state: SymbolState, diff: DepthDiff, ts: float) -> None:
        """{"stream": "btcusdt@depth@100ms", "data": <DepthDiff.take payload>}"""
        payload = diff.take(state, ts)
        if payload is None:
            return
        text = _dumps({"stream": diff.stream, "data": payload})
        conn.outbox.send(text, Delivery(state, book_through=payload["u"]))

