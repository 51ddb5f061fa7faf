"""What every collector feed adds to cryptofeed's exchange class: frame counting and bad-frame survival.

cryptofeed tears a connection down when its message handler raises; one
malformed frame must instead be logged (exchange, frame excerpt), counted and
skipped while the connection keeps running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from data_feed import metrics

LOG = logging.getLogger("data_feed.collector")

FRAME_EXCERPT_CHARS = 200


@dataclass(frozen=True)
class Endpoints:
    """Where a simulated exchange lives: https/wss base URLs of the simulator."""

    base_url: str
    ws_base: str


class CollectorFeedMixin:
    """Mixed in before the cryptofeed exchange class: ``class X(CollectorFeedMixin, Binance)``."""

    id: str
    frames_received = 0

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        self.frames_received += 1
        try:
            await super().message_handler(msg, conn, timestamp)  # type: ignore[misc]
        except Exception as err:
            metrics.BAD_FRAMES.labels(self.id).inc()
            excerpt = msg[:FRAME_EXCERPT_CHARS] if isinstance(msg, str) else repr(msg)[:FRAME_EXCERPT_CHARS]
            LOG.error("exchange=%s conn=%s: skipped a frame that could not be parsed (%s: %s): %r",
                      self.id, getattr(conn, "uuid", "?"), type(err).__name__, err, excerpt)
