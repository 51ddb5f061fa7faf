"""The lake on S3 with a Glue catalog: the same layout, file names and commit protocol as the local lake.

``S3Store`` writes a slice with one PUT (atomic: a reader sees the whole object
or none; durable once the PUT completes), under
``s3://{bucket}/{prefix}/{channel}/exchange=.../symbol=.../date=.../{file}``.
``GlueCatalog`` has the local catalog's interface for the aggregator: one Glue
table per channel (created on first use, partitioned by exchange, symbol and
date) and a partition registered as the first slice of it lands; its file
lists come from S3 listings of the partition. ``snapshot`` gives queries the
files of every partition Glue lists, and ``arrow_filesystem`` reads them with
pyarrow (DuckDB's httpfs extension is not bundled with its wheel). Retention
drops a partition from Glue, then deletes its objects (``expire_partition``).

Compaction's register is a per-partition ``_manifest.json`` (``Manifest``),
written by compaction only, each time with one PUT: the compacted files that
are live, and the files retired (replaced by a compacted file), with when. A
partition's files are its listed slice files not retired, plus the live
compacted files the manifest names; a compacted file the manifest does not
name (written, not yet swapped in, or left by a crashed run) is not part of
the lake. So the PUT of the manifest is the whole swap: a reader sees the
members or the merged file, never both, never neither. Retired files stay
until ``lake.compaction_grace_seconds`` have passed (S3 has no reader leases:
a query running longer than that may fail, never see a row twice), and a
retired name stays retired, so ``is_retired`` stops the aggregator redoing an
old write from landing a compacted slice again. Athena reads the partition
locations, not the manifest: during the grace period it would count retired
files too.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_feed.contracts.config import S3LakeConfig
from data_feed.contracts.schemas import CHANNEL_SCHEMAS, NS_PER_SECOND, parquet_write_options, schema_for
from data_feed.lake.catalog import CatalogFile, PartitionStats, Snapshot
from data_feed.lake.layout import (
    Partition,
    SliceKey,
    partition_dir,
    partition_of,
    partition_prefix,
    partition_relpath,
    slice_relpath,
)
from data_feed.lake.s3_lease import LEASE_OBJECT_NAME, S3Lease
from data_feed.lake.s3_manifest import MANIFEST_NAME, Manifest
from data_feed.lake.s3_manifest import file_name as _name
from data_feed.lake.s3_manifest import is_lake_file as _is_lake_file

LOG = logging.getLogger("data_feed.s3")

GLUE_TYPES = {"int64": "bigint", "double": "double", "string": "string", "bool": "boolean"}
PARTITION_GLUE_TYPES = {"exchange": "string", "symbol": "string", "date": "date"}
DELETE_BATCH = 1000  # keys per S3 DeleteObjects request at most
MANIFEST_READ_THREADS = 16  # manifests fetched at once when listing many compacted partitions
MISSING_KEY_CODES = ("NoSuchKey", "404")
S3_STATS_INTERVAL_SECONDS = 300.0  # partition stats on S3 list every object of the channel



def boto3_session(cfg: S3LakeConfig) -> boto3.Session:
    return boto3.Session(region_name=cfg.region) if cfg.region else boto3.Session()


def glue_columns(channel: str) -> dict[str, str]:
    return {f.name: GLUE_TYPES[str(f.type)] for f in CHANNEL_SCHEMAS[channel]}


def arrow_filesystem(cfg: S3LakeConfig, session: boto3.Session | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem at the lake's endpoint, with the boto3 session's credentials and region (so
    the environment, a profile or an instance role work as they do for boto3)."""
    session = session or boto3_session(cfg)
    creds = session.get_credentials()
    if creds is None:
        raise RuntimeError(f"no AWS credentials found for the lake on s3://{cfg.bucket}/{cfg.prefix} "
                           "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)")
    frozen = creds.get_frozen_credentials()
    options: dict[str, Any] = {"access_key": frozen.access_key, "secret_key": frozen.secret_key,
                               "session_token": frozen.token, "region": session.region_name or "us-east-1"}
    if cfg.endpoint_url:
        url = urlsplit(cfg.endpoint_url)
        options |= {"endpoint_override": url.netloc, "scheme": url.scheme or "https"}
    return pafs.S3FileSystem(**options)


def arrow_dataset(cfg: S3LakeConfig, fs: pafs.FileSystem, channel: str, files: list[CatalogFile]) -> ds.Dataset:
    """The given files of a channel as one dataset: the file columns, then exchange, symbol and date from
    the Hive path (so DuckDB prunes files on them before opening any)."""
    base = f"{cfg.bucket}/{PurePosixPath(cfg.prefix) / channel}"
    partition = pa.schema([("exchange", pa.string()), ("symbol", pa.string()), ("date", pa.date32())])
    return ds.dataset([f"{cfg.bucket}/{PurePosixPath(cfg.prefix) / f.path}" for f in files], filesystem=fs,
                      format="parquet", schema=pa.unify_schemas([schema_for(channel), partition]),
                      partitioning=ds.partitioning(partition, flavor="hive"), partition_base_dir=base)


class S3Store:
    """Slice files on S3: one PUT per file."""

    def __init__(self, cfg: S3LakeConfig, session: boto3.Session | None = None) -> None:
        self.cfg = cfg
        self.client: Any = (session or boto3_session(cfg)).client("s3", endpoint_url=cfg.endpoint_url)

    def key(self, relpath: str) -> str:
        return str(PurePosixPath(self.cfg.prefix) / relpath)

    def uri(self, relpath: str) -> str:
        return f"s3://{self.cfg.bucket}/{self.key(relpath)}"

    def write_slice(self, key: SliceKey, table: pa.Table, first_entry_id: str, compression_level: int) -> tuple[
            str, int]:
        """PUT one slice; returns its path relative to the lake root and its size."""
        buf = io.BytesIO()
        options = parquet_write_options(key.channel, compression_level)
        pq.write_table(table.cast(schema_for(key.channel)), buf, **options)
        relpath = slice_relpath(key, first_entry_id)
        body = buf.getvalue()
        self.client.put_object(Bucket=self.cfg.bucket, Key=self.key(relpath), Body=body)
        return relpath, len(body)

    def read(self, relpath: str, schema: pa.Schema) -> pa.Table:
        body = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(relpath))["Body"].read()
        return pq.read_table(io.BytesIO(body), schema=schema)

    def get(self, relpath: str) -> bytes | None:
        """An object's body; None when there is no such object."""
        try:
            body: bytes = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(relpath))["Body"].read()
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in MISSING_KEY_CODES:
                return None
            raise
        return body

    def discard(self, relpath: str) -> None:
        """Nothing now: the object has a retired name, so it goes with the retired objects after the grace."""

    def put(self, relpath: str, body: bytes) -> None:
        """One PUT: readers see the old object or the new one whole."""
        self.client.put_object(Bucket=self.cfg.bucket, Key=self.key(relpath), Body=body)

    def write_merged(self, relpath: str, channel: str, sources: Sequence[str], compression_level: int) -> tuple[
            int, int, int]:
        """Concatenate lake files, in the given order, into one object written with one PUT; returns its size,
        the rows read and the rows the written file holds. Holds the merged file in memory (at most the
        compaction target) and one source at a time."""
        schema = schema_for(channel)
        buf = io.BytesIO()
        read = 0
        with pq.ParquetWriter(buf, schema, **parquet_write_options(channel, compression_level)) as writer:
            for source in sources:
                table = self.read(source, schema)
                read += table.num_rows
                writer.write_table(table)
        body = buf.getvalue()
        written = pq.ParquetFile(io.BytesIO(body)).metadata.num_rows
        self.put(relpath, body)
        return len(body), read, written

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(path relative to the lake root, size) of every object under ``prefix`` (relative too)."""
        base = self.key("")
        out: dict[str, int] = {}
        repeated = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.bucket,
                                                                      Prefix=self.key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                path = obj["Key"][len(base):].lstrip("/")
                repeated += path in out
                out[path] = int(obj["Size"])
        if repeated:  # keys are unique; a server that pages the same key twice must not make a file count twice
            LOG.warning("s3://%s/%s: the listing returned %d keys more than once; counted once",
                        self.cfg.bucket, self.key(prefix), repeated)
        return list(out.items())

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete objects (paths relative to the lake root), in batches of what one request allows."""
        for lo in range(0, len(relpaths), DELETE_BATCH):
            batch = [{"Key": self.key(p)} for p in relpaths[lo:lo + DELETE_BATCH]]
            resp = self.client.delete_objects(Bucket=self.cfg.bucket, Delete={"Objects": batch, "Quiet": True})
            if resp.get("Errors"):
                raise RuntimeError(f"deleting {len(batch)} objects from s3://{self.cfg.bucket}: {resp['Errors'][:3]}")


class GlueCatalog:
    """The local catalog's interface over Glue: a table per channel, a partition per (exchange, symbol, date)."""

    stats_interval_seconds = S3_STATS_INTERVAL_SECONDS

    def __init__(self, cfg: S3LakeConfig, store: S3Store, session: boto3.Session | None = None) -> None:
        import awswrangler as wr

        self.wr = wr
        self.cfg = cfg
        self.store = store
        self.session = session or boto3_session(cfg)
        if cfg.glue_endpoint_url:
            wr.config.glue_endpoint_url = cfg.glue_endpoint_url
        self.known: set[Partition] = set()
        self.tables: set[str] = set()
        self.lease: S3Lease | None = None  # while maintenance holds the lake's lock

    def close(self) -> None:
        pass

    def table_uri(self, channel: str) -> str:
        return self.store.uri(channel) + "/"

    def ensure_table(self, channel: str) -> None:
        if channel in self.tables:
            return
        self.wr.catalog.create_database(self.cfg.database, exist_ok=True, boto3_session=self.session)
        self.wr.catalog.create_parquet_table(
            database=self.cfg.database, table=channel, path=self.table_uri(channel),
            columns_types=glue_columns(channel), partitions_types=PARTITION_GLUE_TYPES, compression="zstd",
            mode="append", boto3_session=self.session)  # "overwrite" would drop every partition of it
        self.tables.add(channel)

    def register(self, key: SliceKey, path: str, rows: int, size: int) -> bool:
        """Register the file's partition in Glue the first time one of its files lands. False when compaction
        retired the path: the file is not part of the lake (its rows are in a compacted file); the object is
        deleted with the retired ones after the grace period."""
        if self.is_retired(path):
            return False
        partition = (key.channel, key.exchange, key.symbol, key.date())
        if partition in self.known:
            return True
        self.ensure_table(key.channel)
        location = self.store.uri(str(partition_dir(Path(), key))) + "/"
        self.wr.catalog.add_parquet_partitions(
            database=self.cfg.database, table=key.channel, partitions_values={location: list(partition[1:])},
            compression="zstd", boto3_session=self.session)
        self.known.add(partition)
        LOG.info("channel=%s exchange=%s symbol=%s: registered partition date=%s in Glue", *partition)
        return True

    def is_retired(self, path: str) -> bool:
        """Whether compaction replaced the file at ``path`` (relative to the lake root)."""
        directory, name = path.rsplit("/", 1)
        return name in self.manifest(directory).retired

    def manifest(self, partition_path: str) -> Manifest:
        """The compaction manifest of the partition at ``partition_path`` (empty when never compacted)."""
        where = f"{partition_path}/{MANIFEST_NAME}"
        raw = self.store.get(where)
        return Manifest() if raw is None else Manifest.from_json(raw, self.store.uri(where))

    def write_manifest(self, partition: Partition, manifest: Manifest) -> None:
        """Swap a partition's files: one PUT of its manifest."""
        self.store.put(f"{partition_relpath(*partition)}/{MANIFEST_NAME}", manifest.to_json())

    def listing(self, prefix: str) -> dict[Partition, tuple[Manifest, list[tuple[str, int]]]]:
        """Every partition with objects under ``prefix``: its manifest and its lake files (path, size), listed
        first; a manifest written after the listing retires only files the listing holds (retired files outlive
        the grace period), and names the compacted files it makes live."""
        groups: dict[Partition, list[tuple[str, int]]] = {}
        manifested: list[Partition] = []
        for relpath, size in self.store.list(prefix):
            partition = partition_of(relpath)
            if partition is None:
                continue
            group = groups.setdefault(partition, [])
            if _name(relpath) == MANIFEST_NAME:
                manifested.append(partition)
            elif _is_lake_file(_name(relpath)):
                group.append((relpath, size))
        with ThreadPoolExecutor(MANIFEST_READ_THREADS) as pool:
            read = dict(zip(manifested, pool.map(lambda p: self.manifest(partition_relpath(*p)), manifested),
                            strict=True))
        return {p: (read.get(p, Manifest()), files) for p, files in groups.items()}

    def files(self, channel: str, exchange: str | None = None, symbol: str | None = None) -> list[CatalogFile]:
        """The channel's files (of one exchange, and symbol): listed slice files compaction has not retired,
        and the compacted files its manifests name."""
        out = []
        for partition, (manifest, listed) in self.listing(partition_prefix(channel, exchange, symbol)).items():
            if partition[0] == channel:
                out += manifest.visible(partition, listed)
        return sorted(out, key=lambda f: f.path)

    def partition_files(self, partition: Partition) -> tuple[Manifest, list[CatalogFile]]:
        """One partition's manifest and files."""
        found = self.listing(partition_relpath(*partition) + "/").get(partition)
        manifest, listed = found if found is not None else (Manifest(), [])
        return manifest, manifest.visible(partition, listed)

    def visible_files(self, partition: Partition) -> list[CatalogFile]:
        return self.partition_files(partition)[1]

    def swap(self, partition: Partition, removed: Sequence[str], added: Sequence[CatalogFile], now_ns: int) -> None:
        """One PUT of the partition's manifest, re-read first (under the maintenance lock nothing else writes it)."""
        self._check_lease()
        self.write_manifest(partition, self.manifest(partition_relpath(*partition)).swap(removed, added, now_ns))

    def retired_past(self, grace_seconds: float, now_ns: int) -> tuple[list[str], int]:
        """Objects compaction retired at least ``grace_seconds`` before ``now_ns`` (no reader leases on S3), and
        how many retired objects the grace period still holds."""
        horizon, free, held = now_ns - int(grace_seconds * NS_PER_SECOND), [], 0
        for channel in CHANNEL_SCHEMAS:
            for manifest, listed in self.listing(channel + "/").values():
                for path, _ in listed:
                    retired_ns = manifest.retired.get(_name(path))
                    if retired_ns is not None and retired_ns <= horizon:
                        free.append(path)
                    held += retired_ns is not None and retired_ns > horizon
        return sorted(free), held

    def mark_deleted(self, paths: Iterable[str]) -> None:
        """Nothing: the listing is the register, a deleted object is no longer in it."""

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The lake's maintenance lock, across hosts: a lease object in the bucket (``data_feed.lake.s3_lease``)."""
        with S3Lease(self.store.client, self.cfg.bucket, self.store.key(LEASE_OBJECT_NAME)) as lease:
            self.lease = lease
            try:
                yield
            finally:
                self.lease = None

    def _check_lease(self) -> None:
        if self.lease is not None:
            self.lease.check()

    def partition_stats(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PartitionStats]:
        """Per (channel, exchange) of ``keys``: files, partitions holding them and the fullest partition's files."""
        out = {}
        for channel, exchange in keys:
            per_partition = Counter((f.symbol, f.date) for f in self.files(channel, exchange))
            if per_partition:
                counts = per_partition.values()
                out[(channel, exchange)] = PartitionStats(sum(counts), len(counts), max(counts))
        return out

    def partitions(self, channel: str) -> list[tuple[str, str, str]]:
        """(exchange, symbol, date) of every partition Glue lists for the channel's table (none without one)."""
        if not self.wr.catalog.does_table_exist(database=self.cfg.database, table=channel,
                                                boto3_session=self.session):
            return []
        found = self.wr.catalog.get_partitions(database=self.cfg.database, table=channel,
                                               boto3_session=self.session)
        return sorted((v[0], v[1], v[2]) for v in found.values())

    def expire_partition(self, partition: Partition) -> tuple[int, int]:
        """Remove a partition from Glue, then delete its files at once (S3 has no reader leases); returns the
        files deleted, twice. Queries list files from Glue's partitions, so it leaves them whole first."""
        channel, exchange, symbol, date = partition
        self._check_lease()
        self.wr.catalog.delete_partitions(table=channel, database=self.cfg.database,
                                          partitions_values=[[exchange, symbol, date]], boto3_session=self.session)
        self.known.discard((channel, exchange, symbol, date))
        prefix = partition_relpath(channel, exchange, symbol, date) + "/"
        objects = [path for path, _ in self.store.list(prefix)]  # retired and compacted files, and the manifest
        self.store.delete(objects)
        deleted = sum(_is_lake_file(_name(path)) for path in objects)
        return deleted, deleted

    def snapshot(self) -> Snapshot:
        """Every channel's files in the partitions Glue lists. S3 has no catalog versions or leases (lease 0):
        a file is visible once its PUT completed and its partition is registered."""
        files: dict[str, list[CatalogFile]] = {}
        for channel in CHANNEL_SCHEMAS:
            registered = set(self.partitions(channel))
            if registered:
                listed = [f for f in self.files(channel) if (f.exchange, f.symbol, f.date) in registered]
                files[channel] = listed
        return Snapshot(lease=0, version=0, files=files)

    def release(self, lease: int) -> None:
        pass
