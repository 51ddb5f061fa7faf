"""Slices the featurizer published from bus rows, held until their collector confirms the cache has those rows.

With ``bus.publish_on_receipt`` a collector publishes each frame's rows before its flush writes them to Redis,
and after each flush says on ``confirmed.EXCHANGE.-`` up to which receive time its rows are cached
(``collector.bus_feed.BusFeed.confirm``). A slice goes on the bus at once; it is landed (cached, so written to
the lake) once a confirmation covers the newest record read when it closed, with ``complete`` decided then: a
collector killed between its publish and its flush announces its restart gap before its next confirmation, so
the slice lands incomplete, as backfill over the lake sees it. One never confirmed within ``hold_seconds``, or
still held at stop, lands incomplete.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from featurizer.engine import Closed

HOLD_FLUSHES = 100  # a published slice waits this many collector flushes for its rows' confirmation...
HOLD_MIN_SECONDS = 10.0  # ...and at least this long, then lands as incomplete


@dataclass(frozen=True)
class Held:
    """A slice published from bus rows, waiting for its collector to confirm the cache has them."""

    received: float  # the newest receive time of any record read when it closed
    closed_at: float
    batch: Closed


class Hold:
    """Per exchange, the published slices not yet landed, in closing order; ``land(exchange, held, confirmed)``
    caches one."""

    def __init__(self, exchanges: Iterable[str], batch_max_ms: float,
                 land: Callable[[str, Held, bool], None]) -> None:
        self.held: dict[str, deque[Held]] = {ex: deque() for ex in exchanges}
        self.confirmed_up_to: dict[str, float] = {}  # per exchange: records received up to here are cached
        self.hold_seconds = max(HOLD_MIN_SECONDS, HOLD_FLUSHES * batch_max_ms / 1000)
        self.land = land

    def add(self, exchange: str, received: float, closed_at: float, batch: Closed) -> None:
        self.held[exchange].append(Held(received, closed_at, batch))

    def confirm(self, exchange: str, up_to: float) -> None:
        self.confirmed_up_to[exchange] = max(up_to, self.confirmed_up_to.get(exchange, up_to))
        self.release(exchange)

    def release(self, exchange: str) -> None:
        """Land the held slices of ``exchange`` whose records the cache has, in order."""
        held, up_to = self.held[exchange], self.confirmed_up_to.get(exchange, float("-inf"))
        while held and held[0].received <= up_to:
            self.land(exchange, held.popleft(), True)

    def release_unconfirmed(self, everything: bool = False) -> None:
        """What confirmations cover, then slices held past ``hold_seconds`` (or all, at stop) without one (the
        collector died, or stopped, between its publish and its flush): landed unconfirmed."""
        horizon = time.time() - self.hold_seconds
        for exchange, held in self.held.items():
            self.release(exchange)
            while held and (everything or held[0].closed_at < horizon):
                self.land(exchange, held.popleft(), False)
