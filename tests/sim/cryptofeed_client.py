"""Subprocess helper: run cryptofeed 2.4.1's real Binance and Coinbase feeds against a running simulator.

The parent sets SSL_CERT_FILE / REQUESTS_CA_BUNDLE before launching this, so aiohttp, websockets and
requests trust the simulator's self-signed certificate. Runs until SIGTERM/SIGINT, then writes what it
observed as JSON to --out.

Feeds (labels):
  binance        cryptofeed Binance, endpoints overridden only
  coinbase       cryptofeed Coinbase, endpoints overridden only
  coinbase_fixed same, plus the workaround for 2.4.1's snapshot parser that drops "offer" levels
A raw websocket probe also subscribes to Coinbase ticker/heartbeats/"heartbeat" (unsupported by cryptofeed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from collections import defaultdict
from decimal import Decimal
from typing import Any

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import Binance, Coinbase
from cryptofeed.types import OrderBook, Ticker, Trade

COINBASE_KEYS = {"key_id": "sim", "key_secret": "sim"}  # 2.4.1 signs every subscribe, even public ones


def feed_classes(base_url: str, ws_base: str) -> dict[str, Any]:
    binance = type("Binance", (Binance,), {
        "websocket_endpoints": [WebsocketEndpoint(f"{ws_base}/binance")],
        "rest_endpoints": [RestEndpoint(f"{base_url}/binance", routes=Binance.rest_endpoints[0].routes)],
    })
    coinbase = type("Coinbase", (Coinbase,), {
        "websocket_endpoints": [WebsocketEndpoint(f"{ws_base}/coinbase", options={"compression": None})],
        "rest_endpoints": [RestEndpoint(f"{base_url}/coinbase/api/v3/brokerage",
                                        routes=Coinbase.rest_endpoints[0].routes)],
    })

    async def snapshot_with_offers(self: Any, msg: dict[str, Any], timestamp: float) -> None:
        for update in msg["updates"]:
            if update["side"] == "offer":
                update["side"] = "ask"
        await Coinbase._pair_level2_snapshot(self, msg, timestamp)

    fixed = type("Coinbase", (coinbase,), {"_pair_level2_snapshot": snapshot_with_offers})
    return {"binance": binance, "coinbase": coinbase, "coinbase_fixed": fixed}


class Recorder:
    """Callbacks for one feed, remembering what they saw."""

    def __init__(self) -> None:
        self.trades: dict[str, list[int]] = defaultdict(list)
        self.trade_prices: dict[str, list[str]] = defaultdict(list)
        self.snapshots: dict[str, int] = defaultdict(int)
        self.deltas: dict[str, int] = defaultdict(int)
        self.tickers: dict[str, int] = defaultdict(int)
        self.snapshot_levels: dict[str, list[int]] = {}
        self.crossed = 0
        self.books: dict[str, OrderBook] = {}

    async def trade(self, t: Trade, receipt: float) -> None:
        self.trades[t.symbol].append(int(t.id))
        self.trade_prices[t.symbol].append(str(t.price))

    async def ticker(self, t: Ticker, receipt: float) -> None:
        self.tickers[t.symbol] += 1
        if t.bid >= t.ask:
            self.crossed += 1

    async def book(self, b: OrderBook, receipt: float) -> None:
        self.books[b.symbol] = b
        if b.delta is None:
            self.snapshots[b.symbol] += 1
            self.snapshot_levels[b.symbol] = [len(b.book.bids), len(b.book.asks)]
        else:
            self.deltas[b.symbol] += 1
        bids, asks = b.book.bids, b.book.asks
        if len(bids) and len(asks) and bids.index(0)[0] >= asks.index(0)[0]:
            self.crossed += 1

    def result(self, depth: int) -> dict[str, Any]:
        return {
            "trades": self.trades, "snapshots": self.snapshots, "deltas": self.deltas, "tickers": self.tickers,
            "crossed": self.crossed, "trade_prices": self.trade_prices,
            "books": {sym: _top(b, depth) for sym, b in self.books.items()},
            "snapshot_levels": self.snapshot_levels,
            "levels": {sym: [len(b.book.bids), len(b.book.asks)] for sym, b in self.books.items()},
        }


def _top(book: OrderBook, depth: int) -> dict[str, list[list[float]]]:
    data = book.book.to_dict()
    bids = sorted(data["bid"].items(), reverse=True)[:depth]
    asks = sorted(data["ask"].items())[:depth]
    return {"bids": [[float(p), float(s)] for p, s in bids], "asks": [[float(p), float(s)] for p, s in asks]}


async def probe_coinbase(ws_base: str, symbols: list[str], seen: dict[str, Any]) -> None:
    """Raw client for what cryptofeed 2.4.1 cannot subscribe to: ticker and heartbeats."""
    import websockets

    ctx = ssl.create_default_context()
    async with websockets.connect(f"{ws_base}/coinbase", ssl=ctx, compression=None) as ws:
        for channel in ("ticker", "heartbeats", "heartbeat"):
            await ws.send(json.dumps({"type": "subscribe", "product_ids": symbols, "channel": channel}))
        async for raw in ws:
            msg = json.loads(raw)
            seen["frames"].append(msg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--ws-base", required=True)
    parser.add_argument("--binance", default="BTC-USDT,ETH-USDT")
    parser.add_argument("--coinbase", default="BTC-USD,ETH-USD")
    parser.add_argument("--out", required=True)
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()

    classes = feed_classes(args.base_url, args.ws_base)
    symbols = {"binance": args.binance.split(","), "coinbase": args.coinbase.split(",")}
    recorders = {label: Recorder() for label in classes}
    fh = FeedHandler(config={"log": {"disabled": True}})
    for label, cls in classes.items():
        rec = recorders[label]
        channels = [TRADES, L2_BOOK, TICKER] if label == "binance" else [TRADES, L2_BOOK]  # no Coinbase TICKER
        callbacks = {TRADES: rec.trade, L2_BOOK: rec.book, TICKER: rec.ticker}
        config = {"log": {"disabled": True}, "coinbase": COINBASE_KEYS}
        fh.add_feed(cls(symbols=symbols[label.split("_")[0]], channels=channels, callbacks=callbacks, config=config))

    probe: dict[str, Any] = {"frames": [], "error": None}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def run_probe() -> None:
        try:
            await probe_coinbase(args.ws_base, symbols["coinbase"], probe)
        except Exception as exc:  # reported, not raised
            probe["error"] = repr(exc)

    tasks = [loop.create_task(run_probe())]
    fh.run(start_loop=True, install_signal_handlers=True)
    del tasks

    out = {label: rec.result(args.depth) for label, rec in recorders.items()}
    out["probe"] = probe
    with open(args.out, "w") as fh_out:
        json.dump(out, fh_out, default=lambda o: str(o) if isinstance(o, Decimal) else o)
    sys.exit(0)


if __name__ == "__main__":
    main()
