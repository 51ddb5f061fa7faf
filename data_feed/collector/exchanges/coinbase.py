"""Coinbase Advanced Trade collector feed: cryptofeed's ``Coinbase`` plus the ticker channel.

cryptofeed 2.4.1 subscribes to trades and level2 only, hands the book
callback the frame's timestamp unconverted, and drops every ask of a book
snapshot (it looks for side "ask"; Coinbase sends "offer"). These quirks are
mended here, in Coinbase's own module. Every frame of a connection carries the next
``sequence_num``; a jump is a ``sequence_gap`` row (missing numbers) and the level2 channel is
resubscribed, which brings a fresh snapshot. Sample ticker frame::

    {"channel": "ticker", "client_id": "", "timestamp": "2023-02-09T20:30:37.167359596Z",
     "sequence_num": 0, "events": [{"type": "snapshot", "tickers": [{"type": "ticker",
     "product_id": "BTC-USD", "price": "21932.98", "best_bid": "21932.97",
     "best_bid_quantity": "0.2", "best_ask": "21932.98", "best_ask_quantity": "0.1"}]}]}
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.defines import TICKER
from cryptofeed.exchanges import Coinbase
from cryptofeed.feed import Feed
from cryptofeed.types import OrderBook, Ticker
from yapic import json

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints
from data_feed.contracts.schemas import NS_PER_SECOND, GapReason

LOG = logging.getLogger("data_feed.collector")

SEQUENCE_KEY = '"sequence_num":'
TIMESTAMP_KEY = '"timestamp":"'
LEVEL2 = "level2"

SIM_PATH = "/coinbase"
REST_PATH = "/coinbase/api/v3/brokerage"


def to_epoch_seconds(value: Any) -> float | None:
    """Coinbase times arrive as RFC 3339 strings (nanoseconds) or as datetimes parsed from them."""
    if value is None or isinstance(value, float | int):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    text = str(value).rstrip("Z")
    whole, _, frac = text.partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + (int(frac[:9].ljust(9, "0")) / NS_PER_SECOND if frac else 0.0)


class CoinbaseWithTicker(Coinbase):  # type: ignore[misc]
    """cryptofeed's Coinbase plus the ticker channel and converted book timestamps."""

    websocket_channels = {**Coinbase.websocket_channels, TICKER: "ticker"}

    async def _pair_level2_snapshot(self, msg: dict[str, Any], timestamp: float) -> None:
        for update in msg["updates"]:
            if update["side"] == "offer":
                update["side"] = "ask"
        await super()._pair_level2_snapshot(msg, timestamp)

    async def book_callback(self, book_type: str, book: OrderBook, receipt_timestamp: float, **kwargs: Any) -> None:
        # A snapshot comes without a time: it gets its frame's (exchange time, also right in a replay).
        kwargs["timestamp"] = to_epoch_seconds(kwargs.get("timestamp") or self.__dict__.get("_df_frame_time"))
        await super().book_callback(book_type, book, receipt_timestamp, **kwargs)

    async def subscribe(self, conn: Any) -> None:
        self._sequences()[conn.uuid] = None  # a new connection counts from 0
        await super().subscribe(conn)

    def _sequences(self) -> dict[str, int | None]:
        found: dict[str, int | None] | None = self.__dict__.get("_df_sequences")
        if found is None:
            found = self.__dict__["_df_sequences"] = {}
        return found

    async def _check_sequence(self, msg: str, conn: Any) -> None:
        at = msg.find(SEQUENCE_KEY)
        if at < 0:
            return
        end = at + len(SEQUENCE_KEY)
        stop = msg.find(",", end)
        seq = int(msg[end:stop])
        last = self._sequences().get(conn.uuid)
        if last is not None and seq <= last:  # a repeated frame (or a truncated copy of this one): not a gap
            return
        self._sequences()[conn.uuid] = seq
        if last is not None and seq > last + 1:
            when = time.time()
            for channel, symbol in self.carried(conn):
                self.gap(symbol, channel, GapReason.SEQUENCE_GAP, last + 1, seq - 1,
                         detail=f"sequence_num {seq} after {last}; level2 resubscribed", when=when)
            await self._resubscribe_book(conn)

    async def _resubscribe_book(self, conn: Any) -> None:
        products = list(self.subscription.get(LEVEL2, []))  # cryptofeed keeps it in the exchange's names
        if products:
            for kind in ("unsubscribe", "subscribe"):
                await conn.write(json.dumps({"type": kind, "product_ids": products, "channel": LEVEL2}))

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        await self._check_sequence(msg, conn)
        at = msg.find(TIMESTAMP_KEY)
        if at >= 0:
            start = at + len(TIMESTAMP_KEY)
            self.__dict__["_df_frame_time"] = msg[start:msg.find('"', start)]
        # Only ticker and heartbeat frames are ours; the rest go to cryptofeed unchanged.
        if '"ticker"' not in msg and '"heartbeats"' not in msg:
            await super().message_handler(msg, conn, timestamp)
            return
        data = json.loads(msg, parse_float=Decimal)
        if data.get("channel") == "ticker":
            await self._tickers(data, timestamp)

    async def _tickers(self, data: dict[str, Any], receipt: float) -> None:
        ts = to_epoch_seconds(data.get("timestamp"))
        for event in data.get("events", []):
            for tick in event.get("tickers", []):
                symbol = self.exchange_symbol_to_std_symbol(tick["product_id"])
                t = Ticker(self.id, symbol, Decimal(tick["best_bid"]), Decimal(tick["best_ask"]), ts, raw=tick)
                await self.callback(TICKER, t, receipt)


QUIRKS = CoinbaseWithTicker  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """cryptofeed 2.4.1 signs every Coinbase subscription, public ones too, so it needs API keys.

    Live: from the environment (COINBASE_KEY_ID, COINBASE_KEY_SECRET). The simulator accepts any.
    """
    if sim is not None:
        return {"coinbase": {"key_id": "simulator", "key_secret": "simulator"}}
    key_id, secret = os.environ.get("COINBASE_KEY_ID"), os.environ.get("COINBASE_KEY_SECRET")
    if not key_id or not secret:
        raise ValueError("exchange=COINBASE: live collection needs COINBASE_KEY_ID and COINBASE_KEY_SECRET")
    return {"coinbase": {"key_id": key_id, "key_secret": secret}}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [WebsocketEndpoint(f"{sim.ws_base}{SIM_PATH}", options={"compression": None})]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{REST_PATH}", routes=Coinbase.rest_endpoints[0].routes)]
    return type("CollectorCoinbase", (CollectorFeedMixin, CoinbaseWithTicker), attrs)


__all__ = ["feed_class"]
