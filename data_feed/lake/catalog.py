"""Local catalog: the lake's register of partitions and committed files (the local stand-in for Glue).

The aggregator registers every slice file here after it is durable and before
it acknowledges the stream entries it came from; compaction and retention swap
files in one transaction (``replace``); queries take their file list from here
in one read (``snapshot``), so a file is visible once it is registered and
never twice. SQLite in WAL mode, in the lake root.

Files removed by ``replace`` are *retired*, not deleted: a reader that took its
snapshot before the swap may still open them. Each swap bumps the catalog
version; a reader's snapshot holds a lease at the version it read, and a retired
file may be deleted (``purgeable``) once its grace period has passed and no live
lease predates its retirement. A path once retired is never registered again,
so an aggregator redoing an interrupted write of a file that compaction already
merged cannot land its rows twice.

Readers open an existing catalog (``LocalCatalog.existing``): a path without one is not a lake
(``NoLake``), and is never created. A lake the reader cannot write (an analyst's read-only mount) is
opened read-only, its snapshots then hold no lease: nothing can be written there, and a compaction
running elsewhere deletes retired files only after ``lake.compaction_grace_seconds``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from data_feed.contracts.schemas import NS_PER_SECOND
from data_feed.lake.layout import Partition, SliceKey

LOG = logging.getLogger("data_feed.catalog")

CATALOG_FILE = "_catalog.sqlite"
LOCK_FILE = "_maintenance.lock"  # one compaction or retention run per lake at a time
STATS_INTERVAL_SECONDS = 30.0  # a local catalog's partition stats: one grouped SQLite query
NO_LEASE = 0  # the lease of a read-only catalog's snapshot: nothing was written
BUSY_TIMEOUT_SECONDS = 30.0
LEASE_MAX_SECONDS = 6 * 3600  # a reader's lease older than this is taken to be from a crashed process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,          -- relative to the lake root
    channel TEXT NOT NULL,
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL,
    date TEXT NOT NULL,             -- YYYY-MM-DD, the partition
    slice_start_ns INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_partition ON files (channel, exchange, symbol, date);
CREATE TABLE IF NOT EXISTS retired (
    path TEXT PRIMARY KEY,
    version INTEGER NOT NULL,       -- catalog version the swap created; readers at an older one may use the file
    retired_ns INTEGER NOT NULL,    -- wall clock of the swap
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,       -- catalog version of the reader's snapshot
    taken_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('version', 0);
"""


@dataclass(frozen=True)
class CatalogFile:
    path: str
    channel: str
    exchange: str
    symbol: str
    date: str
    slice_start_ns: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class PartitionStats:
    """How one channel and exchange lie in the lake: small-file debt is ``max_files`` (compaction merges them)."""

    files: int
    partitions: int
    max_files: int


@dataclass(frozen=True)
class Snapshot:
    """Every channel's files at one catalog version, held by a lease until released."""

    lease: int
    version: int
    files: dict[str, list[CatalogFile]]


class NoLake(LookupError):
    """A path that holds no lake: missing, not a directory, or without a catalog. The message says which."""


class MaintenanceBusy(RuntimeError):
    """Another compaction or retention run holds the lake's maintenance lock."""


@contextmanager
def maintenance_lock(root: Path) -> Iterator[None]:
    """The maintenance lock of the local lake at ``root`` (a lake on S3 has a lease object, ``lake.s3_lease``):
    an exclusive ``flock`` on ``_maintenance.lock``, ``MaintenanceBusy`` when held."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MaintenanceBusy(f"another compaction or retention run is working on {root}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def require_lake(root: str | Path) -> Path:
    """``root`` when it is a lake (a directory with a catalog); otherwise ``NoLake`` saying what is wrong."""
    root = Path(root)
    if not root.exists():
        raise NoLake(f"no lake at {root}: no such directory")
    if not root.is_dir():
        raise NoLake(f"no lake at {root}: not a directory")
    if not (root / CATALOG_FILE).is_file():
        hint = ""
        if any(root.glob("*/exchange=*/symbol=*/date=*/*.parquet")):
            hint = f"; it holds lake files: `data-feed lake repair --lake {root}` rebuilds the catalog from them"
        raise NoLake(f"no lake at {root}: no {CATALOG_FILE}{hint}")
    return root


class Catalog(Protocol):
    """What the aggregator needs of a catalog: the local one here, or Glue (``data_feed.lake.s3.GlueCatalog``)."""

    def register(self, key: SliceKey, path: str, rows: int, size: int) -> bool: ...

    def is_retired(self, path: str) -> bool: ...

    def files(self, channel: str, exchange: str | None = None, symbol: str | None = None) -> list[CatalogFile]: ...

    def partition_stats(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PartitionStats]: ...

    def close(self) -> None: ...

    @property
    def stats_interval_seconds(self) -> float:
        """How often ``partition_stats`` may be read: its cost differs by catalog."""
        ...


class MaintainedCatalog(Catalog, Protocol):
    """What compaction and retention need of a catalog (``data_feed.lake_seam``): the local one here, or Glue
    with per-partition manifests (``data_feed.lake.s3.GlueCatalog``)."""

    def partitions(self, channel: str) -> list[tuple[str, str, str]]: ...

    def visible_files(self, partition: Partition) -> list[CatalogFile]: ...

    def swap(self, partition: Partition, removed: Sequence[str], added: Sequence[CatalogFile], now_ns: int) -> None:
        """Replace the files ``removed`` of one partition by ``added`` atomically for readers; the removed
        are retired (deleted by ``purge_retired`` once ``retired_past`` frees them)."""
        ...

    def retired_past(self, grace_seconds: float, now_ns: int) -> tuple[list[str], int]:
        """Retired files no reader can still use, retired at least ``grace_seconds`` ago, and how many retired
        files are still held."""
        ...

    def mark_deleted(self, paths: Iterable[str]) -> None: ...

    def expire_partition(self, partition: Partition) -> tuple[int, int]:
        """Remove a whole partition from the lake atomically for readers; returns its files and how many of
        them were deleted at once (the rest are retired)."""
        ...

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The lake's maintenance lock; ``MaintenanceBusy`` when another run holds it."""
        ...


class LocalCatalog:
    """Partitions and files of a local lake; every method is one SQLite transaction."""

    stats_interval_seconds = STATS_INTERVAL_SECONDS

    def __init__(self, root: str | Path, read_only: bool = False) -> None:
        """The catalog of the lake at ``root``; created (with the directory) unless ``read_only``."""
        self.root = Path(root)
        self.read_only = read_only
        if read_only:
            self.db = _connect_read_only(self.root / CATALOG_FILE)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / CATALOG_FILE, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    @classmethod
    def existing(cls, root: str | Path) -> LocalCatalog:
        """The catalog of an existing lake, never created (``NoLake`` otherwise); read-only when the lake
        cannot be written."""
        root = require_lake(root)
        writable = os.access(root, os.W_OK) and os.access(root / CATALOG_FILE, os.W_OK)
        return cls(root, read_only=not writable)

    def close(self) -> None:
        self.db.close()

    def register(self, key: SliceKey, path: str, rows: int, size: int) -> bool:
        """Add (or, for a redone write of the same file, replace) one committed file. False, and nothing
        registered, when the path was retired: its rows are already in a compacted file."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT 1 FROM retired WHERE path = ?", (path,)).fetchone():
                return False
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (path, key.channel, key.exchange, key.symbol, key.date(), key.start_ns, rows, size))
        return True

    def is_retired(self, path: str) -> bool:
        return self.db.execute("SELECT 1 FROM retired WHERE path = ?", (path,)).fetchone() is not None

    def replace(self, removed: Iterable[str], added: Iterable[CatalogFile]) -> int:
        """Swap files atomically: readers see either all the old ones or all the new ones. The removed files
        are retired at the new catalog version, which is returned."""
        now = time.time_ns()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            version = self._version() + 1
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (version,))
            gone = [(p,) for p in removed]
            self.db.executemany("DELETE FROM files WHERE path = ?", gone)
            self.db.executemany("INSERT OR REPLACE INTO retired (path, version, retired_ns) VALUES (?, ?, ?)",
                                [(p, version, now) for (p,) in gone])
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [_row(f) for f in added])
        return version

    def snapshot(self) -> Snapshot:
        """One consistent read of every channel's files, with a lease that keeps them from being deleted
        (none in a read-only catalog)."""
        if self.read_only:
            with self.db:
                self.db.execute("BEGIN")
                return Snapshot(NO_LEASE, self._version(), self._all_files())
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            version = self._version()
            cur = self.db.execute("INSERT INTO leases (version, taken_ns) VALUES (?, ?)", (version, time.time_ns()))
            lease = int(cur.lastrowid or 0)
            files = self._all_files()
        return Snapshot(lease, version, files)

    def _all_files(self) -> dict[str, list[CatalogFile]]:
        files: dict[str, list[CatalogFile]] = {}
        for row in self.db.execute("SELECT * FROM files ORDER BY channel, path"):
            f = CatalogFile(*row)
            files.setdefault(f.channel, []).append(f)
        return files

    def release(self, lease: int) -> None:
        if lease == NO_LEASE:
            return
        with self.db:
            self.db.execute("DELETE FROM leases WHERE id = ?", (lease,))

    def purgeable(self, grace_seconds: float) -> tuple[list[str], int]:
        """Retired files no reader can still use and retired at least ``grace_seconds`` ago, and how many
        retired files are still held (by grace or by a reader's lease)."""
        now = time.time_ns()
        live_since = now - LEASE_MAX_SECONDS * NS_PER_SECOND
        row = self.db.execute("SELECT min(version) FROM leases WHERE taken_ns > ?", (live_since,)).fetchone()
        oldest_reader = row[0] if row and row[0] is not None else None
        free, held = [], 0
        for path, version, retired_ns in self.db.execute(
                "SELECT path, version, retired_ns FROM retired WHERE deleted = 0 ORDER BY path"):
            in_use = oldest_reader is not None and oldest_reader < version
            if in_use or retired_ns > now - int(grace_seconds * NS_PER_SECOND):
                held += 1
            else:
                free.append(str(path))
        return free, held

    def mark_deleted(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("UPDATE retired SET deleted = 1 WHERE path = ?", [(p,) for p in paths])

    def files(self, channel: str, exchange: str | None = None, symbol: str | None = None) -> list[CatalogFile]:
        sql = "SELECT * FROM files WHERE channel = ?"
        args: list[str] = [channel]
        for column, value in (("exchange", exchange), ("symbol", symbol)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return [CatalogFile(*r) for r in self.db.execute(sql + " ORDER BY path", args)]

    def partitions(self, channel: str) -> list[tuple[str, str, str]]:
        """(exchange, symbol, date) of every partition of a channel that holds a file."""
        rows = self.db.execute("SELECT DISTINCT exchange, symbol, date FROM files WHERE channel = ? ORDER BY 1, 2, 3",
                               (channel,))
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def partition_stats(self, keys: Iterable[tuple[str, str]] = ()) -> dict[tuple[str, str], PartitionStats]:
        """Per (channel, exchange) (every one, whatever ``keys`` asks: one query): files, partitions holding
        them and the files of the fullest partition."""
        rows = self.db.execute("SELECT channel, exchange, SUM(n), COUNT(*), MAX(n) FROM (SELECT channel, exchange, "
                               "COUNT(*) AS n FROM files GROUP BY channel, exchange, symbol, date) "
                               "GROUP BY channel, exchange")
        return {(str(c), str(e)): PartitionStats(int(f), int(p), int(m)) for c, e, f, p, m in rows}

    def visible_files(self, partition: Partition) -> list[CatalogFile]:
        channel, exchange, symbol, date = partition
        return [f for f in self.files(channel, exchange, symbol) if f.date == date]

    def swap(self, partition: Partition, removed: Sequence[str], added: Sequence[CatalogFile], now_ns: int) -> None:
        self.replace(removed, added)

    def retired_past(self, grace_seconds: float, now_ns: int) -> tuple[list[str], int]:
        """``purgeable``: readers' leases and the grace period are on this host's clock, not ``now_ns``."""
        return self.purgeable(grace_seconds)

    def expire_partition(self, partition: Partition) -> tuple[int, int]:
        """Retire the partition's files in one swap: they are deleted once no reader's snapshot holds them."""
        paths = [f.path for f in self.visible_files(partition)]
        self.replace(paths, [])
        return len(paths), 0

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return maintenance_lock(self.root)

    def _version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection: shared with live writers when the WAL files are there to read; otherwise (a
    cleanly stopped lake on a read-only mount, where SQLite cannot create them) as an immutable file."""
    uri = path.resolve().as_uri()
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return db
    except sqlite3.OperationalError as err:
        db.close()
        LOG.debug("catalog %s: read-only open failed (%s); opening it as immutable", path, err)
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)


def _row(f: CatalogFile) -> tuple[str, str, str, str, str, int, int, int]:
    return (f.path, f.channel, f.exchange, f.symbol, f.date, f.slice_start_ns, f.rows, f.bytes)
