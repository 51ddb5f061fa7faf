"""Spill: stream entries a writer could not put in Redis, kept on local disk in stream order.

A writer (a collector, the featurizer) spills when a stream is at its bound
(``redis.stream_maxlen``, because the aggregator is behind) or Redis does not
answer. Entries keep the explicit ids they were given (``cache.EntryIds``), so a
spill drained after a restart still lands in order and exactly once. While a
stream has a backlog, every new entry of that stream joins the back of it: the
stream never sees entries out of order.

Layout: ``{root}/{stream key, ':' -> '~'}/{ms:013d}-{seq:020d}.mpk.zst``, one file
per spill call, named after its first entry id so a directory listing is the
order; each file is zstd-compressed msgpack ``[[entry id, {field: value}], ...]``
written to a temporary name and renamed. The spill is bounded by ``max_bytes``
(compressed); ``append`` refuses what does not fit, and the writer records the
refused records as an ``overflow`` gap.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zstandard

from data_feed.cache.streams import parse_entry_id

LOG = logging.getLogger("data_feed.spill")

SPILL_SUFFIX = ".mpk.zst"
KEY_SEPARATOR_ON_DISK = "~"  # ':' of a stream key, in a directory name
COMPRESSION_LEVEL = 3


@dataclass(frozen=True)
class SpilledEntry:
    key: str
    entry_id: str
    fields: dict[bytes, bytes]


Entries = list[tuple[str, dict[bytes, bytes]]]  # (entry id, fields), in id order


@dataclass
class Drain:
    """Spilled entries one write takes back, per stream, and the streams it leaves a backlog in (whose new
    entries must follow into the spill to keep the stream's order)."""

    spilled: list[tuple[str, Entries]]
    used: dict[str, int]  # entries the write adds per stream
    behind: set[str]


def _file_name(entry_id: str) -> str:
    ms, seq = parse_entry_id(entry_id)
    return f"{ms:013d}-{seq:020d}{SPILL_SUFFIX}"


class Spill:
    """Per-stream FIFOs of entries on disk under ``root``, at most ``max_bytes`` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.bytes = 0
        self._files: dict[str, deque[tuple[Path, int]]] = {}
        self._load()

    def _load(self) -> None:
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir():
                continue
            key = directory.name.replace(KEY_SEPARATOR_ON_DISK, ":")
            for tmp in directory.glob("*.tmp"):
                tmp.unlink(missing_ok=True)  # a write cut short by a crash: never renamed, never counted
            files = sorted(directory.glob(f"*{SPILL_SUFFIX}"))
            if files:
                self._files[key] = deque((f, f.stat().st_size) for f in files)
                self.bytes += sum(size for _, size in self._files[key])
        if self.bytes:
            LOG.info("spill %s holds %d bytes from an earlier run for %s", self.root, self.bytes, sorted(self._files))

    def backlogged(self) -> list[str]:
        """Streams with a backlog."""
        return [k for k, files in self._files.items() if files]

    def has(self, key: str) -> bool:
        return bool(self._files.get(key))

    def files(self, key: str) -> int:
        return len(self._files.get(key, ()))

    def backlog_files(self) -> int:
        return sum(len(files) for files in self._files.values())

    def append(self, key: str, entries: list[tuple[str, dict[bytes, bytes]]]) -> bool:
        """Add entries (in id order, after every entry already spilled for ``key``); False when full."""
        if not entries:
            return True
        payload = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL).compress(
            msgpack.packb([[eid, fields] for eid, fields in entries], use_bin_type=True))
        if self.bytes + len(payload) > self.max_bytes:
            return False
        directory = self.root / key.replace(":", KEY_SEPARATOR_ON_DISK)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / _file_name(entries[0][0])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, path)
        self._files.setdefault(key, deque()).append((path, len(payload)))
        self.bytes += len(payload)
        return True

    def head(self, key: str) -> list[SpilledEntry]:
        """The oldest spilled file's entries of ``key`` (empty without a backlog)."""
        files = self._files.get(key)
        if not files:
            return []
        return read_spill_file(key, files[0][0])

    def peek(self, key: str, max_files: int) -> list[list[SpilledEntry]]:
        """The entries of the oldest ``max_files`` files of ``key``, file by file."""
        files = list(self._files.get(key, ()))[:max_files]
        return [read_spill_file(key, path) for path, _ in files]

    def fitting(self, room: Callable[[str], int], max_files: int) -> Drain:
        """What one write can take back: per stream with a backlog, the entries of its oldest files while
        ``room(key)`` (entries the stream may still take) lasts, whole files only, at most ``max_files``."""
        drain = Drain([], {}, set())
        for key in self.backlogged():
            left, entries, taken = room(key), [], 0
            for file_entries in self.peek(key, max_files):
                if left <= 0:
                    break
                entries += [(e.entry_id, e.fields) for e in file_entries]
                left -= len(file_entries)
                taken += 1
            if entries:
                drain.spilled.append((key, entries))
                drain.used[key] = len(entries)
            if taken < self.files(key):
                drain.behind.add(key)
        return drain

    def pop(self, key: str) -> None:
        """Forget the oldest file of ``key``: its entries are in Redis now."""
        path, size = self._files[key].popleft()
        path.unlink(missing_ok=True)
        self.bytes -= size

    def entries(self, key: str) -> list[SpilledEntry]:
        """Every spilled entry of ``key``, oldest first (read at start-up, to know what the spill holds)."""
        return [e for path, _ in self._files.get(key, ()) for e in read_spill_file(key, path)]


def read_spill_file(key: str, path: Path) -> list[SpilledEntry]:
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    entries = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return [SpilledEntry(key, eid, dict(fields)) for eid, fields in entries]
