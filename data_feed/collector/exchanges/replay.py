"""Replay collector feeds: any cryptofeed exchange class with every endpoint's host swapped for the replay server's.

Paths and queries are kept, so the replay server sees what the exchange would have seen and matches
it to the recording: ``wss://stream.binance.com:9443`` becomes ``wss://localhost:PORT/replay/BINANCE``,
``https://api.coinbase.com/api/v3/brokerage`` becomes ``https://localhost:PORT/replay/COINBASE/api/v3/brokerage``.
Exchange quirks still come from that exchange's own module (its ``QUIRKS`` class) when there is one.

Frames are handled in the order they were recorded in and carry the recording's receive times: the
replay server wraps each frame in an envelope (`data_feed.contracts.capture.wrap_frame`) with its recorded
time, and asks for an acknowledgement once it is handled where the next frame is for another
connection (`RecordedTimeMixin`). Every record cryptofeed makes while handling a frame (REST book
snapshots included) gets the frame's recorded time as ``ts_recv``. So a replay's receive times are the
recording's whatever its speed, and records without an exchange time stay on the recording's timeline.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import EXCHANGE_MAP
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.contracts.capture import ENVELOPE_HEADER, ack_frame, replay_prefix, unwrap_frame


class RecordedTimeMixin:
    """First in a replay feed's bases: frames arrive in envelopes (`data_feed.contracts.capture`); cryptofeed gets
    the frame itself with its recorded receive time, callbacks get that time, and the frame is acknowledged
    once handled when the server asks (the next frame in recorded order is for another connection)."""

    replay_now: float | None = None  # the recorded time of the frame being handled (or the last one)

    async def message_handler(self, msg: Any, conn: Any, timestamp: float) -> None:
        enveloped = unwrap_frame(msg) if isinstance(msg, str | bytes) else None
        if enveloped is None:
            await super().message_handler(msg, conn, timestamp)  # type: ignore[misc]
            return
        frame, self.replay_now, index, ack = enveloped
        try:
            await super().message_handler(frame, conn, self.replay_now)  # type: ignore[misc]
        finally:
            if ack:
                await conn.write(ack_frame(index))

    async def callback(self, data_type: str, obj: Any, receipt_timestamp: float) -> None:
        if self.replay_now is not None:  # also records cryptofeed stamps with time.time() (REST book snapshots)
            receipt_timestamp = self.replay_now
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
    headers = {**(ep.options or {}).get("additional_headers", {}), ENVELOPE_HEADER: "1"}
    options = {**(ep.options or {}), "additional_headers": headers}
    swapped: WebsocketEndpoint = dataclasses.replace(ep, address=rehost(ep.address, ws_base), sandbox=None,
                                                     options=options)
    return swapped


__all__ = ["RecordedTimeMixin", "RestEndpoint", "feed_class", "rehost"]
