"""Kraken (websocket API v1) collector feed: cryptofeed's ``Kraken``, endpoints swapped when simulated.

Book checksums are always validated (also those of an update sent as two dicts, asks then bids, whose
checksum is in the second, where cryptofeed does not look); a mismatch is a ``checksum`` gaps row and the book is
resubscribed (unsubscribe + subscribe brings a fresh snapshot). Kraken trades carry no id, so the
lake's ``id``/``id_text`` stay null for them. Sample book update::

    [10001, {"a": [["65000.35000", "0.00000000", "1714564800.123456"]], "c": "3258975213"}, "book-100", "XBT/USD"]
"""

from __future__ import annotations

from typing import Any

from cryptofeed.connection import RestEndpoint, WebsocketEndpoint
from cryptofeed.exceptions import BadChecksum
from cryptofeed.exchanges import Kraken
from cryptofeed.feed import Feed
from yapic import json

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints, LoggedGaps
from data_feed.contracts.schemas import Channel, GapReason

SIM_PATH = "/kraken"
BOOK = Channel.L2_BOOK.value


class KrakenWithChecks(LoggedGaps, Kraken):  # type: ignore[misc]
    """cryptofeed's Kraken with checksum validation on and a resubscription after a mismatch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["checksum_validation"] = True
        super().__init__(*args, **kwargs)

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        resyncing: set[str] = self.__dict__.setdefault("_df_resyncing", set())
        if resyncing and '"book-' in msg and self._awaiting_snapshot(msg, resyncing):
            return  # updates to a book known to be wrong: skipped until the fresh snapshot
        try:
            await super().message_handler(msg, conn, timestamp)
        except BadChecksum:
            frame = json.loads(msg)
            channel_name, pair = frame[-2], frame[-1]
            symbol = self.exchange_symbol_to_std_symbol(pair)
            self.gap(symbol, BOOK, GapReason.CHECKSUM,
                     detail=f"{channel_name} {pair}: book checksum mismatch; resubscribed")
            resyncing.add(pair)
            sub = {"name": "book", "depth": int(channel_name.split("-")[1])}
            for event in ("unsubscribe", "subscribe"):
                await conn.write(json.dumps({"event": event, "pair": [pair], "subscription": sub}))


    async def _book(self, msg: list[Any], pair: str, timestamp: float) -> None:
        """An update of asks and bids comes as two dicts, the checksum in the second; cryptofeed looks for it in
        the first only, so such an update was never checked. Hand it the checksum where it looks."""
        parts = msg[1:-2]
        if len(parts) > 1 and "c" not in parts[0]:
            checksum = next((part["c"] for part in parts[1:] if "c" in part), None)
            if checksum is not None:
                msg = [msg[0], {**parts[0], "c": checksum}, *parts[1:], *msg[-2:]]
        await super()._book(msg, pair, timestamp)

    @staticmethod
    def _awaiting_snapshot(msg: str, resyncing: set[str]) -> bool:
        frame = json.loads(msg)
        if not isinstance(frame, list) or frame[-1] not in resyncing:
            return False
        if "as" in frame[1]:  # the snapshot
            resyncing.discard(frame[-1])
            return False
        return True


QUIRKS = KrakenWithChecks  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [WebsocketEndpoint(f"{sim.ws_base}{SIM_PATH}", limit=20)]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}", routes=Kraken.rest_endpoints[0].routes)]
    return type("CollectorKraken", (CollectorFeedMixin, KrakenWithChecks), attrs)
