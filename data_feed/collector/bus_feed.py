"""The collector's live feed: every row it buffers goes on the bus within one event-loop pass of its frame,
before the cache flush (every ``redis.batch_max_ms``) writes it to Redis.

Live signals no longer wait for the flush interval and the Redis round trip; the lake's guarantees stay with
the flush. What the bus carried that the cache then did not keep is a gaps row: a batch the full spill
refused comes back from delivery as an ``overflow`` gaps row, which goes on the bus (and into the cache) like
any other. Order per publish: gaps rows first, then data, so a subscriber learns of an outage before the data
that ends it; outages the writer detects itself are announced when they open (``gaps.open_notice``).

After each flush the feed says how far the cache has the rows (``confirm``): live slices land only once it has.

The buffers are the writer's own lists, filled by the callbacks; the feed remembers how many rows at the head of
each it has published, and a flush, which empties them, publishes the rest first (``publish`` then ``taken``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from data_feed.bus.wire import Publisher, confirmed_topic, encode_rows
from data_feed.contracts.config import GAPS_CHANNEL

Row = tuple[Any, ...]


class BusFeed:
    def __init__(self, bus: Publisher, exchange: str, buffers: dict[str, list[Row]]) -> None:
        self.bus, self.exchange, self.buffers = bus, exchange, buffers
        self.sent = dict.fromkeys(buffers, 0)  # rows at the head of each buffer already on the bus
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def frame_done(self) -> None:
        """After each frame (cheap): publish once the loop has finished the frames it holds now."""
        if not self._scheduled:
            self._scheduled = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.publish)

    def publish(self) -> None:
        """What the buffers gained since the last publish: gaps rows first, then each channel's new rows."""
        self._scheduled = False
        by_channel: dict[str, list[Row]] = {}
        for channel in (GAPS_CHANNEL, *(c for c in self.buffers if c != GAPS_CHANNEL)):
            rows, sent = self.buffers[channel], self.sent[channel]
            if len(rows) > sent:
                by_channel[channel] = rows[sent:]
                self.sent[channel] = len(rows)
        if by_channel:
            self.bus.publish_batches(self.exchange, by_channel)

    def taken(self) -> None:
        """The flush emptied every buffer (after ``publish``): nothing at their heads is on the bus now."""
        for channel in self.sent:
            self.sent[channel] = 0

    def returned(self, channel: str, n: int) -> None:
        """``n`` rows went back at the head of ``channel``'s buffer (Redis did not take them): they are on the
        bus already."""
        self.sent[channel] += n

    def confirm(self, received_up_to: float) -> None:
        """After a flush delivered what it took: every row received up to ``received_up_to`` (epoch seconds, the
        rows' ``ts_recv``) is in Redis, in the spill, or a gaps row. The featurizer lands a slice it closed from
        bus rows only once this covers them (``featurizer.role``), so a collector killed between its publish and
        its flush never leaves the lake a live slice built on rows it does not have."""
        self.bus.publish(confirmed_topic(self.exchange), encode_rows([(received_up_to,)]))

    def extra_gaps(self, rows: Iterable[Row]) -> None:
        """Gaps rows the flush made itself (gaps that close with the data it takes): on the bus at once."""
        rows = list(rows)
        if rows:
            self.bus.publish_batches(self.exchange, {GAPS_CHANNEL: rows})
