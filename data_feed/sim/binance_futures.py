"""Binance USD-M futures wire protocol, mounted under /binance_futures.

The spot protocol's shape (combined streams, aggTrade, bookTicker, depth diffs with update ids) plus
what a perpetual swap has: depth diffs carry ``pu`` (the previous diff's final id) and ``T``; funding
on ``<sym>@markPrice`` (every second), liquidations on ``<sym>@forceOrder``, candles on
``<sym>@kline_1m``, and open interest from REST ``/fapi/v1/openInterest``. REST paths are /fapi/v1/...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from data_feed.contracts.schemas import MARKET_CHANNELS
from data_feed.sim.binance import (
    BinanceConnection,
    BinanceProtocol,
    DepthDiff,
    _dumps,
    _error,
    price_str,
)
from data_feed.sim.hub import Outbox, SymbolState, epoch_ms, listing, now
from data_feed.sim.market import PRICE_SCALE, SIZE_SCALE, Candle, MarketEvent, Trade, size_str

FUNDING_INTERVAL_SECONDS: Final = 8 * 3600
FUNDING_RATE: Final = "0.00010000"
MARK_PRICE_INTERVAL_SECONDS: Final = 1.0
LIQUIDATION_EVERY_TRADES: Final = 25  # every 25th trade is also reported as a liquidation
OPEN_INTEREST_BASE: Final = 10_000.0
CANDLE_SECONDS: Final = {"1m": 60, "5m": 300, "1h": 3600}


@dataclass
class FuturesDepthDiff(DepthDiff):
    """Futures diffs also say where the previous one ended (``pu``) and the transaction time."""

    previous_u: int | None = None

    def take(self, state: SymbolState, ts: float) -> dict[str, Any] | None:
        """{"e": "depthUpdate", "E": 1714564800123, "T": 1714564800120, "s": "BTCUSDT", "U": 1000001,
        "u": 1000004, "pu": 1000000, "b": [["64999.99", "0.51000000"]], "a": []}"""
        first = self.first_id
        payload = super().take(state, ts)
        if payload is None or first is None:
            return payload
        payload["T"] = payload["E"]
        payload["pu"] = first - 1 if self.previous_u is None else self.previous_u
        self.previous_u = payload["u"]
        return payload


@dataclass(eq=False)
class FuturesConnection(BinanceConnection):
    funding: set[str] = field(default_factory=set)
    liquidations: set[str] = field(default_factory=set)
    candles: dict[str, str] = field(default_factory=dict)  # symbol -> interval
    next_mark: float = 0.0

    def watched(self) -> set[str]:
        return super().watched() | self.funding | self.liquidations | set(self.candles)


class BinanceFuturesProtocol(BinanceProtocol):
    name = "BINANCE_FUTURES"
    prefix = "/binance_futures"
    listed = listing((("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"), MARKET_CHANNELS))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_interest: dict[str, float] = dict.fromkeys(self.symbols, OPEN_INTEREST_BASE)
        self.candles: dict[tuple[str, str], Candle] = {}

    @staticmethod
    def exchange_symbol(symbol: str) -> str:
        """BTC-USDT-PERP -> BTCUSDT."""
        return "".join(symbol.split("-")[:2])

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{self.prefix}/fapi/v1/exchangeInfo", self.exchange_info),
            web.get(f"{self.prefix}/fapi/v1/depth", self.depth),
            web.get(f"{self.prefix}/fapi/v1/openInterest", self.open_interest_rest),
            web.get(f"{self.prefix}/stream", self.stream),
        ]

    # -- REST -------------------------------------------------------------------------------

    @staticmethod
    def _symbol_info(state: SymbolState) -> dict[str, Any]:
        """{"symbol": "BTCUSDT", "pair": "BTCUSDT", "contractType": "PERPETUAL", "status": "TRADING",
        "baseAsset": "BTC", "quoteAsset": "USDT", "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.01"}]}"""
        base, quote = state.symbol.split("-")[:2]
        return {
            "symbol": state.exchange_symbol, "pair": state.exchange_symbol, "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING", "baseAsset": base,
            "quoteAsset": quote, "marginAsset": quote, "pricePrecision": 2, "quantityPrecision": 3,
            "filters": [{"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
                        {"filterType": "LOT_SIZE", "stepSize": "0.001", "maxQty": "1000", "minQty": "0.001"}],
        }

    def _depth_body(self, state: SymbolState, limit: int) -> dict[str, Any]:
        """Spot's body plus event and transaction times: {"lastUpdateId": 1027024, "E": ..., "T": ..., ...}"""
        ms = epoch_ms(now())
        return {**super()._depth_body(state, limit), "E": ms, "T": ms}

    async def open_interest_rest(self, request: web.Request) -> web.Response:
        """GET /fapi/v1/openInterest?symbol=BTCUSDT -> {"openInterest": "10659.509", "symbol": "BTCUSDT",
        "time": 1589437530011}"""
        state = self.by_exchange_symbol.get(request.query.get("symbol", ""))
        if state is None:
            return _error(400, -1121, "Invalid symbol.")
        return web.json_response({"openInterest": f"{self.open_interest[state.symbol]:.3f}",
                                  "symbol": state.exchange_symbol, "time": epoch_ms(now())})

    # -- streams ----------------------------------------------------------------------------

    def new_connection(self, outbox: Outbox) -> BinanceConnection:
        return FuturesConnection(outbox)

    def depth_diff(self, stream: str, interval: float) -> DepthDiff:
        return FuturesDepthDiff(stream, interval, now() + interval)

    def extra_stream(self, conn: BinanceConnection, state: SymbolState, kind: str) -> bool:
        if not isinstance(conn, FuturesConnection):
            return False
        if kind in ("markPrice", "markPrice@1s"):
            conn.funding.add(state.symbol)
        elif kind == "forceOrder":
            conn.liquidations.add(state.symbol)
        elif kind.startswith("kline_") and kind[len("kline_"):] in CANDLE_SECONDS:
            conn.candles[state.symbol] = kind[len("kline_"):]
        else:
            return False
        return True

    @staticmethod
    def ticker_payload(state: SymbolState, event: MarketEvent) -> dict[str, Any]:
        """{"e": "bookTicker", "u": 400900217, "s": "BTCUSDT", "b": "25.35190000", "B": "31.21000000",
        "a": "25.36520000", "A": "40.66000000", "T": 1568014460891, "E": 1568014460893}"""
        ms = epoch_ms(event.timestamp)
        return {"e": "bookTicker", **BinanceProtocol.ticker_payload(state, event), "T": ms, "E": ms}

    def _futures_conns(self) -> list[FuturesConnection]:
        return [c for c in self.connections if isinstance(c, FuturesConnection)]

    def publish(self, state: SymbolState, events: list[MarketEvent]) -> None:
        super().publish(state, events)
        trades = [e for e in events if e.trade is not None]
        for event in trades:
            assert event.trade is not None
            signed = event.trade.size / SIZE_SCALE * (1 if event.trade.taker_side == "buy" else -1)
            self.open_interest[state.symbol] = max(self.open_interest[state.symbol] + signed, 0.0)
            self._send_candle(state, event.trade)
            if event.trade.trade_id % LIQUIDATION_EVERY_TRADES == 0:
                self._send_liquidation(state, event.trade)

    def _send_liquidation(self, state: SymbolState, trade: Trade) -> None:
        """{"stream": "btcusdt@forceOrder", "data": {"e": "forceOrder", "E": 1568014460893, "o": {"s": "BTCUSDT",
        "S": "SELL", "o": "LIMIT", "f": "IOC", "q": "0.014", "p": "9910", "ap": "9910", "X": "FILLED",
        "l": "0.014", "z": "0.014", "T": 1568014460893}}}"""
        conns = [c for c in self._futures_conns() if state.symbol in c.liquidations]
        if not conns:
            return
        ms = epoch_ms(trade.timestamp)
        qty, price = size_str(trade.size), price_str(trade.price)
        order = {"s": state.exchange_symbol, "S": trade.taker_side.upper(), "o": "LIMIT", "f": "IOC", "q": qty,
                 "p": price, "ap": price, "X": "FILLED", "l": qty, "z": qty, "T": ms}
        text = _dumps({"stream": f"{state.exchange_symbol.lower()}@forceOrder",
                       "data": {"e": "forceOrder", "E": ms, "o": order}})
        for conn in conns:
            conn.outbox.send(text)

    def _send_candle(self, state: SymbolState, trade: Trade) -> None:
        folded: dict[str, Candle] = {}  # each trade enters each interval's candle once, however many listen
        for conn in self._futures_conns():
            interval = conn.candles.get(state.symbol)
            if interval is None:
                continue
            if interval not in folded:
                folded[interval] = self._candle(state, interval, trade)
            conn.outbox.send(self._kline(state, interval, folded[interval], trade.timestamp, closed=False))

    def _candle(self, state: SymbolState, interval: str, trade: Trade) -> Candle:
        width = CANDLE_SECONDS[interval]
        start = math.floor(trade.timestamp / width) * width
        key = (state.symbol, interval)
        candle = self.candles[key] = Candle.fold(self.candles.get(key), start, trade)
        return candle

    @staticmethod
    def _kline(state: SymbolState, interval: str, c: Candle, ts: float, closed: bool) -> str:
        """{"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E": 1638747660000, "s": "BTCUSDT", "k": {
        "t": 1638747660000, "T": 1638747719999, "s": "BTCUSDT", "i": "1m", "f": 100, "L": 200, "o": "0.0010",
        "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000", "n": 100, "x": false, "q": "1.0000",
        "V": "500", "Q": "0.500", "B": "123456"}}}"""
        width_ms = CANDLE_SECONDS[interval] * 1000
        start_ms = int(c.start * 1000)
        quote = c.volume / SIZE_SCALE * c.close / PRICE_SCALE
        k = {"t": start_ms, "T": start_ms + width_ms - 1, "s": state.exchange_symbol, "i": interval,
             "f": c.first_id, "L": c.last_id, "o": price_str(c.open), "c": price_str(c.close),
             "h": price_str(c.high), "l": price_str(c.low), "v": size_str(c.volume), "n": c.trades, "x": closed,
             "q": f"{quote:.8f}", "V": "0", "Q": "0", "B": "0"}
        return _dumps({"stream": f"{state.exchange_symbol.lower()}@kline_{interval}",
                       "data": {"e": "kline", "E": epoch_ms(ts), "s": state.exchange_symbol, "k": k}})

    def on_tick(self, now_ts: float) -> None:
        super().on_tick(now_ts)
        for conn in self._futures_conns():
            if conn.funding and now_ts >= conn.next_mark:
                conn.next_mark = now_ts + MARK_PRICE_INTERVAL_SECONDS
                for symbol in conn.funding:
                    conn.outbox.send(self._mark_price(self.symbols[symbol], now_ts))

    @staticmethod
    def _mark_price(state: SymbolState, ts: float) -> str:
        """{"stream": "btcusdt@markPrice", "data": {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT",
        "p": "11794.15000000", "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167",
        "T": 1562306400000}}"""
        mark = f"{state.market.mid() / PRICE_SCALE:.8f}"
        next_funding = (math.floor(ts / FUNDING_INTERVAL_SECONDS) + 1) * FUNDING_INTERVAL_SECONDS
        data = {"e": "markPriceUpdate", "E": epoch_ms(ts), "s": state.exchange_symbol, "p": mark, "i": mark,
                "P": mark, "r": FUNDING_RATE, "T": next_funding * 1000}
        return _dumps({"stream": f"{state.exchange_symbol.lower()}@markPrice", "data": data})
