"""Binance USD-M futures collector feed: cryptofeed's ``BinanceFutures``, endpoints swapped when simulated.

Book resets and snapshot trouble are reported as gaps like spot's (`BinanceGaps`). Open interest is
polled over REST (``/fapi/v1/openInterest``) by cryptofeed itself. Sample funding frame::

    {"stream": "btcusdt@markPrice", "data": {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT",
     "p": "11794.15000000", "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}}
"""

from __future__ import annotations

from typing import Any

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import BinanceFutures
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.collector.exchanges.binance import BinanceGaps

SIM_PATH = "/binance_futures"


class BinanceFuturesWithGaps(BinanceGaps, BinanceFutures):  # type: ignore[misc]
    """cryptofeed's BinanceFutures with gaps reported."""


QUIRKS = BinanceFuturesWithGaps  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [WebsocketEndpoint(f"{sim.ws_base}{SIM_PATH}", options={"compression": None})]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}",
                                                routes=BinanceFutures.rest_endpoints[0].routes)]
    return type("CollectorBinanceFutures", (CollectorFeedMixin, BinanceFuturesWithGaps), attrs)
