"""Coinbase Advanced Trade wire protocol, mounted under /coinbase.

REST: /api/v3/brokerage/products. Websocket: /coinbase, taking
{"type": "subscribe", "product_ids": [...], "channel": "level2" | "market_trades" | "ticker" | "heartbeats"}.
Every data frame is {"channel", "timestamp", "sequence_num", "events": [...]} with a per-connection
sequence_num starting at 0; shapes, key order and ordering follow frames recorded from the real exchange
in 2026 (no "client_id" key; snapshots, one frame per product, precede the "subscriptions" ack; trades
newest first; Go-style timestamps without trailing zeros). Level2 arrives on channel "l2_data" with
sides "bid" and "offer". One l2_data frame per market event, one ticker frame per trade, and the trades
of one clock tick in one market_trades frame.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.schemas import Channel
from data_feed.sim.hub import (
    Delivery,
    ExchangeProtocol,
    Outbox,
    SymbolState,
    listing,
    now,
    open_socket,
    rfc3339,
)
from data_feed.sim.market import BID, LevelChange, MarketEvent, Trade, price_str, size_str

DATA_CHANNELS: Final = ("level2", "market_trades", "ticker")
CHANNELS: Final = (*DATA_CHANNELS, "heartbeats")
HEARTBEAT_SECONDS: Final = 1.0
_STARTED_NS: Final = time.monotonic_ns()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


@dataclass
class TickerStats:
    """Rolling stats behind the ticker channel (since the simulator started)."""

    open: int
    last: int
    low: int
    high: int
    volume: int = 0

    def add(self, trade: Trade) -> None:
        self.last = trade.price
        self.low = min(self.low, trade.price)
        self.high = max(self.high, trade.price)
        self.volume += trade.size


@dataclass(eq=False)
class CoinbaseConnection:
    """One websocket: its subscriptions and per-connection counters."""

    outbox: Outbox
    subs: dict[str, set[str]] = field(default_factory=dict)  # channel -> product ids
    sequence_num: int = 0
    heartbeat_counter: int = 0
    next_heartbeat: float = 0.0

    def wants(self, channel: str, product_id: str) -> bool:
        return product_id in self.subs.get(channel, ())

    def frame(self, channel: str, events: str, ts: float) -> str:
        """Envelope around already-encoded events; consumes one sequence_num."""
        seq = self.sequence_num
        self.sequence_num += 1
        return f'{{"channel":"{channel}","timestamp":"{_stamp(ts)}","sequence_num":{seq},"events":{events}}}'


class CoinbaseProtocol(ExchangeProtocol):
    name = "COINBASE"
    prefix = "/coinbase"
    listed = listing((("BTC-USD", "ETH-USD", "SOL-USD"), (Channel.TRADES, Channel.L2_BOOK, Channel.TICKER)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[CoinbaseConnection] = set()
        self.tickers = {s: self._new_stats(st) for s, st in self.symbols.items()}

    @staticmethod
    def _new_stats(state: SymbolState) -> TickerStats:
        mid = round(state.market.mid())
        return TickerStats(mid, mid, mid, mid)

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USD -> BTC-USD (product ids are already normalized)."""
        return symbol

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{self.prefix}/api/v3/brokerage/products", self.products),
            web.get(self.prefix, self.websocket),
        ]

    # -- REST -------------------------------------------------------------------------------

    async def products(self, request: web.Request) -> web.Response:
        """GET /api/v3/brokerage/products

        {"products": [{"product_id": "BTC-USD", "price": "65000.01", "base_increment": "0.00000001",
                       "quote_increment": "0.01", "base_currency_id": "BTC", "quote_currency_id": "USD",
                       "status": "online", "product_type": "SPOT", ...}], "num_products": 1}
        """
        products = [self._product(state) for state in self.symbols.values()]
        return web.json_response({"products": products, "num_products": len(products)})

    def _product(self, state: SymbolState) -> dict[str, Any]:
        base, quote = state.symbol.split("-", 1)
        stats = self.tickers[state.symbol]
        return {
            "product_id": state.exchange_symbol, "price": price_str(stats.last),
            "price_percentage_change_24h": self._pct(stats), "volume_24h": size_str(stats.volume),
            "volume_percentage_change_24h": "0", "base_increment": "0.00000001", "quote_increment": "0.01",
            "quote_min_size": "1", "quote_max_size": "150000000", "base_min_size": "0.00000001",
            "base_max_size": "3400", "base_name": base, "quote_name": quote, "watched": False,
            "is_disabled": False, "new": False, "status": "online", "cancel_only": False, "limit_only": False,
            "post_only": False, "trading_disabled": False, "auction_mode": False, "product_type": "SPOT",
            "quote_currency_id": quote, "base_currency_id": base, "fcm_trading_session_details": None,
            "mid_market_price": "", "alias": "", "alias_to": [], "base_display_symbol": base,
            "quote_display_symbol": quote, "view_only": False, "price_increment": "0.01",
            "display_name": state.exchange_symbol, "product_venue": "CBE",
        }

    @staticmethod
    def _pct(stats: TickerStats) -> str:
        return f"{(stats.last - stats.open) * 100 / stats.open:.8f}"

    # -- websocket --------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = await open_socket(request)
        conn = CoinbaseConnection(Outbox(ws, self))
        return await self.serve_connection(ws, conn, self.connections, lambda text: self._handle_request(conn, text))

    def _handle_request(self, conn: CoinbaseConnection, text: str) -> None:
        """Validate one client message; errors answer like the exchange: {"type": "error", "message": ...}."""
        try:
            msg = json.loads(text)
        except ValueError:
            return self._send_error(conn, "failure to parse message: invalid JSON")
        if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe"):
            return self._send_error(conn, "failure to parse message: type must be subscribe or unsubscribe")
        channel, products = msg.get("channel"), msg.get("product_ids") or []
        if channel not in CHANNELS:
            return self._send_error(conn, f"Failed to subscribe: unknown channel {channel!r}")
        unknown = [p for p in products if p not in self.by_exchange_symbol]
        if unknown or (channel in DATA_CHANNELS and not products):
            return self._send_error(conn, f"Failed to subscribe: invalid product_ids {unknown or products}")
        if msg["type"] == "subscribe":
            self._subscribe(conn, channel, list(dict.fromkeys(products)))
        else:
            conn.subs[channel] = conn.subs.get(channel, set()) - set(products)
            self._send_subscriptions(conn)
        return None

    def _send_error(self, conn: CoinbaseConnection, message: str) -> None:
        """{"type": "error", "message": "Failed to subscribe: unknown channel 'heartbeat'"}"""
        conn.outbox.send(_dumps({"type": "error", "message": message}))

    def _subscribe(self, conn: CoinbaseConnection, channel: str, products: list[str]) -> None:
        fresh = [self.by_exchange_symbol[p] for p in products if not conn.wants(channel, p)]
        conn.subs.setdefault(channel, set()).update(products)
        t = now()
        for state in fresh:
            if channel == "level2":
                self._send_l2_snapshot(conn, state, t)
            elif channel == "market_trades":
                self._send_trades_snapshot(conn, state, t)
            elif channel == "ticker":
                self._send_ticker(conn, state, "snapshot", t)
            if channel in DATA_CHANNELS:
                state.activate(t)
        if channel == "heartbeats" and not conn.next_heartbeat:
            conn.next_heartbeat = t + HEARTBEAT_SECONDS
        self._send_subscriptions(conn)

    def _send_subscriptions(self, conn: CoinbaseConnection) -> None:
        """All current subscriptions; heartbeats are listed as ["heartbeats"] like the exchange does.

        {"channel": "subscriptions", ..., "events": [{"subscriptions": {"heartbeats": ["heartbeats"],
          "level2": ["BTC-USD", "ETH-USD"], "market_trades": ["BTC-USD", "ETH-USD"]}}]}
        """
        subs = {ch: ["heartbeats"] if ch == "heartbeats" else sorted(products)
                for ch, products in sorted(conn.subs.items()) if products or ch == "heartbeats"}
        conn.outbox.send(conn.frame("subscriptions", _dumps([{"subscriptions": subs}]), now()))

    # -- snapshots --------------------------------------------------------------------------

    def _send_l2_snapshot(self, conn: CoinbaseConnection, state: SymbolState, ts: float) -> None:
        """{"channel": "l2_data", ..., "events": [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
            {"side": "bid", "event_time": "2024-05-01T12:00:00.123456Z", "price_level": "64999.99",
             "new_quantity": "0.43100000"}, {"side": "offer", ...}]}]}
        """
        market = state.market
        levels = [LevelChange("bid", p, s) for p, s in market.bids.top(len(market.bids))]
        levels += [LevelChange("ask", p, s) for p, s in market.asks.top(len(market.asks))]
        stamp = rfc3339(ts, 6, trim=True)
        event = {"type": "snapshot", "product_id": state.exchange_symbol, "updates": [_l2(c, stamp) for c in levels]}
        conn.outbox.send(conn.frame("l2_data", _dumps([event]), ts), Delivery(state, book_through=market.update_id))

    def _send_trades_snapshot(self, conn: CoinbaseConnection, state: SymbolState, ts: float) -> None:
        """The product's most recent (up to 50) trades already sent, newest first; [] on a fresh market.

        {"channel": "market_trades", ..., "events": [{"type": "snapshot", "trades": [<trade>, ...]}]}
        """
        trades = [_trade(state, t) for t in reversed(state.recent_trades)]
        conn.outbox.send(conn.frame("market_trades", _dumps([{"type": "snapshot", "trades": trades}]), ts))

    def _send_ticker(self, conn: CoinbaseConnection, state: SymbolState, kind: str, ts: float,
                     top: tuple[int, int, int, int] | None = None) -> None:
        """{"channel": "ticker", ..., "events": [{"type": "snapshot", "tickers": [{"type": "ticker",
            "product_id": "BTC-USD", "price": "65000.01", "volume_24_h": "12.34000000", "low_24_h": "64900.00",
            "high_24_h": "65100.00", "low_52_w": "64900.00", "high_52_w": "65100.00",
            "price_percent_chg_24_h": "0.00001538", "best_bid": "64999.99", "best_ask": "65000.01",
            "best_bid_quantity": "0.43100000", "best_ask_quantity": "1.20000000"}]}]}
        """
        event = {"type": kind, "tickers": [self._ticker(state, top or state.market.top())]}
        conn.outbox.send(conn.frame("ticker", _dumps([event]), ts))

    def _ticker(self, state: SymbolState, top: tuple[int, int, int, int]) -> dict[str, str]:
        stats = self.tickers[state.symbol]
        bid, bid_size, ask, ask_size = top
        return {
            "type": "ticker", "product_id": state.exchange_symbol, "price": price_str(stats.last),
            "volume_24_h": size_str(stats.volume), "low_24_h": price_str(stats.low),
            "high_24_h": price_str(stats.high), "low_52_w": price_str(stats.low),
            "high_52_w": price_str(stats.high), "price_percent_chg_24_h": self._pct(stats),
            "best_bid": price_str(bid), "best_ask": price_str(ask),
            "best_bid_quantity": size_str(bid_size), "best_ask_quantity": size_str(ask_size),
        }

    # -- live frames ------------------------------------------------------------------------

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        """Per event: an l2_data update and, for a trade, a ticker update; the tick's trades in one frame."""
        pid, ts = state.exchange_symbol, now()
        l2_conns = [c for c in self.connections if c.wants("level2", pid)]
        ticker_conns = [c for c in self.connections if c.wants("ticker", pid)]
        for event in events:
            if l2_conns and event.changes:
                self._send_l2_update(state, event, l2_conns, ts)
            if event.trade is not None:
                self.tickers[state.symbol].add(event.trade)
                for conn in ticker_conns:
                    self._send_ticker(conn, state, "update", ts, event.top)
        trades = [e.trade for e in events if e.trade is not None]
        if trades:
            self._send_trades([c for c in self.connections if c.wants("market_trades", pid)], state, trades, ts)
        self.sync_unwatched_book(state, bool(l2_conns))

    @staticmethod
    def _send_l2_update(state: SymbolState, event: MarketEvent, conns: list[CoinbaseConnection], ts: float) -> None:
        """One update event per market event.

        {"channel": "l2_data", ..., "events": [{"type": "update", "product_id": "BTC-USD", "updates": [
            {"side": "offer", "event_time": "2024-05-01T12:00:00.123456Z", "price_level": "65000.01",
             "new_quantity": "0.00000000"}, {"side": "offer", ..., "price_level": "65000.35", ...}]}]}
        """
        stamp = rfc3339(event.timestamp, 6, trim=True)
        updates = [_l2(change, stamp) for change in event.changes]
        body = _dumps([{"type": "update", "product_id": state.exchange_symbol, "updates": updates}])
        delivery = Delivery(state, book_through=event.last_update_id)
        for conn in conns:
            conn.outbox.send(conn.frame("l2_data", body, ts), delivery)

    @staticmethod
    def _send_trades(conns: list[CoinbaseConnection], state: SymbolState, trades: list[Trade], ts: float) -> None:
        """Trades of one tick, newest first as the exchange orders them.

        {"channel": "market_trades", ..., "events": [{"type": "update", "trades": [<trade 18>, <trade 17>]}]}
        """
        if not conns:
            return
        body = _dumps([{"type": "update", "trades": [_trade(state, t) for t in reversed(trades)]}])
        delivery = Delivery(state, trades=trades)
        for conn in conns:
            conn.outbox.send(conn.frame("market_trades", body, ts), delivery)

    def on_tick(self, now_ts: float) -> None:
        """{"channel": "heartbeats", ..., "events": [{"current_time":
            "2024-05-01 12:00:00.123456789 +0000 UTC m=+91717.525857105", "heartbeat_counter": 3049}]}
        """
        for conn in self.connections:
            if conn.next_heartbeat and now_ts >= conn.next_heartbeat:
                conn.next_heartbeat = max(conn.next_heartbeat + HEARTBEAT_SECONDS, now_ts)
                conn.heartbeat_counter += 1
                event = {"current_time": _go_time(now_ts), "heartbeat_counter": conn.heartbeat_counter}
                conn.outbox.send(conn.frame("heartbeats", _dumps([event]), now_ts))


def _l2(change: LevelChange, stamp: str) -> dict[str, str]:
    return {"side": "bid" if change.side == BID else "offer", "event_time": stamp,
            "price_level": price_str(change.price), "new_quantity": size_str(change.size)}


def _trade(state: SymbolState, trade: Trade) -> dict[str, str]:
    """{"product_id": "BTC-USD", "trade_id": "17", "price": "65000.01", "size": "0.01200000",
        "time": "2024-05-01T12:00:00.123456Z", "side": "BUY"}  (side = the taker's side)
    """
    return {"product_id": state.exchange_symbol, "trade_id": str(trade.trade_id), "price": price_str(trade.price),
            "size": size_str(trade.size), "time": rfc3339(trade.timestamp, 6, trim=True),
            "side": trade.taker_side.upper()}


def _stamp(ts: float) -> str:
    return rfc3339(ts, 9, trim=True)


def _go_time(ts: float) -> str:
    """Go's time.Time.String(), as Coinbase prints it in heartbeats."""
    base = rfc3339(ts).replace("T", " ").removesuffix("Z")
    mono = (time.monotonic_ns() - _STARTED_NS) / 1e9
    return f"{base} +0000 UTC m=+{mono:.9f}"
