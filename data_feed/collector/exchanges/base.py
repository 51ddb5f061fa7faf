"""What every collector feed adds to cryptofeed's exchange class: frame counting, bad-frame survival, gaps.

cryptofeed tears a connection down when its message handler raises; one
malformed frame must instead be logged (exchange, frame excerpt), counted and
skipped while the connection keeps running.

Gaps are data: a reconnect (after the exchange closed the socket, or after the
watchdog found it silent) and a skipped frame become rows of the ``gaps``
table, one per channel and symbol the connection carried, so a reader of the
lake can tell a quiet market from missing data. Such an outage is *opened* at
detection and its row written with the next record of that channel and symbol,
bounding the missing trade ids (``collector.gaps``). Exchange modules add their
own (sequence gaps, failed book snapshots) through `gap`; so is a skipped frame.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptofeed.exceptions import UnsupportedSymbol

from data_feed.contracts.schemas import GapReason
from data_feed.observability import metrics

LOG = logging.getLogger("data_feed.collector")

FRAME_EXCERPT_CHARS = 200
STALL_FRACTION_OF_WATCHDOG = 0.9  # a reconnect after this much of the watchdog's timeout in silence was a stall


class GapRecorded(Exception):
    """A failure its exchange module already wrote a precise gaps row for; the frame is skipped without another."""


class GapWriter(Protocol):
    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None: ...

    def open_gap(self, symbol: str, channel: str, reason: str, detail: str = "",
                 when: float | None = None) -> None: ...


class LoggedGaps:
    """Base of exchange quirk classes that report gaps: logs them when no collector (CollectorFeedMixin,
    which comes first in the MRO and also writes the gaps row) is mixed in, e.g. in a direct parse."""

    id: str

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        LOG.warning("exchange=%s channel=%s symbol=%s: gap (%s) %s", self.id, channel, symbol, reason, detail)


@dataclass(frozen=True)
class Endpoints:
    """Where a simulated exchange lives: https/wss base URLs of the simulator."""

    base_url: str
    ws_base: str


class CollectorFeedMixin:
    """Mixed in before the cryptofeed exchange class: ``class X(CollectorFeedMixin, Binance)``."""

    id: str
    timeout: float
    frames_received = 0
    gap_writer: GapWriter | None = None
    after_frame: Callable[[], None] | None = None  # the writer's: the frame's rows go on the bus this loop pass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._df_subscribed: set[str] = set()
        super().__init__(*args, **kwargs)
        # the exchange class's handler, looked up once: per frame, super() would build a proxy and search the MRO
        self._parse: Callable[[Any, Any, float], Awaitable[None]] = super().message_handler  # type: ignore[misc]

    def connect(self) -> list[Any]:
        """cryptofeed's connections, each remembering when its last frame came before it reopens.

        cryptofeed clears ``last_message`` on reopening; keeping it here costs nothing per frame.
        """
        connections: list[Any] = super().connect()  # type: ignore[misc]
        for conn, *_ in connections:
            conn.df_silent_since = None
            conn._open = _remembering_open(conn, conn._open)
        return connections

    async def message_handler(self, msg: str, conn: Any, timestamp: float) -> None:
        self.frames_received += 1
        try:
            await self._parse(msg, conn, timestamp)
        except GapRecorded as err:
            metrics.BAD_FRAMES.labels(self.id).inc()
            LOG.error("exchange=%s conn=%s: skipped a frame: %s", self.id, getattr(conn, "uuid", "?"), err)
        except Exception as err:
            metrics.BAD_FRAMES.labels(self.id).inc()
            excerpt = msg[:FRAME_EXCERPT_CHARS] if isinstance(msg, str) else repr(msg)[:FRAME_EXCERPT_CHARS]
            LOG.error("exchange=%s conn=%s: skipped a frame that could not be parsed (%s: %s): %r",
                      self.id, getattr(conn, "uuid", "?"), type(err).__name__, err, excerpt)
            self.connection_gap(conn, GapReason.BAD_FRAME, f"{type(err).__name__}: {err}"[:FRAME_EXCERPT_CHARS])
        if self.after_frame is not None:
            self.after_frame()

    async def subscribe(self, conn: Any) -> None:
        """Every (re)connection subscribes; a second subscribe of one connection follows a reconnect."""
        if conn.uuid in self._df_subscribed:
            silent_since = getattr(conn, "df_silent_since", None)
            now = time.time()
            stalled = silent_since is not None and now - silent_since >= self.timeout * STALL_FRACTION_OF_WATCHDOG
            since = f"{silent_since:.6f}" if silent_since is not None else "?"
            reason = GapReason.STALL if stalled else GapReason.DISCONNECT
            LOG.warning("exchange=%s conn=%s: reconnected (%s); no data from %s to %.6f", self.id, conn.uuid,
                        reason, since, now)
            self.connection_gap(conn, reason, f"no frames from {since} to {now:.6f}")
        self._df_subscribed.add(conn.uuid)
        await super().subscribe(conn)  # type: ignore[misc]

    def connection_gap(self, conn: Any, reason: GapReason, detail: str) -> None:
        """An outage of every channel and symbol carried by ``conn``, all stamped with one detection time. A
        reconnect or a stall is *opened*: its row is written with the symbol's next record, which bounds the
        missing ids. A skipped frame is written at once, unbounded: it belongs to one unknown channel, and the
        records around it may come over other connections (their order against it is not the exchange's)."""
        when = time.time()
        for channel, symbol in self.carried(conn):
            LOG.warning("exchange=%s channel=%s symbol=%s: gap (%s) %s", self.id, channel, symbol, reason, detail)
            if self.gap_writer is None:
                continue
            if reason is GapReason.BAD_FRAME:
                self.gap_writer.gap(symbol, channel, reason, detail=detail, when=when)
            else:
                self.gap_writer.open_gap(symbol, channel, reason, detail, when)

    def carried(self, conn: Any) -> list[tuple[str, str]]:
        out = []
        for chan, symbols in (getattr(conn, "subscription", None) or {}).items():
            try:
                std_channel = self.exchange_channel_to_std(chan)  # type: ignore[attr-defined]
            except (KeyError, ValueError):
                std_channel = chan
            for sym in symbols:
                out.append((str(std_channel), self._std_symbol(sym)))
        return out

    def _std_symbol(self, symbol: str) -> str:
        try:
            return str(self.exchange_symbol_to_std_symbol(symbol))  # type: ignore[attr-defined]
        except (KeyError, ValueError, UnsupportedSymbol):  # a symbol cryptofeed does not list: as the exchange names it
            return symbol

    def gap(self, symbol: str, channel: str, reason: str, first_missing: int | None = None,
            last_missing: int | None = None, detail: str = "", when: float | None = None) -> None:
        LOG.warning("exchange=%s channel=%s symbol=%s: gap (%s) %s", self.id, channel, symbol, reason, detail)
        if self.gap_writer is not None:
            self.gap_writer.gap(symbol, channel, reason, first_missing, last_missing, detail, when)


def _remembering_open(conn: Any, original: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def _open() -> None:
        conn.df_silent_since = conn.last_message or conn.df_silent_since
        await original()

    return _open
