"""Binance spot collector feed: cryptofeed's ``Binance`` class, endpoints swapped when simulated, gaps reported.

cryptofeed resets every book silently when a depth update does not follow the last one; here that is a
``sequence_gap`` row (with the missing update ids) for the symbol and a ``resync`` row for the others.
A failed or slow REST book snapshot is a ``snapshot_failed`` / ``slow_snapshot`` row.

Sample combined-stream frame (what cryptofeed parses)::

    {"stream": "btcusdt@aggTrade",
     "data": {"e": "aggTrade", "E": 1700000000123, "s": "BTCUSDT", "a": 17, "p": "35000.01",
              "q": "0.01000000", "f": 17, "l": 17, "T": 1700000000120, "m": false}}
"""

from __future__ import annotations

import time
from typing import Any

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exchanges import Binance
from cryptofeed.feed import Feed

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints, GapRecorded, LoggedGaps
from data_feed.contracts.schemas import Channel, GapReason

SIM_PATH = "/binance"
SLOW_SNAPSHOT_SECONDS = 1.0  # the book is unavailable while its snapshot loads; longer than this is a gap
BOOK = Channel.L2_BOOK.value


class BinanceGaps(LoggedGaps):
    """Binance-family book handling that reports resets and snapshot trouble as gaps (``gap`` is the mixin's).

    Mixed in before cryptofeed's Binance class or a subclass of it (USD-M futures shares the scheme).
    """

    last_update_id: dict[str, int]
    _l2_book: dict[str, Any]

    async def _book(self, msg: dict[str, Any], pair: str, timestamp: float) -> None:
        self.__dict__["_df_depth_event_ms"] = msg.get("E")
        await super()._book(msg, pair, timestamp)  # type: ignore[misc]

    async def book_callback(self, book_type: str, book: Any, receipt_timestamp: float, **kwargs: Any) -> None:
        """Spot's REST snapshot has no time: stamp it with the exchange time of the depth event that asked for it
        (not the local time, which in a replay is years away from the exchange's timeline)."""
        event_ms = self.__dict__.get("_df_depth_event_ms")
        if kwargs.get("timestamp") is None and kwargs.get("delta") is None and event_ms is not None:
            kwargs["timestamp"] = event_ms / 1000
        await super().book_callback(book_type, book, receipt_timestamp, **kwargs)  # type: ignore[misc]

    def _check_update_id(self, std_pair: str, msg: dict[str, Any]) -> bool:
        """depthUpdate {"U": 157, "u": 160, ...}: U must be the last u + 1, or cryptofeed resets the books."""
        expected = self.last_update_id.get(std_pair)
        if expected is not None and std_pair in self._l2_book and int(msg["u"]) < expected:
            return True  # already applied (a repeat, or out of order): skipped as spot's check does; futures' resets
        books = list(self._l2_book)
        skip: bool = super()._check_update_id(std_pair, msg)  # type: ignore[misc]
        if std_pair in books and not self._l2_book and expected is not None:
            first, last = expected + 1, int(msg["U"]) - 1
            known = first <= last  # else futures' pu broke the chain over ids it had: which are missing is unknown
            self.gap(std_pair, BOOK, GapReason.SEQUENCE_GAP, first if known else None, last if known else None,
                     detail=f"update {msg['U']} after {expected}; resynchronising from a snapshot")
            for other in books:
                if other != std_pair:
                    self.gap(other, BOOK, GapReason.RESYNC, detail=f"books reset after a gap in {std_pair}")
        return skip

    async def _snapshot(self, pair: str) -> None:
        symbol = self.exchange_symbol_to_std_symbol(pair)  # type: ignore[attr-defined]
        started = time.monotonic()
        try:
            await super()._snapshot(pair)  # type: ignore[misc]
        except Exception as err:
            self.gap(symbol, BOOK, GapReason.SNAPSHOT_FAILED, detail=f"{type(err).__name__}: {err}"[:200])
            raise GapRecorded(f"exchange={self.id} symbol={symbol}: book snapshot failed: {err}") from err
        elapsed = time.monotonic() - started
        if elapsed > SLOW_SNAPSHOT_SECONDS:
            self.gap(symbol, BOOK, GapReason.SLOW_SNAPSHOT, detail=f"book snapshot took {elapsed:.3f}s")


class BinanceWithGaps(BinanceGaps, Binance):  # type: ignore[misc]
    """cryptofeed's Binance spot with gaps reported."""


QUIRKS = BinanceWithGaps  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [WebsocketEndpoint(f"{sim.ws_base}{SIM_PATH}")]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}", routes=Binance.rest_endpoints[0].routes)]
    return type("CollectorBinance", (CollectorFeedMixin, BinanceWithGaps), attrs)
