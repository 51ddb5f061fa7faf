"""Recordings the four captures do not cover, built in the test run instead of committed as files.

* `huobi_session`: a Huobi session (gzip-compressed binary frames, ``b64`` records, as Huobi sends them)
  generated from the simulator's own market model (`data_feed.sim.market.SymbolMarket`): its REST symbol
  list, the subscription frames cryptofeed 2.4.1 sends, trade and full-book frames, pings and pongs.
* `transform_session`: a recording with some records rewritten, e.g. a REST path renamed
  (`rename_rest_path`), as recordings made by another cryptofeed version differ.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from data_feed.contracts.capture import header_record
from data_feed.contracts.config import SimulatedMarketConfig
from data_feed.sim.market import ASK, BID, MarketEvent, SymbolMarket, price_str, size_str

HUOBI_WS = "wss://api.huobi.pro/ws"
HUOBI_SYMBOLS_URL = "https://api.huobi.pro/v1/common/symbols"
HUOBI_BOOK_LEVELS = 10
HUOBI_PING_SECONDS = 5.0
HUOBI_STEP_SECONDS = 0.05
RECORDED_AT = 1_700_000_000.0  # 2023-11-14: a past session, so receive times visibly stay the recording's
NETWORK_DELAY_SECONDS = 0.004


def write_session(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as out:
        for rec in records:
            out.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    return path


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
        for line in text:
            if line.strip():
                yield json.loads(line)


def transform_session(src: Path, dst: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Path:
    return write_session(dst, (edit(rec) for rec in read_records(src)))


def rename_rest_path(src: Path, dst: Path, old: str, new: str) -> Path:
    """``src`` with every recorded REST URL's ``old`` path segment renamed ``new`` (e.g. a plural made singular)."""

    def edit(rec: dict[str, Any]) -> dict[str, Any]:
        if rec["t"] == "http":
            rec = {**rec, "url": rec["url"].replace(f"/{old}", f"/{new}")}
        return rec

    return transform_session(src, dst, edit)


# -- Huobi ---------------------------------------------------------------------------------------


def _binary(conn: str, ts: float, payload: dict[str, Any] | str) -> dict[str, Any]:
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    frame = gzip.compress(text.encode(), mtime=0)
    return {"t": "recv", "conn": conn, "ts": ts, "b64": base64.b64encode(frame).decode()}


def _raw_numbers(template: str, **numbers: str) -> str:
    """JSON text with exact decimal numbers (Huobi sends numbers, not strings; cryptofeed reads them as Decimal)."""
    for name, value in numbers.items():
        template = template.replace(f'"@{name}"', value)
    return template


def _trade_frame(pair: str, event: MarketEvent) -> str:
    trade = event.trade
    assert trade is not None
    ms = int(trade.timestamp * 1000)
    data = {"id": trade.trade_id * 1000 + 7, "ts": ms, "tradeId": trade.trade_id, "amount": "@amount",
            "price": "@price", "direction": trade.taker_side}
    text = json.dumps({"ch": f"market.{pair}.trade.detail", "ts": ms + 2,
                       "tick": {"id": trade.trade_id, "ts": ms, "data": [data]}}, separators=(",", ":"))
    return _raw_numbers(text, amount=size_str(trade.size), price=price_str(trade.price))


def _book_frame(pair: str, market: SymbolMarket, ts: float) -> str:
    levels = {side: market.side(side).top(HUOBI_BOOK_LEVELS) for side in (BID, ASK)}
    rows = {side: ",".join(f"[{price_str(p)},{size_str(q)}]" for p, q in levels[side]) for side in levels}
    return (f'{{"ch":"market.{pair}.depth.step0","ts":{int(ts * 1000)},'
            f'"tick":{{"bids":[{rows[BID]}],"asks":[{rows[ASK]}],"ts":{int(ts * 1000)},"version":1}}}}')


def _huobi_rest(symbols: list[str], ts: float) -> dict[str, Any]:
    data = [{"base-currency": s.split("-")[0].lower(), "quote-currency": s.split("-")[1].lower(),
             "symbol": s.replace("-", "").lower(), "state": "online"} for s in symbols]
    data.append({"base-currency": "old", "quote-currency": "usdt", "symbol": "oldusdt", "state": "offline"})
    return {"t": "http", "conn": "HUOBI.http.sync", "ts": ts, "url": HUOBI_SYMBOLS_URL,
            "data": json.dumps({"status": "ok", "data": data})}


def huobi_records(seconds: float, symbols: list[str], seed: int) -> Iterator[dict[str, Any]]:
    conn, t0 = "HUOBI.ws.1", RECORDED_AT
    yield header_record("HUOBI", {"trades": symbols, "l2_book": symbols}, None, t0)
    yield _huobi_rest(symbols, t0 + 0.1)
    yield {"t": "connect", "conn": conn, "ts": t0 + 0.2, "addr": HUOBI_WS}
    pairs = {s: s.replace("-", "").lower() for s in symbols}
    subs = [f"market.{pairs[s]}.{ch}" for ch in ("depth.step0", "trade.detail") for s in symbols]
    for n, sub in enumerate(subs, 1):
        yield {"t": "send", "conn": conn, "ts": t0 + 0.21, "addr": HUOBI_WS, "data": json.dumps({"sub": sub, "id": n})}
    for n, sub in enumerate(subs, 1):
        yield _binary(conn, t0 + 0.25, {"id": str(n), "status": "ok", "subbed": sub, "ts": int((t0 + 0.25) * 1000)})
    yield from _huobi_market(conn, t0 + 0.3, seconds, pairs, seed)


def _huobi_market(conn: str, start: float, seconds: float, pairs: dict[str, str],
                  seed: int) -> Iterator[dict[str, Any]]:
    cfg = SimulatedMarketConfig(trades_per_second=25, book_updates_per_second=15, levels=30)
    markets = {s: SymbolMarket("HUOBI", s, cfg, seed) for s in pairs}
    frames = [(start, _book_frame(pairs[s], m, start)) for s, m in markets.items()]
    t = start
    while t < start + seconds:  # a trade frame per trade, a full book after each step that changed it
        t += HUOBI_STEP_SECONDS
        for symbol, market in markets.items():
            events = market.advance(HUOBI_STEP_SECONDS, t)
            frames.extend((e.timestamp, _trade_frame(pairs[symbol], e)) for e in events if e.trade)
            if events:
                frames.append((events[-1].timestamp, _book_frame(pairs[symbol], market, events[-1].timestamp)))
    frames.extend((ping, json.dumps({"ping": int(ping * 1000)}))
                  for ping in range_of(start + HUOBI_PING_SECONDS, start + seconds, HUOBI_PING_SECONDS))
    for ts, text in sorted(frames, key=lambda f: f[0]):
        yield _binary(conn, ts + NETWORK_DELAY_SECONDS, text)
        if text.startswith('{"ping"'):
            yield {"t": "send", "conn": conn, "ts": ts + 2 * NETWORK_DELAY_SECONDS, "addr": HUOBI_WS,
                   "data": json.dumps({"pong": json.loads(text)["ping"]})}


def range_of(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step) + 1) if start + i * step < stop]


def huobi_session(path: Path, seconds: float = 6.0, symbols: tuple[str, ...] = ("BTC-USDT", "ETH-USDT"),
                  seed: int = 42) -> Path:
    """A Huobi session of ``seconds`` of the simulator's market, every exchange frame gzip-compressed binary."""
    return write_session(path, huobi_records(seconds, list(symbols), seed))
