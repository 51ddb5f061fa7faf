"""The lake: Hive-partitioned, zstd parquet time slices; the one definition of lake paths.

Layout::

    {root}/{channel}/exchange={EXCHANGE}/symbol={SYMBOL}/date={YYYY-MM-DD}/{slice}.parquet

A slice file's name comes from what it holds (slice start by exchange time and
the first of the stream entries it was cut from; the aggregator's journal
records the full list), so a redone write replaces the same file instead of
adding a duplicate, and records arriving after their slice was written land in
an additional part named after their own first entry. Writes go to a temporary
name in the same directory, are fsynced, then renamed: a reader sees a whole
file or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from data_feed.contracts.schemas import NS_PER_SECOND, PARTITION_KEYS, parquet_write_options, schema_for

TMP_PREFIX = ".tmp-"
COMPACT_TAG = "c"  # marks a compacted file's name: {first slice}-{last slice}-c{digest}.parquet
COMPACT_DIGEST_CHARS = 16
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # a slice start in file names
DATE_FORMAT = "%Y-%m-%d"  # the date= partition value (UTC day of the slice start)


@dataclass(frozen=True, order=True)
class SliceKey:
    channel: str
    exchange: str
    symbol: str
    start_ns: int  # slice start, exchange time

    def date(self) -> str:
        return datetime.fromtimestamp(self.start_ns / NS_PER_SECOND, tz=UTC).strftime(DATE_FORMAT)

    def stamp(self) -> str:
        return datetime.fromtimestamp(self.start_ns / NS_PER_SECOND, tz=UTC).strftime(STAMP_FORMAT)


def slice_start(ts_event_ns: int, slice_seconds: int) -> int:
    width = slice_seconds * NS_PER_SECOND
    return ts_event_ns - ts_event_ns % width


def date_start_ns(date: str) -> int:
    """The first instant (ns UTC) of a ``date=`` partition value."""
    return int(datetime.strptime(date, DATE_FORMAT).replace(tzinfo=UTC).timestamp()) * NS_PER_SECOND


def partition_relpath(channel: str, exchange: str, symbol: str, date: str) -> str:
    """A partition's directory relative to the lake root."""
    return f"{channel}/exchange={exchange}/symbol={symbol}/date={date}"


def partition_prefix(channel: str, exchange: str | None = None, symbol: str | None = None) -> str:
    """The key prefix (ending in ``/``) under which every partition of the channel (of one exchange, and
    symbol) lies."""
    prefix = channel + "/"
    if exchange is not None:
        prefix += f"exchange={exchange}/"
        if symbol is not None:
            prefix += f"symbol={symbol}/"
    return prefix


Partition = tuple[str, str, str, str]  # channel, exchange, symbol, date


def partition_of(relpath: str) -> Partition | None:
    """(channel, exchange, symbol, date) of a path relative to the lake root; None outside a partition."""
    parts = relpath.split("/")
    if len(parts) != len(PARTITION_KEYS) + 2 or not all("=" in p for p in parts[1:-1]):
        return None
    values = dict(p.split("=", 1) for p in parts[1:-1])
    if set(values) != set(PARTITION_KEYS):
        return None
    return parts[0], values["exchange"], values["symbol"], values["date"]


def partition_dir(root: Path, key: SliceKey) -> Path:
    return root / partition_relpath(key.channel, key.exchange, key.symbol, key.date())


def slice_file_name(key: SliceKey, first_entry_id: str) -> str:
    """Deterministic from content: the slice and the first stream entry its rows came from."""
    return f"{key.stamp()}-{first_entry_id.replace('-', '_')}.parquet"


def slice_relpath(key: SliceKey, first_entry_id: str) -> str:
    """A slice file's path relative to the lake root: its name in catalogs and journals."""
    return str(partition_dir(Path(), key) / slice_file_name(key, first_entry_id))


def write_slice(root: Path, key: SliceKey, table: pa.Table, first_entry_id: str, compression_level: int) -> Path:
    """Write one slice atomically and durably; returns the final path."""
    table = table.cast(schema_for(key.channel))
    final = root / slice_relpath(key, first_entry_id)
    directory = final.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    try:
        pq.write_table(table, tmp, **parquet_write_options(key.channel, compression_level))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        tmp.replace(final)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind
        raise
    _fsync_dir(directory)
    return final


def compacted_file_name(first: SliceKey, last: SliceKey, members: list[str]) -> str:
    """Deterministic from content: the slices it spans and a digest of the files merged into it, so a
    compaction redone after a crash rewrites the same file."""
    return f"{first.stamp()}-{last.stamp()}-{COMPACT_TAG}{members_digest(members)}.parquet"


def is_compacted(name: str) -> bool:
    """Whether a lake file name is a compacted file's (``compacted_file_name``) rather than a slice's."""
    return name.removesuffix(".parquet").rsplit("-", 1)[-1].startswith(COMPACT_TAG)


@dataclass(frozen=True)
class FileName:
    """What a lake file's name says: the slices it spans and, for a compacted file, its members' digest."""

    first_start_ns: int
    last_start_ns: int
    digest: str | None  # compacted files only


def parse_file_name(name: str) -> FileName:
    """The inverse of ``slice_file_name`` and ``compacted_file_name``; ``ValueError`` for any other name."""
    parts = name.removesuffix(".parquet").split("-")
    try:
        starts = [_stamp_ns(p) for p in parts[:-1]]
    except ValueError:
        raise ValueError(f"{name!r} is not a lake file name") from None
    if len(parts) == 2 and name.endswith(".parquet"):
        return FileName(starts[0], starts[0], None)
    compacted = parts[-1].startswith(COMPACT_TAG) and len(parts[-1]) == 1 + COMPACT_DIGEST_CHARS
    if len(parts) == 3 and compacted and name.endswith(".parquet"):
        return FileName(starts[0], starts[1], parts[-1][1:])
    raise ValueError(f"{name!r} is not a lake file name")


def slice_start_of(name: str) -> int:
    """The (first) slice start a lake file's name begins with."""
    return _stamp_ns(name.split("-", 1)[0])


def _stamp_ns(stamp: str) -> int:
    return int(datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC).timestamp()) * NS_PER_SECOND


def members_digest(members: list[str]) -> str:
    """The digest a compacted file's name carries: of its members' paths, in merge order."""
    return hashlib.sha256("\n".join(members).encode()).hexdigest()[:COMPACT_DIGEST_CHARS]


def write_merged(root: Path, relpath: str, channel: str, sources: list[str], compression_level: int) -> int:
    """Concatenate lake files, in the given order, into one file written atomically and durably; returns
    its size. Reads one source at a time, so memory stays at one source file."""
    schema = schema_for(channel)
    final = root / relpath
    tmp = final.parent / f"{TMP_PREFIX}{final.name}.{os.getpid()}"
    with pq.ParquetWriter(tmp, schema, **parquet_write_options(channel, compression_level)) as writer:
        for source in sources:
            writer.write_table(pq.read_table(root / source, schema=schema))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.replace(final)
    _fsync_dir(final.parent)
    return final.stat().st_size


class SliceStore(Protocol):
    """Where slice files live: a local directory (``LocalStore``) or S3 (``data_feed.lake.s3.S3Store``)."""

    def write_slice(self, key: SliceKey, table: pa.Table, first_entry_id: str,
                    compression_level: int) -> tuple[str, int]: ...

    def read(self, relpath: str, schema: pa.Schema) -> pa.Table: ...

    def discard(self, relpath: str) -> None:
        """Drop a file written but refused by the catalog (its path was retired), or leave it to maintenance."""
        ...


class MaintainedStore(SliceStore, Protocol):
    """What compaction and retention need of a store (``data_feed.lake_seam``)."""

    def uri(self, relpath: str) -> str: ...

    def write_merged(self, relpath: str, channel: str, sources: Sequence[str], compression_level: int) -> tuple[
            int, int, int]:
        """Concatenate lake files in order into one, written atomically; returns its size, the rows read and
        the rows the written file holds."""
        ...

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete files (paths relative to the lake root); one already gone is no error."""
        ...


class LocalStore:
    """Slice files under a local lake root: atomic rename, fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write_slice(self, key: SliceKey, table: pa.Table, first_entry_id: str,
                    compression_level: int) -> tuple[str, int]:
        """Write one slice; returns its path relative to the root and its size."""
        path = write_slice(self.root, key, table, first_entry_id, compression_level)
        return str(path.relative_to(self.root)), path.stat().st_size

    def read(self, relpath: str, schema: pa.Schema) -> pa.Table:
        return pq.read_table(self.root / relpath, schema=schema)

    def discard(self, relpath: str) -> None:
        (self.root / relpath).unlink()

    def uri(self, relpath: str) -> str:
        return str(self.root / relpath)

    def write_merged(self, relpath: str, channel: str, sources: Sequence[str], compression_level: int) -> tuple[
            int, int, int]:
        read = sum(pq.ParquetFile(self.root / s).metadata.num_rows for s in sources)
        size = write_merged(self.root, relpath, channel, list(sources), compression_level)
        return size, read, pq.ParquetFile(self.root / relpath).metadata.num_rows

    def delete(self, relpaths: Sequence[str]) -> None:
        for relpath in relpaths:
            with contextlib.suppress(FileNotFoundError):  # deleted by an earlier run that died before recording it
                (self.root / relpath).unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def channel_glob(root: Path, channel: str) -> str:
    """Glob of every committed slice of a channel (temporary files start with a dot and are skipped)."""
    return str(root / channel / "*" / "*" / "*" / "[!.]*.parquet")


def channel_files(root: Path, channel: str) -> list[Path]:
    return sorted((root / channel).glob("exchange=*/symbol=*/date=*/[!.]*.parquet"))
