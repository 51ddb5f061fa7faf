"""Bybit v5 collector feed (spot and linear): cryptofeed's ``Bybit``, endpoints swapped when simulated.

Quirks mended here: cryptofeed 2.4.1 forgets every ticker snapshot whenever any connection
subscribes (spot's subscription wipes linear's tickers, so later deltas fail), so tickers seen are
kept across another connection's subscribe; book deltas must count ``u`` up by one, and a jump is a
``sequence_gap`` row followed by a resubscription (which brings a fresh snapshot); deltas arriving before
that snapshot would be applied to a book known to be wrong, so they are dropped, and written as one
``resync`` row of their ``u`` range when the snapshot comes. A subscribe forgets only its own market's
``u``. Sample delta::

    {"topic": "orderbook.200.BTCUSDT", "type": "delta", "ts": 1672304484978,
     "data": {"s": "BTCUSDT", "b": [["16493.50", "0"]], "a": [], "u": 18521289, "seq": 7961638725}}
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cryptofeed.connection import RestEndpoint
from cryptofeed.exchanges import Bybit
from cryptofeed.feed import Feed
from yapic import json

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints, LoggedGaps
from data_feed.collector.exchanges.replay import rehost
from data_feed.contracts.schemas import Channel, GapReason

SIM_PATH = "/bybit"
BOOK = Channel.L2_BOOK.value


class BybitWithGaps(LoggedGaps, Bybit):  # type: ignore[misc]
    """cryptofeed's Bybit, keeping tickers across subscriptions and reporting book sequence gaps."""

    async def subscribe(self, connection: Any) -> None:
        """A (re)subscribing connection gets fresh snapshots: forget the last ``u`` of its own market's books
        only (the other market's connection goes on counting)."""
        seen = dict(self.tickers)
        market = str(getattr(connection, "address", "")).rsplit("/", 1)[-1]
        for topic in [t for t in self._book_u() if t[0] == market]:
            del self._book_u()[topic]
        await super().subscribe(connection)
        for symbol, ticker in seen.items():
            self.tickers.setdefault(symbol, ticker)

    def _book_u(self) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] | None = self.__dict__.get("_df_book_u")
        if found is None:
            found = self.__dict__["_df_book_u"] = {}
        return found

    def _awaiting(self) -> dict[tuple[str, str], list[int]]:
        """Topics whose book is known wrong after a jump -> [first, last] u of the deltas dropped until the fresh
        snapshot (empty: none yet)."""
        found: dict[tuple[str, str], list[int]] | None = self.__dict__.get("_df_awaiting")
        if found is None:
            found = self.__dict__["_df_awaiting"] = {}
        return found

    async def _book(self, msg: dict[str, Any], timestamp: float, market: str) -> None:
        topic, u = (market, msg["topic"]), int(msg["data"]["u"])  # spot and linear share topic names
        awaiting = self._awaiting()
        if topic in awaiting:
            if msg["type"] == "delta":  # applied to the book known to be wrong, it would be published as right
                dropped = awaiting[topic]
                awaiting[topic] = [dropped[0] if dropped else u, u]
                return
            dropped = awaiting.pop(topic)
            if dropped:
                self.gap(self._std(msg, market), BOOK, GapReason.RESYNC, dropped[0], dropped[-1],
                         detail=f"{msg['topic']}: deltas u {dropped[0]}..{dropped[-1]} dropped until the fresh "
                         f"snapshot (u {u})")
        last = self._book_u().get(topic)
        self._book_u()[topic] = u
        if msg["type"] == "delta" and last is not None and u != last + 1:
            await self._resync(msg, market, last, u)
            return
        await super()._book(msg, timestamp, market)

    def _std(self, msg: dict[str, Any], market: str) -> str:
        symbol = msg["data"]["s"] if market != "spot" else self.convert_to_spot_name(self, msg["data"]["s"])
        return str(self.exchange_symbol_to_std_symbol(symbol))

    async def _resync(self, msg: dict[str, Any], market: str, last: int, u: int) -> None:
        std = self._std(msg, market)
        self.gap(std, BOOK, GapReason.SEQUENCE_GAP, last + 1, u - 1, detail=f"{msg['topic']}: u {u} after {last}; "
                 "resubscribed for a fresh snapshot")
        self._book_u().pop((market, msg["topic"]), None)
        self._awaiting()[(market, msg["topic"])] = []
        for handler in self.connection_handlers:
            if handler.conn.address.endswith(f"/{market}") and handler.conn.is_open:
                await handler.conn.write(json.dumps({"op": "subscribe", "args": [msg["topic"]]}))


QUIRKS = BybitWithGaps  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [dataclasses.replace(ep, address=rehost(ep.address, sim.ws_base + SIM_PATH))
                                        for ep in Bybit.websocket_endpoints]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}", routes=Bybit.rest_endpoints[0].routes)]
    return type("CollectorBybit", (CollectorFeedMixin, BybitWithGaps), attrs)
