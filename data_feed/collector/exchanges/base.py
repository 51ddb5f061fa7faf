"""What every collector feed adds to cryptofeed's exchange class: frame counting and bad-frame survival.

cryptofeed tears a connection down when its message handler raises; one
malformed frame must instead be logged (exchange, frame excerpt), counted and
skipped while the connection keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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


def _noop() -> None:
    return None


class CollectorFeedMixin:
    """Mixed in before the cryptofeed exchange class: ``class X(CollectorFeedMixin, Binance)``."""

    id: str
    on_frame: Callable[[], None] = staticmethod(_noop)

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        self.on_frame()
        try:
            await self.parse_frame(msg, conn, timestamp)
        except Exception as err:
            metrics.BAD_FRAMES.labels(self.id).inc()
            excerpt = msg[:FRAME_EXCERPT_CHARS] if isinstance(msg, str) else repr(msg)[:FRAME_EXCERPT_CHARS]
            LOG.error("exchange=%s conn=%s: skipped a frame that could not be parsed (%s: %s): %r",
                      self.id, getattr(conn, "uuid", "?"), type(err).__name__, err, excerpt)

    async def parse_frame(self, msg: str, conn: Any, timestamp: float) -> None:
        """Parse one frame; exchange modules override this for channels cryptofeed lacks."""
        await super().message_handler(msg, conn, timestamp)  # type: ignore[misc]
