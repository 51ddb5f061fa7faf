"""The aggregator's journal ledger: which stream entries are in which lake files, and what may be settled.

Pure (no Redis, no files): the aggregator (``data_feed.aggregator.role``) tells it what it read, journalled and
committed, and asks it what a commit settles: the entries it acknowledges (every slice they have records
in is committed), the journal records it may drop (all their entries acknowledged) and the id the stream
may be trimmed below (the oldest entry still unacknowledged). The aggregator turns that answer into one
MULTI/EXEC. ``JournalRecord`` is the journal's value format (a Redis hash per stream: lake file -> record),
read back by ``query --live`` too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import msgpack

from data_feed.lake.layout import SliceKey


@dataclass(frozen=True)
class JournalRecord:
    """One lake file of one slice and the stream entries whose records for that slice it holds."""

    key: SliceKey
    entries: tuple[str, ...]
    committed: bool

    def pack(self) -> bytes:
        k = self.key
        packed: bytes = msgpack.packb([k.channel, k.exchange, k.symbol, k.start_ns, list(self.entries),
                                       self.committed])
        return packed

    @classmethod
    def unpack(cls, raw: bytes) -> JournalRecord:
        channel, exchange, symbol, start_ns, entries, committed = msgpack.unpackb(raw, raw=False)
        return cls(SliceKey(channel, exchange, symbol, int(start_ns)), tuple(entries), bool(committed))


@dataclass(frozen=True)
class Settlement:
    """What one commit settles on its stream."""

    done: list[str]  # entries to acknowledge: every slice they have records in is committed
    stale: list[str]  # journal records (lake paths) to delete: all their entries acknowledged
    floor: str | None  # trim the stream below this id (only when something was acknowledged)


class Ledger:
    """Per stream: entries read and not acknowledged (with the slices they still wait for), committed journal
    records whose entries are not all acknowledged, and the last entry read; per slice, the entries already
    in a lake file (a record of them met again after a crash is skipped)."""

    def __init__(self, streams: list[str]) -> None:
        # entry id -> slices its records are in that are not committed yet, per stream (in stream order)
        self.unacked: dict[str, OrderedDict[str, set[SliceKey]]] = {k: OrderedDict() for k in streams}
        # committed journal records whose entries are not all acknowledged, per stream
        self.journal: dict[str, dict[str, JournalRecord]] = {k: {} for k in streams}
        self.committed: dict[SliceKey, set[str]] = {}  # entries already in a lake file, per slice
        self.last_read: dict[str, str] = {}

    def in_lake(self, sk: SliceKey, eid: str) -> bool:
        """Whether entry ``eid``'s records of slice ``sk`` are already in a committed lake file."""
        return eid in self.committed.get(sk, ())

    def hold(self, key: str, eid: str, slices: set[SliceKey]) -> None:
        """Entry ``eid`` of stream ``key`` waits for ``slices`` to be committed before it is acknowledged."""
        self.unacked[key][eid] = slices

    def read_up_to(self, key: str, eid: str) -> None:
        self.last_read[key] = eid

    def acknowledged(self, key: str, ids: list[str]) -> None:
        for eid in ids:
            self.unacked[key].pop(eid, None)

    def unacknowledged(self) -> int:
        return sum(len(v) for v in self.unacked.values())

    def remember(self, key: str, path: str, record: JournalRecord) -> None:
        """A committed lake file: its entries count as landed for its slice."""
        self.journal[key][path] = record
        self.committed.setdefault(record.key, set()).update(record.entries)

    def commit(self, key: str, path: str, record: JournalRecord, settle: bool) -> Settlement:
        """Record ``path`` as committed; with ``settle``, say what that lets the stream settle (the entries it
        completes leave the unacknowledged set now, the stale records when ``forget`` is called)."""
        self.remember(key, path, replace(record, committed=True))
        if not settle:
            return Settlement([], [], None)
        done = self._complete(key, record)
        stale = self.settled_records(key)
        return Settlement(done, stale, self.trim_floor(key) if done else None)

    def _complete(self, key: str, record: JournalRecord) -> list[str]:
        """Entries of ``record`` with no other slice left to write; removed from the unacknowledged set."""
        pending = self.unacked[key]
        done = []
        for eid in record.entries:
            slices = pending.get(eid)
            if slices is None:
                continue
            slices.discard(record.key)
            if not slices:
                done.append(eid)
                del pending[eid]
        return done

    def settled_records(self, key: str) -> list[str]:
        """Journal records of ``key`` none of whose entries is still unacknowledged."""
        pending = self.unacked[key]
        return [path for path, rec in self.journal[key].items() if not any(e in pending for e in rec.entries)]

    def trim_floor(self, key: str) -> str | None:
        """Lowest entry id still needed: the oldest unacknowledged one, or just past the last one read."""
        pending = self.unacked[key]
        if pending:
            return next(iter(pending))  # entries are added in stream order
        last = self.last_read.get(key)
        if last is None:
            return None
        ms, seq = last.split("-")
        return f"{ms}-{int(seq) + 1}"

    def forget(self, key: str, stale: list[str]) -> None:
        """Drop settled journal records (deleted from Redis by the caller)."""
        for path in stale:
            record = self.journal[key].pop(path)
            entries = self.committed.get(record.key)
            if entries is not None:
                entries.difference_update(record.entries)
                if not entries:
                    del self.committed[record.key]
