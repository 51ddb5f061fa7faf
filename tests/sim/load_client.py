"""Subprocess helper: raw websocket clients reading Binance and Coinbase frames as fast as they come.

Checks protocol continuity on the fly (Binance depth U/u, Coinbase sequence_num, trade ids) and, on
SIGTERM, writes counts and violations as JSON to --out. Trust comes from SSL_CERT_FILE set by the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
from collections import defaultdict
from typing import Any

import websockets


class Tally:
    def __init__(self) -> None:
        self.frames: dict[str, int] = defaultdict(int)
        self.last_u: dict[str, int] = {}
        self.trade_ids: dict[str, list[int]] = defaultdict(list)
        self.problems: list[str] = []
        self.seq = -1

    def binance(self, raw: str | bytes) -> None:
        self.frames["BINANCE"] += 1
        msg = json.loads(raw)
        data = msg["data"]
        if data.get("e") == "depthUpdate":
            prev = self.last_u.get(data["s"])
            if prev is not None and data["U"] != prev + 1:
                self.problems.append(f"binance {data['s']} gap {prev} -> {data['U']}")
            self.last_u[data["s"]] = data["u"]
        elif data.get("e") == "aggTrade":
            self.trade_ids["BINANCE " + data["s"]].append(data["a"])

    def coinbase(self, raw: str | bytes) -> None:
        self.frames["COINBASE"] += 1
        msg = json.loads(raw)
        if msg.get("sequence_num") != self.seq + 1:
            self.problems.append(f"coinbase sequence {self.seq} -> {msg.get('sequence_num')}")
        self.seq = msg.get("sequence_num", self.seq)
        if msg.get("channel") == "market_trades":
            for event in msg["events"]:
                if event["type"] == "update":
                    for t in reversed(event["trades"]):
                        self.trade_ids["COINBASE " + t["product_id"]].append(int(t["trade_id"]))


async def binance(ws_base: str, symbols: list[str], tally: Tally) -> None:
    streams = "/".join(f"{s.replace('-', '').lower()}@{k}" for s in symbols
                       for k in ("aggTrade", "depth@100ms", "bookTicker"))
    async with websockets.connect(f"{ws_base}/binance/stream?streams={streams}", ssl=ssl.create_default_context(),
                                  max_size=None, compression=None) as ws:
        async for raw in ws:
            tally.binance(raw)


async def coinbase(ws_base: str, symbols: list[str], tally: Tally) -> None:
    async with websockets.connect(f"{ws_base}/coinbase", ssl=ssl.create_default_context(), max_size=None,
                                  compression=None) as ws:
        for channel in ("level2", "market_trades", "ticker"):
            await ws.send(json.dumps({"type": "subscribe", "product_ids": symbols, "channel": channel}))
        async for raw in ws:
            tally.coinbase(raw)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ws-base", required=True)
    parser.add_argument("--binance", required=True)
    parser.add_argument("--coinbase", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    tally = Tally()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(binance(args.ws_base, args.binance.split(","), tally)),
             asyncio.create_task(coinbase(args.ws_base, args.coinbase.split(","), tally))]
    await stop.wait()
    errors = [repr(t.exception()) for t in tasks if t.done() and t.exception()]
    for t in tasks:
        t.cancel()
    out: dict[str, Any] = {"frames": tally.frames, "problems": tally.problems[:20], "errors": errors,
                           "trade_ids": tally.trade_ids}
    with open(args.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    asyncio.run(main())
