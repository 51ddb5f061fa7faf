"""Query role: SQL over the lake, one view per channel, on DuckDB locally or on Athena in production.

Views are built from one catalog snapshot (one read gives every file list), not
from a directory listing, so compaction swapping small files for a merged one
is atomic for queries: a query sees the files before the swap or after it,
never both. The snapshot's lease keeps retired files on disk until the query
is done. Partition columns (exchange, symbol, date) come from the Hive path, so
a filter on them prunes files before any is opened.

A lake on S3 (``lake.s3``) is read the same way: the file list comes from the
Glue catalog's snapshot (the files of every partition Glue lists), and the
files are read through pyarrow's S3 filesystem as a dataset registered in DuckDB
(DuckDB's httpfs extension is not bundled and cannot be fetched offline).

``dialect="athena"`` takes SQL written for Athena (Trino) and translates it
with sqlglot to DuckDB, with the channel schemas so that Trino's typed
semantics (integer division of integers) carry over.

A path that holds no lake is an error (``data_feed.lake.catalog.NoLake``), never an
empty answer; a lake the reader cannot write is read through a read-only catalog.
Results come as Arrow tables (``query_table``) for the CLI's exact output, or as
pandas frames (``run_query``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import duckdb
import pandas as pd
import pyarrow as pa
import sqlglot
import sqlglot.errors
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from data_feed.access.live import cached_tables
from data_feed.contracts.config import AthenaConfig, Config, S3LakeConfig
from data_feed.contracts.schemas import CHANNEL_SCHEMAS, PARTITION_KEYS
from data_feed.lake.catalog import CatalogFile, LocalCatalog, Snapshot

LOG = logging.getLogger("data_feed.query")

Dialect = Literal["duckdb", "athena"]
_DUCK_TYPES = {"int64": "BIGINT", "double": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}
_PARTITION_TYPES = {"exchange": "VARCHAR", "symbol": "VARCHAR", "date": "DATE"}


class QueryError(ValueError):
    """SQL that could not be translated or that the engine rejected; the message says why."""


def _duck_type(arrow_type: str) -> str:
    return _DUCK_TYPES[arrow_type]


def channel_columns(channel: str) -> dict[str, str]:
    """Column -> DuckDB type of a channel's view: the file columns, then the partition keys."""
    cols = {f.name: _duck_type(str(f.type)) for f in CHANNEL_SCHEMAS[channel]}
    return cols | {k: _PARTITION_TYPES[k] for k in PARTITION_KEYS}


def _empty_view(channel: str) -> str:
    cols = ", ".join(f"NULL::{t} AS {c}" for c, t in channel_columns(channel).items())
    return f"SELECT {cols} WHERE false"


def _files_view(root: Path, files: list[CatalogFile]) -> str:
    paths = ", ".join("'" + str(root / f.path).replace("'", "''") + "'" for f in files)
    types = ", ".join(f"'{k}': {t}" for k, t in _PARTITION_TYPES.items())
    return f"SELECT * FROM read_parquet([{paths}], hive_partitioning = true, hive_types = {{{types}}})"


@contextmanager
def session(lake_root: str | Path, s3: S3LakeConfig | None = None,
            live: Config | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB connection with a view per channel over one catalog snapshot of the lake: the local
    one at ``lake_root``, or the one on S3 when ``s3`` is given. With ``live`` (the running pipeline's config)
    each view also holds the records still in its cache that the snapshot does not (``data_feed.access.live``)."""
    if s3 is not None:
        with _s3_session(s3) as con:
            yield con
        return
    root = Path(lake_root)
    catalog = LocalCatalog.existing(root)
    snaps: list[Snapshot] = []

    def take_snapshot() -> set[str]:
        snaps.append(catalog.snapshot())
        return {f.path for files in snaps[0].files.values() for f in files}

    cached: dict[str, pa.Table] = {}
    if live is not None:
        cached = cached_tables(live, take_snapshot)
    else:
        take_snapshot()
    snap = snaps[0]
    con = duckdb.connect()
    try:
        for channel in CHANNEL_SCHEMAS:
            files = snap.files.get(channel)
            view = _files_view(root, files) if files else _empty_view(channel)
            if channel in cached:
                con.register(f"_live_{channel}", cached[channel])
                view = f"{view} UNION ALL BY NAME SELECT * FROM _live_{channel}"
            con.execute(f"CREATE VIEW {channel} AS {view}")
        yield con
    finally:
        con.close()
        catalog.release(snap.lease)
        catalog.close()


@contextmanager
def _s3_session(s3: S3LakeConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    from data_feed.lake.s3 import GlueCatalog, S3Store, arrow_dataset, arrow_filesystem

    snap = GlueCatalog(s3, S3Store(s3)).snapshot()
    fs = arrow_filesystem(s3)
    keys = ", ".join(PARTITION_KEYS)
    tail = ", ".join(sorted(PARTITION_KEYS))  # the local views' order: DuckDB's hive reader sorts them
    con = duckdb.connect()
    try:
        for channel in CHANNEL_SCHEMAS:
            files = snap.files.get(channel)
            if files:
                con.register(f"_{channel}_files", arrow_dataset(s3, fs, channel, files))
                con.execute(f"CREATE VIEW {channel} AS SELECT * EXCLUDE ({keys}), {tail} FROM _{channel}_files")
            else:
                con.execute(f"CREATE VIEW {channel} AS {_empty_view(channel)}")
        yield con
    finally:
        con.close()


def to_duckdb(sql: str) -> str:
    """Athena (Trino) SQL over the channel views, translated to DuckDB's dialect."""
    schema: dict[str, object] = {ch: channel_columns(ch) for ch in CHANNEL_SCHEMAS}
    try:
        statements = sqlglot.parse(sql, read="athena")
        out = []
        for tree in statements:
            if tree is None:
                continue
            tree = qualify(tree, schema=schema, dialect="athena", quote_identifiers=False)
            tree = _arrays_of_quantiles(annotate_types(tree, schema=schema, dialect="athena"))
            out.append(tree.sql("duckdb"))
    except sqlglot.errors.SqlglotError as err:
        raise QueryError(f"not valid Athena SQL over the lake's views: {err}") from None
    if not out:
        raise QueryError(NO_SQL)
    if len(out) != 1:
        raise QueryError(f"expected one SQL statement, got {len(out)}")
    return out[0]


def _arrays_of_quantiles(tree: exp.Expr) -> exp.Expr:
    """``approx_percentile(x, ARRAY[0.1, 0.9])`` returns an array (of x's type) in Trino and in DuckDB; sqlglot
    types every approx_percentile as a double, which would cast the list to one."""
    for node in tree.find_all(exp.ApproxQuantile):
        if isinstance(node.args.get("quantile"), exp.Array):
            element = node.this.type if node.this.type is not None else exp.DataType.build("DOUBLE")
            node.type = exp.DataType(this=exp.DataType.Type.ARRAY, expressions=[element], nested=True)
    return tree


NO_SQL = "no SQL query given"


def _relation(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.DuckDBPyRelation:
    rel = con.sql(text)
    if rel is None:
        raise QueryError(NO_SQL if not text.strip(" \t\r\n;") else
                         "the SQL returns no result: give a query (SELECT ...) over the lake's views")
    return rel


def query_table(lake_root: str | Path, sql: str, dialect: Dialect = "duckdb",
                s3: S3LakeConfig | None = None, live: Config | None = None) -> pa.Table:
    """Run one query over a snapshot of the lake (on S3 when ``s3`` is given; with the records still in the
    cache with ``live``) into an Arrow table, every value exact (int64 stays int64, integer sums integers)."""
    text = to_duckdb(sql) if dialect == "athena" else sql
    with session(lake_root, s3, live) as con:
        try:
            table: pa.Table = _relation(con, text).to_arrow_table()
        except duckdb.Error as err:
            raise _query_error(err, lake_root, s3) from None
        return table


def run_query(lake_root: str | Path, sql: str, dialect: Dialect = "duckdb",
              s3: S3LakeConfig | None = None) -> pd.DataFrame:
    """Run one query over a snapshot of the lake (on S3 when ``s3`` is given); ``dialect`` is the SQL's."""
    text = to_duckdb(sql) if dialect == "athena" else sql
    with session(lake_root, s3) as con:
        try:
            return _relation(con, text).df()
        except duckdb.Error as err:
            raise _query_error(err, lake_root, s3) from None


def _query_error(err: duckdb.Error, lake_root: str | Path, s3: S3LakeConfig | None) -> QueryError:
    """The engine's message; logged at info only, since callers (the CLI) show it to the user once."""
    where = f"s3://{s3.bucket}/{s3.prefix}" if s3 is not None else lake_root
    LOG.info("query failed on the lake at %s: %s", where, str(err).strip())
    return QueryError(str(err).strip())


def run_athena(sql: str, athena: AthenaConfig) -> pd.DataFrame:
    """Run Athena SQL in the configured workgroup over the Glue database of the lake (production)."""
    import awswrangler as wr
    import boto3
    import botocore.exceptions

    session = boto3.Session(region_name=athena.region) if athena.region else boto3.Session()
    try:
        df: pd.DataFrame = wr.athena.read_sql_query(sql, database=athena.database, workgroup=athena.workgroup,
                                                    ctas_approach=False, boto3_session=session)
    except (wr.exceptions.QueryFailed, botocore.exceptions.ClientError,
            botocore.exceptions.BotoCoreError) as err:
        LOG.info("athena query failed (workgroup=%s database=%s): %s", athena.workgroup, athena.database, err)
        raise QueryError(f"athena: {err}") from None
    return df
