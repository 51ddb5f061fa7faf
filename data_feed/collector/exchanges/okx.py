"""OKX v5 collector feed (spot and swaps): cryptofeed's ``OKX``, endpoints swapped when simulated.

Quirks mended here: book checksums are always validated, and a mismatch is a ``checksum`` gaps row
followed by a resubscription (fresh snapshot); cryptofeed 2.4.1 stamps a funding update with the
*next funding time* as its event time (hours ahead, which would drag the lake's watermark), so the
receive time is the event time and the funding time goes to ``next_funding_time``; liquidations come
with OKX's instrument id as symbol and get the normalized one. Sample funding frame::

    {"arg": {"channel": "funding-rate", "instId": "BTC-USDT-SWAP"}, "data": [{"instType": "SWAP",
     "instId": "BTC-USDT-SWAP", "fundingRate": "0.0001", "nextFundingRate": "0.0001",
     "fundingTime": "1714579200000", "nextFundingTime": "1714608000000"}]}
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from cryptofeed.connection import RestEndpoint
from cryptofeed.defines import FUNDING, LIQUIDATIONS
from cryptofeed.exceptions import BadChecksum
from cryptofeed.exchanges import OKX
from cryptofeed.feed import Feed
from cryptofeed.types import Funding, Liquidation
from yapic import json

from data_feed.collector.exchanges.base import CollectorFeedMixin, Endpoints, LoggedGaps
from data_feed.collector.exchanges.replay import rehost
from data_feed.contracts.schemas import Channel, GapReason

SIM_PATH = "/okx"
SWAP_SUFFIX = "-SWAP"
BOOK = Channel.L2_BOOK.value


class OkxWithChecks(LoggedGaps, OKX):  # type: ignore[misc]
    """cryptofeed's OKX with checksum validation on, resubscription after a mismatch, sane funding times."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["checksum_validation"] = True
        super().__init__(*args, **kwargs)

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        resyncing: set[str] = self.__dict__.setdefault("_df_resyncing", set())
        if resyncing and '"books"' in msg and self._awaiting_snapshot(msg, resyncing):
            return  # updates to a book known to be wrong: skipped until the fresh snapshot
        try:
            await super().message_handler(msg, conn, timestamp)
        except BadChecksum:
            inst_id = json.loads(msg)["arg"]["instId"]
            self.gap(self.exchange_symbol_to_std_symbol(inst_id), BOOK, GapReason.CHECKSUM,
                     detail=f"books {inst_id}: checksum mismatch; resubscribed")
            resyncing.add(inst_id)
            arg = [{"channel": "books", "instId": inst_id}]
            for op in ("unsubscribe", "subscribe"):
                await conn.write(json.dumps({"op": op, "args": arg}))

    @staticmethod
    def _awaiting_snapshot(msg: str, resyncing: set[str]) -> bool:
        frame = json.loads(msg)
        inst_id = frame.get("arg", {}).get("instId")
        if inst_id not in resyncing or "action" not in frame:
            return False
        if frame["action"] == "snapshot":
            resyncing.discard(inst_id)
            return False
        return True

    async def callback(self, data_type: str, obj: Any, receipt_timestamp: float) -> None:
        if data_type == LIQUIDATIONS and obj.symbol.endswith(SWAP_SUFFIX):  # 2.4.1 passes the instId
            obj = Liquidation(self.id, self.exchange_symbol_to_std_symbol(obj.symbol), obj.side, obj.quantity,
                              obj.price, obj.id, obj.status, obj.timestamp, raw=obj.raw)
        await super().callback(data_type, obj, receipt_timestamp)

    async def _funding(self, msg: dict[str, Any], timestamp: float) -> None:
        for update in msg["data"]:
            predicted = update.get("nextFundingRate") or None
            f = Funding(self.id, self.exchange_symbol_to_std_symbol(update["instId"]), None,
                        Decimal(update["fundingRate"]), self.timestamp_normalize(int(update["fundingTime"])),
                        timestamp, predicted_rate=Decimal(predicted) if predicted else None, raw=update)
            await self.callback(FUNDING, f, timestamp)


QUIRKS = OkxWithChecks  # the class replays build on


def feed_config(sim: Endpoints | None) -> dict[str, Any]:
    """Public market data needs no keys."""
    return {}


def feed_class(sim: Endpoints | None) -> type[Feed]:
    attrs: dict[str, object] = {}
    if sim is not None:
        attrs["websocket_endpoints"] = [dataclasses.replace(ep, address=rehost(ep.address, sim.ws_base + SIM_PATH))
                                        for ep in OKX.websocket_endpoints]
        attrs["rest_endpoints"] = [RestEndpoint(f"{sim.base_url}{SIM_PATH}", routes=OKX.rest_endpoints[0].routes)]
    return type("CollectorOKX", (CollectorFeedMixin, OkxWithChecks), attrs)
