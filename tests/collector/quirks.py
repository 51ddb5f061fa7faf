"""What the exchange quirk-class tests share: cryptofeed's real exchange class built through the module's
``feed_class``/``feed_config`` with its symbols set by hand (no REST call for them), a connection object
that records what the feed writes to it, a recorder of gaps rows, the records the callbacks got (books
copied at callback time, since cryptofeed hands out one mutable book), and a real local HTTP server for
REST book snapshots (aiohttp, the library cryptofeed itself fetches with)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from types import ModuleType
from typing import Any

from aiohttp import web
from cryptofeed.symbols import Symbols
from cryptofeed.types import OrderBook

from data_feed.collector.exchanges.base import Endpoints

UNREACHABLE_WS = "wss://127.0.0.1:1"  # never reached: frames are fed to message_handler directly


class Conn:
    """What the quirk classes use of a cryptofeed connection: its id, subscription, address, ``write``."""

    def __init__(self, uuid: str, subscription: dict[str, list[str]], address: str = UNREACHABLE_WS) -> None:
        self.uuid = uuid
        self.subscription = subscription
        self.address = address
        self.is_open = True
        self.sent: list[str] = []

    async def write(self, data: str) -> None:
        self.sent.append(data)

    @property
    def written(self) -> list[Any]:
        """What was sent, decoded from JSON."""
        return [json.loads(data) for data in self.sent]


@dataclass
class Handler:
    """A cryptofeed ConnectionHandler as far as a quirk class reaches into one (its ``conn``)."""

    conn: Conn


@dataclass
class Gap:
    symbol: str
    channel: str
    reason: str
    first_missing: int | None
    last_missing: int | None
    detail: str
    opened: bool  # open_gap (closed by the next record) rather than gap (written at once)

    @property
    def key(self) -> tuple[str, str, str, int | None, int | None]:
        return (self.symbol, self.channel, self.reason, self.first_missing, self.last_missing)


class Gaps:
    """The feed's ``gap_writer``: keeps every row it is given."""

    def __init__(self) -> None:
        self.rows: list[Gap] = []

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        self.rows.append(Gap(symbol, channel, reason, first_missing, last_missing, detail, False))

    def open_gap(self, symbol: str, channel: str, reason: str, detail: str = "", when: float | None = None) -> None:
        self.rows.append(Gap(symbol, channel, reason, None, None, detail, True))

    @property
    def keys(self) -> list[tuple[str, str, str, int | None, int | None]]:
        return [g.key for g in self.rows]


@dataclass(frozen=True)
class Book:
    """One book callback as it was when made."""

    symbol: str
    timestamp: float | None
    receipt: float
    bids: dict[Decimal, Decimal]
    asks: dict[Decimal, Decimal]
    delta: Any
    sequence_number: int | None


@dataclass
class Got:
    """Every record the callbacks got, by cryptofeed channel; books as `Book` copies."""

    by_channel: dict[str, list[Any]] = field(default_factory=dict)

    def callback(self, channel: str) -> Callable[[Any, float], Awaitable[None]]:
        async def cb(obj: Any, receipt: float) -> None:
            if isinstance(obj, OrderBook):
                obj = Book(obj.symbol, obj.timestamp, receipt, dict(obj.book.bids.to_dict()),
                           dict(obj.book.asks.to_dict()), obj.delta, obj.sequence_number)
            self.by_channel.setdefault(channel, []).append(obj)

        return cb

    def __getitem__(self, channel: str) -> list[Any]:
        return self.by_channel.get(channel, [])


def build(module: ModuleType, exchange: str, symbols: dict[str, str], channels: list[str],
          types: dict[str, str], sim: Endpoints | None = None, cls: type | None = None,
          **kwargs: Any) -> tuple[Any, Got, Gaps]:
    """The module's collector class (or ``cls``) for ``symbols`` (standard -> exchange name) and ``channels``,
    its gaps recorded; ``types`` gives each standard symbol's instrument type (spot, perpetual)."""
    Symbols.set(exchange, symbols, {"tick_size": {}, "instrument_type": types})
    got = Got()
    feed_cls = module.feed_class(sim) if cls is None else cls
    feed = feed_cls(symbols=list(symbols), channels=channels, config=module.feed_config(sim),
                    callbacks={c: got.callback(c) for c in channels}, **kwargs)
    gaps = Gaps()
    feed.gap_writer = gaps
    return feed, got, gaps


Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class RestServer:
    """A local HTTP server answering every GET with ``respond``; ``requests`` holds the path and query seen."""

    respond: Responder
    requests: list[str] = field(default_factory=list)
    url: str = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        return await self.respond(request)


@asynccontextmanager
async def rest_server(respond: Responder) -> AsyncIterator[RestServer]:
    server = RestServer(respond)
    app = web.Application()
    app.router.add_get("/{tail:.*}", server._handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def json_body(body: Any, delay: float = 0.0, status: int = 200) -> Responder:
    """A responder sending ``body`` as JSON after a real ``delay`` (seconds) with ``status``."""

    async def respond(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text=json.dumps(body), status=status, content_type="application/json")

    return respond


def frame(obj: Any) -> str:
    """A frame as exchanges send it: compact JSON."""
    return json.dumps(obj, separators=(",", ":"))
