"""Catalog repair (``data-feed lake repair``): rebuild a lost or partial local catalog from the lake's files.

Queries list files from the catalog only, so a lake copied without ``_catalog.sqlite`` answers nothing. Repair
walks the Hive layout (``{channel}/exchange=/symbol=/date=/{file}.parquet``, temporary files skipped) and
registers every file the catalog does not know, with its rows (parquet metadata) and size, in one catalog
transaction; run twice, the second run registers nothing.

Compaction leaves its replaced files on disk for a grace period, so a lake's directory can hold a merged file
next to its members. A compacted file's name carries a digest of its members' paths (``data_feed.lake.layout``);
repair finds the run of files with that digest and records those members as retired (deleted by the next
compaction or retention run), so no row is listed twice. A merged file whose members the catalog still lists
is an orphan of an interrupted compaction and is left out, as compaction would.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from data_feed.contracts.schemas import CHANNEL_SCHEMAS
from data_feed.lake.catalog import CATALOG_FILE, CatalogFile, LocalCatalog, NoLake
from data_feed.lake.compaction import maintenance_lock
from data_feed.lake.layout import FileName, channel_files, members_digest, parse_file_name

LOG = logging.getLogger("data_feed.repair")


@dataclass(frozen=True)
class Found:
    """A lake file found on disk."""

    entry: CatalogFile
    name: FileName


@dataclass
class RepairReport:
    registered: dict[str, tuple[int, int]] = field(default_factory=dict)  # channel -> (files, rows) added
    known: int = 0  # files the catalog already listed (or had retired)
    retired: int = 0  # members of a compacted file, recorded as retired
    orphans: list[str] = field(default_factory=list)  # merged files whose members are still listed
    unreadable: list[str] = field(default_factory=list)  # not parquet, or a name that is not a lake file's
    ambiguous: list[str] = field(default_factory=list)  # inside a merged file's span, not provably its member


def scan(root: Path, report: RepairReport) -> list[Found]:
    """Every lake file under ``root`` that parses as one."""
    found = []
    for channel in CHANNEL_SCHEMAS:
        for path in channel_files(root, channel):
            relpath = str(path.relative_to(root))
            try:
                found.append(_found(root, relpath, channel))
            except (ValueError, OSError) as err:
                LOG.warning("skipped %s: %s", relpath, err)
                report.unreadable.append(relpath)
    return found


def _found(root: Path, relpath: str, channel: str) -> Found:
    path = root / relpath
    name = parse_file_name(path.name)
    keys = dict(part.split("=", 1) for part in Path(relpath).parts[1:4])
    rows = pq.ParquetFile(path).metadata.num_rows
    entry = CatalogFile(relpath, channel, keys["exchange"], keys["symbol"], keys["date"], name.first_start_ns,
                        rows, path.stat().st_size)
    return Found(entry, name)


def members_of(merged: Found, partition: list[Found]) -> list[str] | None:
    """The files ``merged`` was compacted from, found by its name's digest among ``partition``; None when no
    run of them matches (some members already deleted, or none)."""
    span = [f for f in partition if f is not merged and merged.name.first_start_ns <= f.name.first_start_ns
            and f.name.last_start_ns <= merged.name.last_start_ns]
    span.sort(key=lambda f: (f.entry.slice_start_ns, f.entry.path))
    paths = [f.entry.path for f in span]
    starts = [i for i, f in enumerate(span) if f.name.first_start_ns == merged.name.first_start_ns]
    ends = [j for j, f in enumerate(span) if f.name.last_start_ns == merged.name.last_start_ns]
    for i in starts:
        for j in ends:
            if j > i and members_digest(paths[i:j + 1]) == merged.name.digest:
                return paths[i:j + 1]
    return None


def resolve(found: list[Found], live: set[str], retired: set[str],
            report: RepairReport) -> tuple[list[CatalogFile], list[str]]:
    """(files to register, files to record as retired) among those the catalog neither lists (``live``) nor
    has retired."""
    listed = live | retired
    partitions: dict[tuple[str, str, str, str], list[Found]] = defaultdict(list)
    for f in found:
        partitions[(f.entry.channel, f.entry.exchange, f.entry.symbol, f.entry.date)].append(f)
    covered: set[str] = set()
    left_out: set[str] = set()
    for partition in partitions.values():
        for merged in (f for f in partition if f.name.digest is not None):
            members = members_of(merged, partition)
            if members is None:
                _note_ambiguous(merged, partition, listed, report)
            elif merged.entry.path not in live and any(m in live for m in members):
                left_out.add(merged.entry.path)
                report.orphans.append(merged.entry.path)
            else:
                covered.update(members)
    fresh = [f.entry for f in found if f.entry.path not in listed]
    add = [f for f in fresh if f.path not in covered and f.path not in left_out]
    return add, sorted(p for p in covered if p not in listed)


def _note_ambiguous(merged: Found, partition: list[Found], listed: set[str], report: RepairReport) -> None:
    inside = [f.entry.path for f in partition if f is not merged and f.name.digest is None
              and f.entry.path not in listed
              and merged.name.first_start_ns <= f.name.first_start_ns <= merged.name.last_start_ns]
    if inside:
        LOG.warning("%s: %d files lie inside its span but are not provably its members (some of its members "
                    "are deleted?); registered both: check for duplicate rows", merged.entry.path, len(inside))
        report.ambiguous.extend(inside)


def repair(root: str | Path) -> RepairReport:
    """Register every lake file under ``root`` the catalog does not list (creating the catalog if lost)."""
    root = Path(root)
    if not root.is_dir():
        raise NoLake(f"no lake at {root}: {'not a directory' if root.exists() else 'no such directory'}")
    report = RepairReport()
    found = scan(root, report)
    if not found and not (root / CATALOG_FILE).exists():
        raise NoLake(f"no lake at {root}: no {CATALOG_FILE} and no lake files under it")
    with maintenance_lock(root):  # no compaction or retention swaps files meanwhile
        catalog = LocalCatalog(root)
        try:
            live = {f.path for channel in CHANNEL_SCHEMAS for f in catalog.files(channel)}
            retired = {f.entry.path for f in found if catalog.is_retired(f.entry.path)}
            add, retire = resolve(found, live, retired, report)
            if add or retire:
                catalog.replace(retire, add)
        finally:
            catalog.close()
    report.known = len(live | retired)
    report.retired = len(retire)
    for f in add:
        files, rows = report.registered.get(f.channel, (0, 0))
        report.registered[f.channel] = (files + 1, rows + f.rows)
    LOG.info("lake %s: registered %d files, recorded %d as retired, %d already listed", root, len(add),
             len(retire), report.known)
    return report
