"""Outage accounting of one collector: which records reached the cache last, and the gaps still open.

Pure bookkeeping, no I/O (the writer persists marks in the collector state hash).
A *mark* is the last record of a (channel, symbol) that reached the cache: its
receive time and, for trades with integer ids, the highest id. An outage
(a reconnect, a stall, a skipped frame, the collector itself not running) opens a
gap for every (channel, symbol) it touched; the gap closes with the first record
that arrives after it, and becomes a ``gaps`` row whose ``first_missing`` /
``last_missing`` bound the trade ids that may be missing (the mark's id + 1 to the
first new id - 1) and whose detail gives the time range without data.

Live consumers learn of an outage when it opens, not only when its row closes it: ``open_notice`` is a
gaps row without an end (``missing_to_ts`` null, detail starting ``OPEN_NOTICE``) that the writer
publishes on the bus at once (never cached: the closing row is the one the lake keeps). The featurizer
holds every slice from its start as incomplete until the closing row comes, so data of other symbols
moving the exchange's watermark cannot close a slice of this one as whole in the meantime.

Rows arrive in buffers that the writer flushes whole. A gap opened while a buffer
holds rows from before the outage remembers the buffer position (``boundary``):
rows before it are the outage's past, rows after it its future.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from data_feed.cache.streams import Mark
from data_feed.contracts.schemas import OPEN_NOTICE, Channel, GapReason

TRADES = Channel.TRADES.value
TRADE_ID_INDEX = 3  # of a cached trades row: (symbol, ts_event, ts_recv, id, id_text, side, price, amount)
EVENT_INDEX, RECV_INDEX = 1, 2
# (symbol, ts_event, ts_recv, channel, reason, first_missing, last_missing, detail, missing_from_ts, missing_to_ts)
GapRow = tuple[str, float, float, str, str, int | None, int | None, str, int | None, int | None]
Key = tuple[str, str]  # (channel, symbol)


@dataclass
class OpenGap:
    reason: GapReason
    detected: float
    since: float | None  # receive time of the last record before the outage, when known
    after_id: int | None  # highest trade id before the outage, when known
    detail: str
    boundary: int = 0  # rows of the current buffer before this position precede the outage
    since_event: float | None = None  # exchange time of the newest record before the outage, when known


@dataclass(frozen=True)
class Summary:
    """What one buffer holds for one symbol."""

    first_recv: float
    last_recv: float
    min_id: int | None
    max_id: int | None
    max_event: float = 0.0
    min_event: float = 0.0


_SYMBOL, _RECV, _EVENT, _TRADE_ID = itemgetter(0), itemgetter(RECV_INDEX), itemgetter(EVENT_INDEX), \
    itemgetter(TRADE_ID_INDEX)


# Every flush accounts what it takes, so the loops below run in C (map, min, max): no Python per row unless
# a buffer mixes symbols (grouped) or holds trades without integer ids (filtered).

def _by_symbol(rows: Sequence[Sequence[Any]]) -> dict[str, Sequence[Sequence[Any]]]:
    symbols = set(map(_SYMBOL, rows))
    if len(symbols) == 1:
        return {symbols.pop(): rows}
    grouped: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return dict(grouped)


def summarize(channel: str, rows: Sequence[Sequence[Any]]) -> dict[str, Summary]:
    """Per symbol: first and last receive time and (trades) the lowest and highest integer id."""
    out = {}
    for symbol, group in _by_symbol(rows).items():
        recvs = list(map(_RECV, group))
        events = list(map(_EVENT, group))
        out[symbol] = Summary(min(recvs), max(recvs), *_id_range(group) if channel == TRADES else (None, None),
                              max(events), min(events))
    return out


def newest(channel: str, rows: Sequence[Sequence[Any]]) -> dict[str, Mark]:
    """Per symbol, the mark ``rows`` reach: newest receive time, highest integer trade id, newest exchange time
    (what every flush needs; ``summarize`` also finds the oldest, which only closing a gap needs)."""
    out = {}
    for symbol, group in _by_symbol(rows).items():
        last_id = _id_range(group, lowest=False)[1] if channel == TRADES else None
        out[symbol] = Mark(max(map(_RECV, group)), last_id, max(map(_EVENT, group)))
    return out


def _id_range(rows: Sequence[Sequence[Any]], lowest: bool = True) -> tuple[int | None, int | None]:
    """Lowest (unless not ``lowest``) and highest integer trade id of ``rows`` (None where only text ids)."""
    ids = list(map(_TRADE_ID, rows))
    try:
        return (min(ids) if lowest else None, max(ids)) if ids else (None, None)
    except TypeError:  # None among the ids: only the integer ones count
        known = [i for i in ids if i is not None]
        return (min(known) if lowest else None, max(known)) if known else (None, None)


@dataclass
class GapTracker:
    marks: dict[Key, Mark] = field(default_factory=dict)
    open: dict[Key, list[OpenGap]] = field(default_factory=dict)

    def open_gap(self, channel: str, symbol: str, reason: GapReason, detected: float, detail: str,
                 boundary: int = 0, since: float | None = None) -> None:
        """An outage of (channel, symbol) detected at ``detected``; ``boundary`` as in the module docstring;
        ``since``: when data may have stopped, for a (channel, symbol) without a mark."""
        mark = self.marks.get((channel, symbol))
        gap = OpenGap(reason, detected, mark.ts_recv if mark else since, mark.last_id if mark else None, detail,
                      boundary, mark.ts_event if mark else None)
        self.open.setdefault((channel, symbol), []).append(gap)

    def observe(self, channel: str, rows: Sequence[Sequence[Any]]) -> list[GapRow]:
        """Account one flushed buffer of ``channel``; returns the gaps rows of the outages it closes."""
        out: list[GapRow] = []
        for (gap_channel, gap_symbol), gaps in list(self.open.items()):
            if gap_channel == channel and gaps:
                out += self._close(channel, gap_symbol, gaps, rows)
        for symbol, mark in newest(channel, rows).items():
            self._advance(channel, symbol, mark)
        return out

    def _close(self, channel: str, symbol: str, gaps: list[OpenGap], rows: Sequence[Sequence[Any]]) -> list[GapRow]:
        boundary = min(g.boundary for g in gaps)
        before = [r for r in rows[:boundary] if r[0] == symbol]
        after = [r for r in rows[boundary:] if r[0] == symbol]
        if before:  # rows that preceded the outage: they raise what the gap starts from
            self._advance(channel, symbol, newest(channel, before)[symbol])
            mark = self.marks[(channel, symbol)]
            for gap in gaps:
                gap.since, gap.after_id, gap.since_event = mark.ts_recv, mark.last_id, mark.ts_event
        if not after:
            for gap in gaps:
                gap.boundary = 0  # the next buffer is wholly after the outage
            return []
        del self.open[(channel, symbol)]
        first = summarize(channel, after)[symbol]
        return [self._row(channel, symbol, gap, first.first_recv, first.min_id, first.min_event) for gap in gaps]

    def _advance(self, channel: str, symbol: str, new: Mark) -> None:
        old = self.marks.get((channel, symbol))
        self.marks[(channel, symbol)] = new if old is None else old.merged(new)

    @staticmethod
    def _row(channel: str, symbol: str, gap: OpenGap, resumed: float | None, first_id: int | None,
             resumed_event: float | None = None) -> GapRow:
        first_missing = None if gap.after_id is None else gap.after_id + 1
        last_missing = None if first_id is None else first_id - 1
        since = "?" if gap.since is None else f"{gap.since:.6f}"
        until = "?" if resumed is None else f"{resumed:.6f}"
        detail = f"{gap.detail}; no data from {since} to {until}" if gap.detail else f"no data from {since} to {until}"
        return (symbol, gap.detected, gap.detected, channel, gap.reason.value, first_missing, last_missing, detail,
                _ns(gap.since_event), _ns(resumed_event))

    def open_notice(self, channel: str, symbol: str) -> GapRow:
        """The bus-only row announcing the newest open gap of (channel, symbol): from the mark's exchange time
        (else its receive time, else the detection time), no end yet."""
        gap = self.open[(channel, symbol)][-1]
        start = gap.since_event or gap.since or gap.detected
        return (symbol, gap.detected, gap.detected, channel, gap.reason.value, None, None,
                f"{OPEN_NOTICE}{gap.detail}", _ns(start), None)

    def close_all(self, now: float, stopping: Sequence[Key]) -> list[GapRow]:
        """At a clean stop: every open gap (with no end) and a ``stopped`` row for each of ``stopping``."""
        out = [self._row(ch, sym, gap, None, None) for (ch, sym), gaps in self.open.items() for gap in gaps]
        self.open.clear()
        for key in stopping:
            self.open_gap(key[0], key[1], GapReason.STOPPED, now, "collector stopped")
            out += [self._row(key[0], key[1], gap, None, None) for gap in self.open.pop(key)]
        return out


def _ns(seconds: float | None) -> int | None:
    """Float epoch seconds (as cached) to int64 ns at the microsecond they hold; None stays None."""
    return None if not seconds else round(seconds * 1_000_000) * 1000
