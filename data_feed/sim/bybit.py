"""Bybit v5 public wire protocol (spot and linear perpetuals), mounted under /bybit.

REST: /v5/market/instruments-info?category=linear|spot. Websockets: /v5/public/linear and
/v5/public/spot, subscribed with {"op": "subscribe", "args": ["publicTrade.BTCUSDT", ...]} and
answered {"success": true, "ret_msg": "", "conn_id": "...", "op": "subscribe"}. Topics:
publicTrade.<S>, orderbook.200.<S> (a snapshot on subscribe, then a delta per change; ``u`` counts
messages per topic), kline.1.<S>, and on linear only tickers.<S> (a snapshot, then deltas with what
changed: best bid/ask, and every second mark price, open interest and funding) and liquidation.<S>.
Spot and linear share symbol names (BTCUSDT); the category comes from the connection's path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.schemas import MARKET_CHANNELS, Channel
from data_feed.sim.hub import Delivery, ExchangeProtocol, Outbox, SymbolState, epoch_ms, listing, now, open_socket
from data_feed.sim.market import BID, PRICE_SCALE, SIZE_SCALE, Candle, MarketEvent, Trade, price_str, size_str

LINEAR: Final = "linear"
SPOT: Final = "spot"
PERP_SUFFIX: Final = "-PERP"
BOOK_DEPTH: Final = 200
TICKER_STATS_SECONDS: Final = 1.0
FUNDING_INTERVAL_SECONDS: Final = 8 * 3600
FUNDING_RATE: Final = "0.0001"
LIQUIDATION_EVERY_TRADES: Final = 25
OPEN_INTEREST_BASE: Final = 10_000.0
CANDLE_MS: Final = 60_000
LINEAR_TOPICS: Final = ("publicTrade", "orderbook", "kline", "tickers", "liquidation")
SPOT_TOPICS: Final = ("publicTrade", "orderbook", "kline")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def category(symbol: str) -> str:
    return LINEAR if symbol.endswith(PERP_SUFFIX) else SPOT


@dataclass(eq=False)
class BybitConnection:
    outbox: Outbox
    category: str
    topics: set[str] = field(default_factory=set)  # e.g. "orderbook.200.BTCUSDT"
    book_u: dict[str, int] = field(default_factory=dict)  # symbol -> last u sent on its orderbook topic
    next_stats: float = 0.0

    def wants(self, kind: str, state: SymbolState) -> bool:
        if kind == "orderbook":
            return f"orderbook.{BOOK_DEPTH}.{state.exchange_symbol}" in self.topics
        if kind == "kline":
            return f"kline.1.{state.exchange_symbol}" in self.topics
        return f"{kind}.{state.exchange_symbol}" in self.topics


class BybitProtocol(ExchangeProtocol):
    name = "BYBIT"
    prefix = "/bybit"
    listed = listing((("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"), MARKET_CHANNELS),
                     (("BTC-USDT", "ETH-USDT", "SOL-USDT"), (Channel.TRADES, Channel.L2_BOOK, Channel.CANDLES)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[BybitConnection] = set()
        self.by_category: dict[str, dict[str, SymbolState]] = {LINEAR: {}, SPOT: {}}
        for state in self.symbols.values():
            self.by_category[category(state.symbol)][state.exchange_symbol] = state
        self.open_interest = dict.fromkeys(self.symbols, OPEN_INTEREST_BASE)
        self.klines: dict[str, Candle] = {}
        self._last_top: dict[tuple[int, str], tuple[int, int, int, int]] = {}

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USDT-PERP -> BTCUSDT (linear), BTC-USDT -> BTCUSDT (spot)."""
        return "".join(symbol.split("-")[:2])

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{self.prefix}/v5/market/instruments-info", self.instruments),
            web.get(f"{self.prefix}/v5/public/{LINEAR}", self.websocket),
            web.get(f"{self.prefix}/v5/public/{SPOT}", self.websocket),
        ]

    # -- REST -------------------------------------------------------------------------------

    async def instruments(self, request: web.Request) -> web.Response:
        """GET /v5/market/instruments-info?category=linear&status=Trading&limit=1000

        {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [{"symbol": "BTCUSDT",
         "contractType": "LinearPerpetual", "status": "Trading", "baseCoin": "BTC", "quoteCoin": "USDT",
         "priceFilter": {"tickSize": "0.01"}, ...}]}}   (spot entries have no contractType)
        """
        cat = request.query.get("category", "")
        if cat not in self.by_category:
            return web.json_response({"retCode": 10001, "retMsg": "params error: category", "result": {}})
        listing = [self._instrument(state, cat) for state in self.by_category[cat].values()]
        return web.json_response({"retCode": 0, "retMsg": "OK", "result": {"category": cat, "list": listing},
                                  "time": epoch_ms(now())})

    @staticmethod
    def _instrument(state: SymbolState, cat: str) -> dict[str, Any]:
        base, quote = state.symbol.split("-")[:2]
        entry: dict[str, Any] = {"symbol": state.exchange_symbol, "status": "Trading", "baseCoin": base,
                                 "quoteCoin": quote, "priceFilter": {"tickSize": "0.01"},
                                 "lotSizeFilter": {"basePrecision": "0.00000001"}}
        if cat == LINEAR:
            entry |= {"contractType": "LinearPerpetual", "settleCoin": quote, "fundingInterval": 480}
        return entry

    # -- websocket --------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = await open_socket(request)
        conn = BybitConnection(Outbox(ws, self), request.path.rsplit("/", 1)[-1])
        return await self.serve_connection(ws, conn, self.connections, lambda text: self._handle_request(conn, text))

    def _handle_request(self, conn: BybitConnection, text: str) -> None:
        """{"op": "subscribe", "args": ["orderbook.200.BTCUSDT"]} -> {"success": true, "ret_msg": "", "op": ...}"""
        try:
            msg = json.loads(text)
            op, args = msg["op"], list(msg.get("args") or [])
        except (ValueError, KeyError, TypeError):
            conn.outbox.send(_dumps({"success": False, "ret_msg": "error:request not json", "op": ""}))
            return
        if op == "ping":
            conn.outbox.send(_dumps({"success": True, "ret_msg": "pong", "op": "ping"}))
            return
        bad = [a for a in args if self._topic_state(conn, a) is None]
        if op != "subscribe" or bad or not args:
            conn.outbox.send(_dumps({"success": False, "ret_msg": f"error:handler not found,topic:{bad or op}",
                                     "conn_id": str(id(conn)), "op": op}))
            return
        conn.outbox.send(_dumps({"success": True, "ret_msg": "", "conn_id": str(id(conn)), "op": "subscribe"}))
        for topic in args:
            self._subscribe(conn, topic)

    def _topic_state(self, conn: BybitConnection, topic: str) -> SymbolState | None:
        kind, _, rest = topic.partition(".")
        allowed = LINEAR_TOPICS if conn.category == LINEAR else SPOT_TOPICS
        if kind not in allowed:
            return None
        if kind == "orderbook":
            depth, _, rest = rest.partition(".")
            if depth != str(BOOK_DEPTH):
                return None
        if kind == "kline":
            interval, _, rest = rest.partition(".")
            if interval != "1":
                return None
        return self.by_category[conn.category].get(rest)

    def _subscribe(self, conn: BybitConnection, topic: str) -> None:
        state = self._topic_state(conn, topic)
        assert state is not None
        conn.topics.add(topic)
        t = now()
        state.activate(t)
        if topic.startswith("orderbook."):
            self._send_book_snapshot(conn, state, t)
        elif topic.startswith("tickers."):
            conn.outbox.send(self._ticker_frame(state, "snapshot", self._ticker_full(state, t), t))

    # -- frames -----------------------------------------------------------------------------

    def _send_book_snapshot(self, conn: BybitConnection, state: SymbolState, ts: float) -> None:
        """{"topic": "orderbook.200.BTCUSDT", "type": "snapshot", "ts": 1672304484978, "data": {"s": "BTCUSDT",
        "b": [["16493.50", "0.006"]], "a": [["16611.00", "0.029"]], "u": 18521288, "seq": 7961638724},
        "cts": 1672304484976}"""
        market = state.market
        conn.book_u[state.symbol] = 1
        data = {"s": state.exchange_symbol, "b": _levels(market.bids.top(BOOK_DEPTH)),
                "a": _levels(market.asks.top(BOOK_DEPTH)), "u": 1, "seq": market.update_id}
        text = _dumps({"topic": f"orderbook.{BOOK_DEPTH}.{state.exchange_symbol}", "type": "snapshot",
                       "ts": epoch_ms(ts), "data": data, "cts": epoch_ms(ts)})
        conn.outbox.send(text, Delivery(state, book_through=market.update_id))

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        conns = [c for c in self.connections if c.category == category(state.symbol)]
        book = [c for c in conns if c.wants("orderbook", state)]
        for event in events:
            for conn in book:
                self._send_book_delta(conn, state, event)
            if event.trade is not None:
                self._on_trade(state, event, event.trade, conns)
            for conn in conns:
                if conn.wants("tickers", state):
                    self._send_top(conn, state, event)
        self.sync_unwatched_book(state, bool(book))

    def _send_book_delta(self, conn: BybitConnection, state: SymbolState, event: MarketEvent) -> None:
        """{"topic": "orderbook.200.BTCUSDT", "type": "delta", "ts": ..., "data": {"s": "BTCUSDT",
        "b": [["16493.50", "0"]], "a": [], "u": 18521289, "seq": 7961638725}, "cts": ...}"""
        if not event.changes:
            return
        bids = [[price_str(c.price), size_str(c.size)] for c in event.changes if c.side == BID]
        asks = [[price_str(c.price), size_str(c.size)] for c in event.changes if c.side != BID]
        u = conn.book_u[state.symbol] = conn.book_u.get(state.symbol, 0) + 1
        ms = epoch_ms(event.timestamp)
        data = {"s": state.exchange_symbol, "b": bids, "a": asks, "u": u, "seq": event.last_update_id}
        text = _dumps({"topic": f"orderbook.{BOOK_DEPTH}.{state.exchange_symbol}", "type": "delta", "ts": ms,
                       "data": data, "cts": ms})
        conn.outbox.send(text, Delivery(state, book_through=event.last_update_id))

    def _on_trade(self, state: SymbolState, event: MarketEvent, trade: Trade, conns: list[BybitConnection]) -> None:
        signed = trade.size / SIZE_SCALE * (1 if trade.taker_side == "buy" else -1)
        self.open_interest[state.symbol] = max(self.open_interest[state.symbol] + signed, 0.0)
        kline = self._kline(state, trade)
        trade_text = _trade_frame(state, trade)
        delivery = Delivery(state, trades=(trade,))
        for conn in conns:
            if conn.wants("publicTrade", state):
                conn.outbox.send(trade_text, delivery)
            if conn.wants("kline", state):
                conn.outbox.send(_kline_frame(state, kline, trade.timestamp))
            if conn.wants("liquidation", state) and trade.trade_id % LIQUIDATION_EVERY_TRADES == 0:
                conn.outbox.send(_liquidation_frame(state, trade))

    def _kline(self, state: SymbolState, trade: Trade) -> Candle:
        start = int(trade.timestamp * 1000) // CANDLE_MS * CANDLE_MS
        k = self.klines[state.symbol] = Candle.fold(self.klines.get(state.symbol), start, trade)
        return k

    def _send_top(self, conn: BybitConnection, state: SymbolState, event: MarketEvent) -> None:
        key = (id(conn), state.symbol)
        if self._last_top.get(key) == event.top:
            return
        self._last_top[key] = event.top
        bid, bid_size, ask, ask_size = event.top
        delta = {"symbol": state.exchange_symbol, "bid1Price": price_str(bid), "bid1Size": size_str(bid_size),
                 "ask1Price": price_str(ask), "ask1Size": size_str(ask_size)}
        conn.outbox.send(self._ticker_frame(state, "delta", delta, event.timestamp))

    def _ticker_full(self, state: SymbolState, ts: float) -> dict[str, str]:
        bid, bid_size, ask, ask_size = state.market.top()
        return {**self._ticker_stats(state, ts), "bid1Price": price_str(bid), "bid1Size": size_str(bid_size),
                "ask1Price": price_str(ask), "ask1Size": size_str(ask_size)}

    def _ticker_stats(self, state: SymbolState, ts: float) -> dict[str, str]:
        mark = f"{state.market.mid() / PRICE_SCALE:.2f}"
        next_funding = (math.floor(ts / FUNDING_INTERVAL_SECONDS) + 1) * FUNDING_INTERVAL_SECONDS
        oi = self.open_interest[state.symbol]
        return {"symbol": state.exchange_symbol, "markPrice": mark, "indexPrice": mark,
                "openInterest": f"{oi:.3f}", "openInterestValue": f"{oi * float(mark):.2f}",
                "fundingRate": FUNDING_RATE, "nextFundingTime": str(next_funding * 1000)}

    @staticmethod
    def _ticker_frame(state: SymbolState, kind: str, data: dict[str, str], ts: float) -> str:
        """{"topic": "tickers.BTCUSDT", "type": "snapshot", "data": {"symbol": "BTCUSDT", "markPrice": "17217.33",
        "openInterest": "68744.761", "fundingRate": "-0.000212", "nextFundingTime": "1673280000000",
        "bid1Price": "17215.50", "bid1Size": "84.489", "ask1Price": "17216.00", "ask1Size": "83.020", ...},
        "cs": 24987956059, "ts": 1673272861686}   (deltas carry only what changed)"""
        return _dumps({"topic": f"tickers.{state.exchange_symbol}", "type": kind, "data": data,
                       "cs": state.market.update_id, "ts": epoch_ms(ts)})

    def on_tick(self, now_ts: float) -> None:
        for conn in self.connections:
            if conn.category != LINEAR or now_ts < conn.next_stats:
                continue
            conn.next_stats = now_ts + TICKER_STATS_SECONDS
            for state in self.by_category[LINEAR].values():
                if conn.wants("tickers", state):
                    conn.outbox.send(self._ticker_frame(state, "delta", self._ticker_stats(state, now_ts), now_ts))


def _levels(levels: list[tuple[int, int]]) -> list[list[str]]:
    return [[price_str(p), size_str(s)] for p, s in levels]


def _trade_frame(state: SymbolState, trade: Trade) -> str:
    """{"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868, "data": [{"T": 1672304486865,
    "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50", "L": "PlusTick", "i": "17", "BT": false}]}"""
    ms = epoch_ms(trade.timestamp)
    data = [{"T": ms, "s": state.exchange_symbol, "S": "Buy" if trade.taker_side == "buy" else "Sell",
             "v": size_str(trade.size), "p": price_str(trade.price), "L": "ZeroPlusTick", "i": str(trade.trade_id),
             "BT": False}]
    return _dumps({"topic": f"publicTrade.{state.exchange_symbol}", "type": "snapshot", "ts": ms, "data": data})


def _kline_frame(state: SymbolState, k: Candle, ts: float) -> str:
    """{"topic": "kline.1.BTCUSDT", "data": [{"start": 1671187800000, "end": 1671187859999, "interval": "1",
    "open": "16991", "close": "16980.5", "high": "16991", "low": "16980.5", "volume": "2.501",
    "turnover": "42493.2305", "confirm": false, "timestamp": 1671187815755}], "ts": 1671187815755,
    "type": "snapshot"}"""
    ms = epoch_ms(ts)
    turnover = k.volume / SIZE_SCALE * k.close / PRICE_SCALE
    data = [{"start": k.start, "end": k.start + CANDLE_MS - 1, "interval": "1", "open": price_str(k.open),
             "close": price_str(k.close), "high": price_str(k.high), "low": price_str(k.low),
             "volume": size_str(k.volume), "turnover": f"{turnover:.4f}", "confirm": False, "timestamp": ms}]
    return _dumps({"topic": f"kline.1.{state.exchange_symbol}", "data": data, "ts": ms, "type": "snapshot"})


def _liquidation_frame(state: SymbolState, trade: Trade) -> str:
    """{"topic": "liquidation.BTCUSDT", "type": "snapshot", "ts": 1703485237953, "data": {"updatedTime":
    1703485237953, "symbol": "BTCUSDT", "side": "Sell", "size": "0.003", "price": "43511.70"}}"""
    ms = epoch_ms(trade.timestamp)
    data = {"updatedTime": ms, "symbol": state.exchange_symbol, "side": "Buy" if trade.taker_side == "buy" else "Sell",
            "size": size_str(trade.size), "price": price_str(trade.price)}
    return _dumps({"topic": f"liquidation.{state.exchange_symbol}", "type": "snapshot", "ts": ms, "data": data})
