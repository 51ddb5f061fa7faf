"""Binance spot collector feed: cryptofeed's own ``Binance`` class, endpoints swapped when simulated.

Sample combined-stream frame (what cryptofeed parses)::

    {"stream": "btcusdt@aggTrade",
     "data": {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT", "a": 17, "p": "35000.01",
              "q": "0.01000000", "f": 17, "l": 17, "T": 1700000000120, "m": false}}
"""

from __future__ import annotations

from typing import Any

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import Binance
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints

SIM_PATH = "/binance"
QUIRKS = Binance  # the class replays build on: cryptofeed's own, no quirks to mend


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [WebsocketEndpoint(f"{sim.ws_base}{SIM_PATH}")]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}", routes=Binance.rest_endpoints[0].routes)]
    return type("CollectorBinance", (CollectorFeedMixin, Binance), attrs)
