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
drops a partition from Glue, then deletes its objects (``drop_partition``).
Compaction runs on the local lake only (not yet on S3: ``is_retired`` is
always false here, there being no retired-file register on S3).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import boto3
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from data_feed.catalog import CatalogFile, Snapshot
from data_feed.config import S3LakeConfig
from data_feed.lake import NS_PER_SECOND, SliceKey, partition_dir, slice_relpath
from data_feed.schemas import CHANNEL_SCHEMAS, PARTITION_KEYS, schema_for

LOG = logging.getLogger("data_feed.s3")

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # a slice file name starts with its slice start (data_feed.lake)
STAMP_CHARS = 16
GLUE_TYPES = {"int64": "bigint", "double": "double", "string": "string", "bool": "boolean"}
PARTITION_GLUE_TYPES = {"exchange": "string", "symbol": "string", "date": "date"}
DELETE_BATCH = 1000  # keys per S3 DeleteObjects request at most


def boto3_session(cfg: S3LakeConfig) -> boto3.Session:
    return boto3.Session(region_name=cfg.region) if cfg.region else boto3.Session()


def glue_columns(channel: str) -> dict[str, str]:
    return {f.name: GLUE_TYPES[str(f.type)] for f in CHANNEL_SCHEMAS[channel]}


def slice_start_of(name: str) -> int:
    start = datetime.strptime(name[:STAMP_CHARS], STAMP_FORMAT).replace(tzinfo=UTC)
    return int(start.timestamp()) * NS_PER_SECOND


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
        pq.write_table(table.cast(schema_for(key.channel)), buf, compression="zstd",
                       compression_level=compression_level)
        relpath = slice_relpath(key, first_entry_id)
        body = buf.getvalue()
        self.client.put_object(Bucket=self.cfg.bucket, Key=self.key(relpath), Body=body)
        return relpath, len(body)

    def read(self, relpath: str, schema: pa.Schema) -> pa.Table:
        body = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(relpath))["Body"].read()
        return pq.read_table(io.BytesIO(body), schema=schema)

    def list(self, prefix: str) -> list[tuple[str, int]]:
        """(path relative to the lake root, size) of every object under ``prefix`` (relative too)."""
        base = self.key("")
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.cfg.bucket,
                                                                      Prefix=self.key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                out.append((obj["Key"][len(base):].lstrip("/"), int(obj["Size"])))
        return out

    def delete(self, relpaths: Sequence[str]) -> None:
        """Delete objects (paths relative to the lake root), in batches of what one request allows."""
        for lo in range(0, len(relpaths), DELETE_BATCH):
            batch = [{"Key": self.key(p)} for p in relpaths[lo:lo + DELETE_BATCH]]
            resp = self.client.delete_objects(Bucket=self.cfg.bucket, Delete={"Objects": batch, "Quiet": True})
            if resp.get("Errors"):
                raise RuntimeError(f"deleting {len(batch)} objects from s3://{self.cfg.bucket}: {resp['Errors'][:3]}")


class GlueCatalog:
    """The local catalog's interface over Glue: a table per channel, a partition per (exchange, symbol, date)."""

    def __init__(self, cfg: S3LakeConfig, store: S3Store, session: boto3.Session | None = None) -> None:
        import awswrangler as wr

        self.wr = wr
        self.cfg = cfg
        self.store = store
        self.session = session or boto3_session(cfg)
        if cfg.glue_endpoint_url:
            wr.config.glue_endpoint_url = cfg.glue_endpoint_url
        self.known: set[tuple[str, str, str, str]] = set()
        self.tables: set[str] = set()

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
            mode="overwrite", boto3_session=self.session)
        self.tables.add(channel)

    def register(self, key: SliceKey, path: str, rows: int, size: int) -> bool:
        """Register the file's partition in Glue the first time one of its files lands."""
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
        return False

    def files(self, channel: str, exchange: str | None = None, symbol: str | None = None) -> list[CatalogFile]:
        prefix = channel + "/"
        if exchange is not None:
            prefix += f"exchange={exchange}/"
            if symbol is not None:
                prefix += f"symbol={symbol}/"
        out = []
        for relpath, size in self.store.list(prefix):
            parts = dict(p.split("=", 1) for p in relpath.split("/")[1:-1])
            name = relpath.rsplit("/", 1)[-1]
            if name.startswith(".") or set(parts) != set(PARTITION_KEYS):
                continue
            out.append(CatalogFile(relpath, channel, parts["exchange"], parts["symbol"], parts["date"],
                                   slice_start_of(name), -1, size))  # rows: not listed by S3
        return sorted(out, key=lambda f: f.path)

    def partitions(self, channel: str) -> list[tuple[str, str, str]]:
        """(exchange, symbol, date) of every partition Glue lists for the channel's table (none without one)."""
        if not self.wr.catalog.does_table_exist(database=self.cfg.database, table=channel,
                                                boto3_session=self.session):
            return []
        found = self.wr.catalog.get_partitions(database=self.cfg.database, table=channel,
                                               boto3_session=self.session)
        return sorted((v[0], v[1], v[2]) for v in found.values())

    def drop_partition(self, channel: str, exchange: str, symbol: str, date: str) -> list[str]:
        """Remove a partition from Glue, then delete its files; returns the files deleted. Queries take their
        file lists from Glue's partitions, so the partition leaves them whole, before any file goes."""
        self.wr.catalog.delete_partitions(table=channel, database=self.cfg.database,
                                          partitions_values=[[exchange, symbol, date]], boto3_session=self.session)
        self.known.discard((channel, exchange, symbol, date))
        paths = [f.path for f in self.files(channel, exchange, symbol) if f.date == date]
        self.store.delete(paths)
        return paths

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
