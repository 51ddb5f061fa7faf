"""Local catalog: the lake's register of partitions and committed files (the local stand-in for Glue).

The aggregator registers every slice file here after it is durable and before
it acknowledges the stream entries it came from; compaction swaps files in one
transaction; queries list files from here, so a file is visible once it is
registered and never twice. SQLite in WAL mode, in the lake root.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from data_feed.lake import SliceKey

CATALOG_FILE = "_catalog.sqlite"
BUSY_TIMEOUT_SECONDS = 30.0

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


class LocalCatalog:
    """Partitions and files of a local lake; every method is one SQLite transaction."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / CATALOG_FILE, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def register(self, key: SliceKey, path: str, rows: int, size: int) -> None:
        """Add (or, for a redone write of the same file, replace) one committed file."""
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (path, key.channel, key.exchange, key.symbol, key.date(), key.start_ns, rows, size))

    def replace(self, removed: Iterable[str], added: Iterable[CatalogFile]) -> None:
        """Swap files atomically: readers see either all the old ones or all the new ones."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in removed])
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [_row(f) for f in added])

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


def _row(f: CatalogFile) -> tuple[str, str, str, str, str, int, int, int]:
    return (f.path, f.channel, f.exchange, f.symbol, f.date, f.slice_start_ns, f.rows, f.bytes)
