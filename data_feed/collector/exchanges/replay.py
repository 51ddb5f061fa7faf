"""Replay collector feeds: any cryptofeed exchange class with every endpoint's host swapped for the replay server's.

Paths and queries are kept, so the replay server sees what the exchange would have seen and matches
it to the recording: ``wss://stream.binance.com:9443`` becomes ``wss://localhost:PORT/replay/BINANCE``,
``https://api.coinbase.com/api/v3/brokerage`` becomes ``https://localhost:PORT/replay/COINBASE/api/v3/brokerage``.
Exchange quirks still come from that exchange's own module (its ``QUIRKS`` class) when there is one.

Receive times are the recording's (`RecordedClock`): each frame is stamped with the time it was
recorded at, found by its content, and every record cryptofeed makes while handling it (REST book
snapshots included) gets that time as ``ts_recv``. So a replay lands the receive times the recording
run landed, whatever the replay's speed, and records without an exchange time stay on the recording's
timeline instead of today's.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import EXCHANGE_MAP
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.sim.replay import replay_prefix
from data_feed.sim.session import Session, load_session, read_exchange


class RecordedClock:
    """The recording's receive time of what a replayed collector gets: websocket frames and REST responses,
    found by content (identical frames, such as heartbeats, take their times in recorded order)."""

    def __init__(self, session: Session) -> None:
        times: dict[int, list[float]] = defaultdict(list)
        for conn in session.connections:
            for ts, data in conn.frames:
                times[hash(data)].append(ts)
        for rec in session.http:
            times[hash(rec.data)].append(rec.ts)
        self._times = {key: sorted(found, reverse=True) for key, found in times.items()}  # pop() takes the oldest
        self.now: float | None = None  # the recorded time of the frame being handled (or the last one)

    @classmethod
    def for_exchange(cls, files: Sequence[str], exchange: str) -> RecordedClock | None:
        for path in files:
            if read_exchange(path) == exchange:
                return cls(load_session(Path(path)))
        return None

    def frame(self, data: Any, received: float) -> float:
        """The recorded time of ``data``; ``received`` (the local time) for anything not recorded."""
        found = self._times.get(hash(data)) if isinstance(data, str | bytes) else None
        if found:
            self.now = found[-1] if len(found) == 1 else found.pop()
        return received if self.now is None else self.now


class RecordedTimeMixin:
    """First in a replay feed's bases: frames and callbacks carry the recording's time (`RecordedClock`)."""

    replay_clock: RecordedClock | None = None

    async def message_handler(self, msg: Any, conn: Any, timestamp: float) -> None:
        if self.replay_clock is not None:
            timestamp = self.replay_clock.frame(msg, timestamp)
        await super().message_handler(msg, conn, timestamp)  # type: ignore[misc]

    async def callback(self, data_type: str, obj: Any, receipt_timestamp: float) -> None:
        clock = self.replay_clock
        if clock is not None and clock.now is not None:  # also REST snapshots stamped with time.time()
            receipt_timestamp = clock.now
        await super().callback(data_type, obj, receipt_timestamp)  # type: ignore[misc]


def rehost(address: str, base: str) -> str:
    """``address`` with scheme, host and port replaced by ``base`` (which may carry a path prefix)."""
    parts = urlsplit(address)
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return base.rstrip("/") + rest


def base_class(exchange: str, module: ModuleType | None) -> type[Feed]:
    if module is not None and hasattr(module, "QUIRKS"):
        quirks: type[Feed] = module.QUIRKS
        return quirks
    try:
        cls: type[Feed] = EXCHANGE_MAP[exchange]
    except KeyError:
        raise ValueError(f"cryptofeed has no exchange {exchange!r}") from None
    return cls


def feed_class(exchange: str, module: ModuleType | None, sim: Endpoints) -> type[Feed]:
    base = base_class(exchange, module)
    ws_base = sim.ws_base + replay_prefix(exchange)
    rest_base = sim.base_url + replay_prefix(exchange)
    ws = [_swap_ws(ep, ws_base) for ep in base.websocket_endpoints]
    rest = [dataclasses.replace(ep, address=rehost(ep.address, rest_base), sandbox=None)
            for ep in base.rest_endpoints]
    attrs: dict[str, object] = {"websocket_endpoints": ws, "rest_endpoints": rest}
    return type(f"Replay{base.__name__}", (RecordedTimeMixin, CollectorFeedMixin, base), attrs)


def _swap_ws(ep: WebsocketEndpoint, ws_base: str) -> WebsocketEndpoint:
    swapped: WebsocketEndpoint = dataclasses.replace(ep, address=rehost(ep.address, ws_base), sandbox=None)
    return swapped


__all__ = ["RecordedClock", "RecordedTimeMixin", "RestEndpoint", "feed_class", "rehost"]
