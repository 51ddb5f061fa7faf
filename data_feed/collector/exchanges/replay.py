"""Replay collector feeds: any cryptofeed exchange class with every endpoint's host swapped for the replay server's.

Paths and queries are kept, so the replay server sees what the exchange would have seen and matches
it to the recording: ``wss://stream.binance.com:9443`` becomes ``wss://localhost:PORT/replay/BINANCE``,
``https://api.coinbase.com/api/v3/brokerage`` becomes ``https://localhost:PORT/replay/COINBASE/api/v3/brokerage``.
Exchange quirks still come from that exchange's own module (its ``QUIRKS`` class) when there is one.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from urllib.parse import urlsplit

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import EXCHANGE_MAP
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.sim.replay import replay_prefix


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
    return type(f"Replay{base.__name__}", (CollectorFeedMixin, base), attrs)


def _swap_ws(ep: WebsocketEndpoint, ws_base: str) -> WebsocketEndpoint:
    swapped: WebsocketEndpoint = dataclasses.replace(ep, address=rehost(ep.address, ws_base), sandbox=None)
    return swapped


__all__ = ["RestEndpoint", "feed_class", "rehost"]
