"""A partition's compaction register on S3 (``_manifest.json``): see ``data_feed.lake.s3``, whose swap it is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from data_feed.lake.catalog import CatalogFile
from data_feed.lake.layout import Partition, is_compacted, partition_relpath, slice_start_of

MANIFEST_NAME = "_manifest.json"  # a partition's compaction register; Athena and Hive skip names starting "_"
MANIFEST_FORMAT = 1


class ManifestError(ValueError):
    """A partition's manifest that cannot be read: the partition's files cannot be told apart safely."""


@dataclass(frozen=True)
class Manifest:
    """A partition's compaction register (see the module docstring), by file name within the partition."""

    live: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # compacted: (slice start ns, rows, bytes)
    retired: dict[str, int] = field(default_factory=dict)  # replaced file -> when, wall clock ns

    def to_json(self) -> bytes:
        return json.dumps({"format": MANIFEST_FORMAT, "live": self.live, "retired": self.retired},
                          sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc["format"] != MANIFEST_FORMAT:
                raise ManifestError(f"{where}: manifest format {doc['format']}, this version reads {MANIFEST_FORMAT}")
            live = {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in doc["live"].items()}
            return cls(live, {str(k): int(v) for k, v in doc["retired"].items()})
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ManifestError(f"{where}: unreadable compaction manifest: {err}") from None

    def swap(self, removed: Sequence[str], added: Sequence[CatalogFile], now_ns: int) -> Manifest:
        """The manifest after replacing the files ``removed`` (paths) by the compacted files ``added``."""
        gone = {file_name(p) for p in removed}
        live = {k: v for k, v in self.live.items() if k not in gone}
        live |= {file_name(f.path): (f.slice_start_ns, f.rows, f.bytes) for f in added}
        return Manifest(live, self.retired | dict.fromkeys(sorted(gone), now_ns))

    def visible(self, partition: Partition, listed: Sequence[tuple[str, int]]) -> list[CatalogFile]:
        """The partition's files: listed slice files not retired, then the live compacted files."""
        channel, exchange, symbol, date = partition
        base = partition_relpath(*partition)
        out = [CatalogFile(path, channel, exchange, symbol, date, slice_start_of(file_name(path)), -1, size)
               for path, size in listed  # rows: not listed by S3
               if _current_slice_file(file_name(path), self.retired)]
        out += [CatalogFile(f"{base}/{name}", channel, exchange, symbol, date, start, rows, size)
                for name, (start, rows, size) in self.live.items()]
        return out


def file_name(relpath: str) -> str:
    return relpath.rsplit("/", 1)[-1]


def is_lake_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def _current_slice_file(name: str, retired: dict[str, int]) -> bool:
    return is_lake_file(name) and not is_compacted(name) and name not in retired
