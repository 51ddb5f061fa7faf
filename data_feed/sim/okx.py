"""OKX v5 public wire protocol (spot and perpetual swaps), mounted under /okx.

REST: /api/v5/public/instruments?instType=SPOT|SWAP|FUTURES|OPTION and the liquidation history
/api/v5/public/liquidation-orders. Websocket: /ws/v5/public, subscribed with {"op": "subscribe",
"args": [{"channel": "books", "instId": "BTC-USDT"}]} and answered {"event": "subscribe", "arg": {...}}
per argument (a repeated subscription is acknowledged, not re-served). Channels: books (a snapshot,
then an update per change, each with OKX's checksum: CRC32 of the top 25 bids and asks interleaved
as "price:size", as a signed 32-bit integer), trades, tickers, candle1m, and for swaps funding-rate and
open-interest (every second).
"""

from __future__ import annotations

import json
import math
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.schemas import MARKET_CHANNELS, Channel
from data_feed.sim.hub import (
    BookView,
    Delivery,
    ExchangeProtocol,
    Outbox,
    SymbolState,
    apply_change,
    copy_book,
    epoch_ms,
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

PERP_SUFFIX: Final = "-PERP"
SWAP_SUFFIX: Final = "-SWAP"
CHECKSUM_LEVELS: Final = 25
SNAPSHOT_LEVELS: Final = 400
STATS_SECONDS: Final = 1.0
FUNDING_INTERVAL_SECONDS: Final = 8 * 3600
FUNDING_RATE: Final = "0.0001"
OPEN_INTEREST_BASE: Final = 10_000.0
LIQUIDATION_EVERY_TRADES: Final = 25
LIQUIDATION_HISTORY: Final = 100
SEED_LIQUIDATIONS: Final = 3  # the history endpoint is never empty on a real exchange
CANDLE_MS: Final = 60_000
CHANNELS: Final = ("books", "trades", "tickers", "candle1m", "funding-rate", "open-interest")
SWAP_ONLY: Final = ("funding-rate", "open-interest")

Book = BookView


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def checksum(book: Book) -> int:
    """OKX's book checksum: "bid1px:bid1sz:ask1px:ask1sz:bid2px:..." over 25 levels, CRC32 as signed int32."""
    bids = sorted(book[0].items(), reverse=True)[:CHECKSUM_LEVELS]
    asks = sorted(book[1].items())[:CHECKSUM_LEVELS]
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        for levels in (bids, asks):
            if i < len(levels):
                parts += [price_str(levels[i][0]), size_str(levels[i][1])]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - 2**32 if crc >= 2**31 else crc


@dataclass(eq=False)
class OkxConnection:
    outbox: Outbox
    subs: set[tuple[str, str]] = field(default_factory=set)  # (channel, instId)
    next_stats: float = 0.0

    def wants(self, channel: str, state: SymbolState) -> bool:
        return (channel, state.exchange_symbol) in self.subs


class OkxProtocol(ExchangeProtocol):
    name = "OKX"
    prefix = "/okx"
    listed = listing((("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"), MARKET_CHANNELS),
                     (("BTC-USDT", "ETH-USDT", "SOL-USDT"),
                      (Channel.TRADES, Channel.L2_BOOK, Channel.TICKER, Channel.CANDLES)))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[OkxConnection] = set()
        self.view: dict[str, Book] = {s: copy_book(st) for s, st in self.symbols.items()}
        self.open_interest = dict.fromkeys(self.symbols, OPEN_INTEREST_BASE)
        self.candles: dict[str, Candle] = {}
        self.liquidations: dict[str, deque[dict[str, str]]] = {}
        for state in self.symbols.values():
            if state.symbol.endswith(PERP_SUFFIX):
                self.liquidations[state.symbol] = deque(_seed_liquidations(state), maxlen=LIQUIDATION_HISTORY)

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USDT -> BTC-USDT (spot), BTC-USDT-PERP -> BTC-USDT-SWAP."""
        return symbol[: -len(PERP_SUFFIX)] + SWAP_SUFFIX if symbol.endswith(PERP_SUFFIX) else symbol

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{self.prefix}/api/v5/public/instruments", self.instruments),
            web.get(f"{self.prefix}/api/v5/public/liquidation-orders", self.liquidation_orders),
            web.get(f"{self.prefix}/ws/v5/public", self.websocket),
        ]

    # -- REST -------------------------------------------------------------------------------

    async def instruments(self, request: web.Request) -> web.Response:
        """GET /api/v5/public/instruments?instType=SWAP -> {"code": "0", "msg": "", "data": [{"instType": "SWAP",
        "instId": "BTC-USDT-SWAP", "uly": "BTC-USDT", "baseCcy": "", "quoteCcy": "", "settleCcy": "USDT",
        "ctVal": "0.01", "tickSz": "0.01", "lotSz": "1", "state": "live"}]}"""
        kind = request.query.get("instType", "")
        data = [self._instrument(st) for st in self.symbols.values() if _inst_type(st) == kind]
        return web.json_response({"code": "0", "msg": "", "data": data})

    @staticmethod
    def _instrument(state: SymbolState) -> dict[str, str]:
        base, quote = state.symbol.split("-")[:2]
        swap = _inst_type(state) == "SWAP"
        return {"instType": _inst_type(state), "instId": state.exchange_symbol,
                "uly": f"{base}-{quote}" if swap else "", "baseCcy": "" if swap else base,
                "quoteCcy": "" if swap else quote, "settleCcy": quote if swap else "",
                "ctVal": "1" if swap else "", "tickSz": "0.01", "lotSz": "0.00000001", "state": "live"}

    async def liquidation_orders(self, request: web.Request) -> web.Response:
        """GET /api/v5/public/liquidation-orders?instType=SWAP&limit=100&state=filled&uly=BTC-USDT ->
        {"code": "0", "msg": "", "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "uly": "BTC-USDT",
        "details": [{"side": "sell", "posSide": "long", "bkPx": "65000.01", "sz": "0.012", "bkLoss": "0",
        "ccy": "", "ts": "1714564800123"}]}]}  (newest first; unfilled orders: none)"""
        state = self.by_exchange_symbol.get(request.query.get("uly", "") + SWAP_SUFFIX)
        if state is None or request.query.get("instType") != "SWAP":
            return web.json_response({"code": "51000", "msg": "Parameter uly error", "data": []})
        details = list(reversed(self.liquidations[state.symbol])) if request.query.get("state") == "filled" else []
        return web.json_response({"code": "0", "msg": "", "data": [
            {"instType": "SWAP", "instId": state.exchange_symbol, "uly": request.query["uly"], "details": details}]})

    # -- websocket --------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = await open_socket(request)
        conn = OkxConnection(Outbox(ws, self))
        return await self.serve_connection(ws, conn, self.connections, lambda text: self._handle_request(conn, text))

    def _handle_request(self, conn: OkxConnection, text: str) -> None:
        """{"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}"""
        if text == "ping":
            conn.outbox.send("pong")
            return
        try:
            msg = json.loads(text)
            op, args = msg["op"], [(a["channel"], a["instId"]) for a in msg["args"]]
        except (ValueError, KeyError, TypeError):
            conn.outbox.send(_dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}"}))
            return
        for channel, inst_id in args:
            state = self.by_exchange_symbol.get(inst_id)
            if op == "unsubscribe":
                conn.subs.discard((channel, inst_id))
                conn.outbox.send(_dumps({"event": "unsubscribe", "arg": {"channel": channel, "instId": inst_id}}))
                continue
            if op != "subscribe" or channel not in CHANNELS or state is None or (
                    channel in SWAP_ONLY and _inst_type(state) != "SWAP"):
                conn.outbox.send(_dumps({"event": "error", "code": "60018",
                                         "msg": f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist"}))
                continue
            conn.outbox.send(_dumps({"event": "subscribe", "arg": {"channel": channel, "instId": inst_id},
                                     "connId": f"{id(conn):x}"[-8:]}))
            if (channel, inst_id) not in conn.subs:
                conn.subs.add((channel, inst_id))
                state.activate(now())
                if channel == "books":
                    self._send_snapshot(conn, state)

    def _send_snapshot(self, conn: OkxConnection, state: SymbolState) -> None:
        """{"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "snapshot", "data": [{"asks":
        [["65000.01", "1.20000000", "0", "1"]], "bids": [...], "ts": "1714564800123", "checksum": -855196043,
        "prevSeqId": -1, "seqId": 123456}]}"""
        view = self.view[state.symbol]
        data = {"asks": [_level(p, view[1][p]) for p in sorted(view[1])[:SNAPSHOT_LEVELS]],
                "bids": [_level(p, view[0][p]) for p in sorted(view[0], reverse=True)[:SNAPSHOT_LEVELS]],
                "ts": str(epoch_ms(now())), "checksum": checksum(view), "prevSeqId": -1,
                "seqId": state.market.update_id}
        text = _dumps({"arg": {"channel": "books", "instId": state.exchange_symbol}, "action": "snapshot",
                       "data": [data]})
        conn.outbox.send(text, Delivery(state, book_through=state.market.update_id))

    # -- frames -----------------------------------------------------------------------------

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        conns = list(self.connections)
        for event in events:
            update = self._book_update(state, event)
            if update is not None:
                delivery = Delivery(state, book_through=event.last_update_id)
                for conn in conns:
                    if conn.wants("books", state):
                        conn.outbox.send(update, delivery)
            if event.trade is not None:
                self._on_trade(state, event, event.trade, conns)
        self.sync_unwatched_book(state, any(c.wants("books", state) for c in conns))

    def _book_update(self, state: SymbolState, event: MarketEvent) -> str | None:
        """{"arg": {...}, "action": "update", "data": [{"asks": [["65000.35", "0", "0", "0"]], "bids": [],
        "ts": "1714564800123", "checksum": 1234567, "prevSeqId": 123456, "seqId": 123458}]}"""
        if not event.changes:
            return None
        view = self.view[state.symbol]
        for change in event.changes:
            apply_change(view, change)
        data = {"asks": [_level(c.price, c.size) for c in event.changes if c.side != BID],
                "bids": [_level(c.price, c.size) for c in event.changes if c.side == BID],
                "ts": str(epoch_ms(event.timestamp)), "checksum": checksum(view),
                "prevSeqId": event.first_update_id - 1, "seqId": event.last_update_id}
        return _dumps({"arg": {"channel": "books", "instId": state.exchange_symbol}, "action": "update",
                       "data": [data]})

    def _on_trade(self, state: SymbolState, event: MarketEvent, trade: Trade, conns: list[OkxConnection]) -> None:
        """{"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{"instId": "BTC-USDT", "tradeId": "17",
        "px": "65000.01", "sz": "0.01200000", "side": "buy", "ts": "1714564800123"}]}"""
        if state.symbol in self.open_interest:
            signed = trade.size / SIZE_SCALE * (1 if trade.taker_side == "buy" else -1)
            self.open_interest[state.symbol] = max(self.open_interest[state.symbol] + signed, 0.0)
        if state.symbol in self.liquidations and trade.trade_id % LIQUIDATION_EVERY_TRADES == 0:
            self.liquidations[state.symbol].append(_liquidation(trade))
        ms = str(epoch_ms(trade.timestamp))
        trade_text = _dumps({"arg": {"channel": "trades", "instId": state.exchange_symbol}, "data": [
            {"instId": state.exchange_symbol, "tradeId": str(trade.trade_id), "px": price_str(trade.price),
             "sz": size_str(trade.size), "side": trade.taker_side, "ts": ms}]})
        candle = self._candle(state, trade)
        delivery = Delivery(state, trades=(trade,))
        for conn in conns:
            if conn.wants("trades", state):
                conn.outbox.send(trade_text, delivery)
            if conn.wants("candle1m", state):
                conn.outbox.send(_candle_frame(state, candle))
            if conn.wants("tickers", state):
                conn.outbox.send(_ticker_frame(state, event))

    def _candle(self, state: SymbolState, trade: Trade) -> Candle:
        start = int(trade.timestamp * 1000) // CANDLE_MS * CANDLE_MS
        c = self.candles[state.symbol] = Candle.fold(self.candles.get(state.symbol), start, trade)
        return c

    def on_tick(self, now_ts: float) -> None:
        for conn in self.connections:
            if now_ts < conn.next_stats:
                continue
            conn.next_stats = now_ts + STATS_SECONDS
            for state in self.symbols.values():
                if conn.wants("funding-rate", state):
                    conn.outbox.send(_funding_frame(state, now_ts))
                if conn.wants("open-interest", state):
                    conn.outbox.send(self._open_interest_frame(state, now_ts))

    def _open_interest_frame(self, state: SymbolState, ts: float) -> str:
        """{"arg": {"channel": "open-interest", "instId": "BTC-USDT-SWAP"}, "data": [{"instType": "SWAP",
        "instId": "BTC-USDT-SWAP", "oi": "5000", "oiCcy": "555.55", "ts": "1597026383085"}]}"""
        oi = self.open_interest[state.symbol]
        return _dumps({"arg": {"channel": "open-interest", "instId": state.exchange_symbol}, "data": [
            {"instType": "SWAP", "instId": state.exchange_symbol, "oi": f"{oi:.3f}", "oiCcy": f"{oi:.3f}",
             "ts": str(epoch_ms(ts))}]})


def _inst_type(state: SymbolState) -> str:
    return "SWAP" if state.symbol.endswith(PERP_SUFFIX) else "SPOT"


def _level(price: int, size: int) -> list[str]:
    return [price_str(price), size_str(size), "0", "1" if size else "0"]


def _liquidation(trade: Trade) -> dict[str, str]:
    return {"side": trade.taker_side, "posSide": "long" if trade.taker_side == "sell" else "short",
            "bkPx": price_str(trade.price), "sz": size_str(trade.size), "bkLoss": "0", "ccy": "",
            "ts": str(epoch_ms(trade.timestamp))}


def _seed_liquidations(state: SymbolState) -> list[dict[str, str]]:
    bid, bid_size, _, _ = state.market.top()
    t = now()
    return [{"side": "sell", "posSide": "long", "bkPx": price_str(bid), "sz": size_str(bid_size), "bkLoss": "0",
             "ccy": "", "ts": str(epoch_ms(t - 60 * (SEED_LIQUIDATIONS - i)))} for i in range(SEED_LIQUIDATIONS)]


def _candle_frame(state: SymbolState, c: Candle) -> str:
    """{"arg": {"channel": "candle1m", "instId": "BTC-USDT"}, "data": [["1597026383085", "8533.02", "8553.74",
    "8527.17", "8548.26", "45247", "529.5858061", "529.5858061", "0"]]}  (ts, o, h, l, c, vol, ..., confirm)"""
    quote = c.volume / SIZE_SCALE * c.close / PRICE_SCALE
    row = [str(c.start), price_str(c.open), price_str(c.high), price_str(c.low), price_str(c.close),
           size_str(c.volume), size_str(c.volume), f"{quote:.8f}", "0"]
    return _dumps({"arg": {"channel": "candle1m", "instId": state.exchange_symbol}, "data": [row]})


def _ticker_frame(state: SymbolState, event: MarketEvent) -> str:
    """{"arg": {"channel": "tickers", "instId": "BTC-USDT"}, "data": [{"instType": "SPOT", "instId": "BTC-USDT",
    "last": "65000.01", "lastSz": "0.012", "askPx": "65000.01", "askSz": "1.2", "bidPx": "64999.99",
    "bidSz": "0.431", "open24h": ..., "high24h": ..., "low24h": ..., "vol24h": ..., "ts": "1714564800123"}]}"""
    bid, bid_size, ask, ask_size = event.top
    last = event.trade.price if event.trade is not None else ask
    data = {"instType": _inst_type(state), "instId": state.exchange_symbol, "last": price_str(last),
            "lastSz": size_str(event.trade.size) if event.trade is not None else "0", "askPx": price_str(ask),
            "askSz": size_str(ask_size), "bidPx": price_str(bid), "bidSz": size_str(bid_size),
            "open24h": price_str(last), "high24h": price_str(last), "low24h": price_str(last), "volCcy24h": "0",
            "vol24h": "0", "ts": str(epoch_ms(event.timestamp)), "sodUtc0": price_str(last),
            "sodUtc8": price_str(last)}
    return _dumps({"arg": {"channel": "tickers", "instId": state.exchange_symbol}, "data": [data]})


def _funding_frame(state: SymbolState, ts: float) -> str:
    """{"arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"}, "data": [{"instType": "SWAP",
    "instId": "BTC-USDT-SWAP", "fundingRate": "0.0001", "nextFundingRate": "0.0001",
    "fundingTime": "1714579200000", "nextFundingTime": "1714608000000"}]}"""
    funding_time = (math.floor(ts / FUNDING_INTERVAL_SECONDS) + 1) * FUNDING_INTERVAL_SECONDS * 1000
    return _dumps({"arg": {"channel": "funding-rate", "instId": state.exchange_symbol}, "data": [
        {"instType": "SWAP", "instId": state.exchange_symbol, "fundingRate": FUNDING_RATE,
         "nextFundingRate": FUNDING_RATE, "fundingTime": str(funding_time),
         "nextFundingTime": str(funding_time + FUNDING_INTERVAL_SECONDS * 1000)}]})
