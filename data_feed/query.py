"""Query role: SQL over the lake with DuckDB, one view per channel.

Partition columns (exchange, symbol, date) come from the Hive path, so a
filter on them prunes files before any is opened.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from data_feed.lake import channel_files, channel_glob
from data_feed.schemas import CHANNEL_SCHEMAS


class QueryError(ValueError):
    """SQL that DuckDB rejected; the message carries DuckDB's explanation."""


def _empty_view(channel: str) -> str:
    cols = ", ".join(f"NULL::{_duck_type(str(f.type))} AS {f.name}" for f in CHANNEL_SCHEMAS[channel])
    return f"SELECT {cols}, NULL::VARCHAR AS exchange, NULL::VARCHAR AS symbol, NULL::DATE AS date WHERE false"


def _duck_type(arrow_type: str) -> str:
    return {"int64": "BIGINT", "double": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}[arrow_type]


def connect(lake_root: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per channel over the lake."""
    root = Path(lake_root)
    con = duckdb.connect()
    for channel in CHANNEL_SCHEMAS:
        if channel_files(root, channel):
            source = (f"SELECT * FROM read_parquet('{channel_glob(root, channel)}', hive_partitioning = true, "
                      f"hive_types = {{'exchange': VARCHAR, 'symbol': VARCHAR, 'date': DATE}})")
        else:
            source = _empty_view(channel)
        con.execute(f"CREATE VIEW {channel} AS {source}")
    return con


def run_query(lake_root: str | Path, sql: str) -> pd.DataFrame:
    con = connect(lake_root)
    try:
        return con.execute(sql).df()
    except duckdb.Error as err:
        raise QueryError(str(err).strip()) from None
    finally:
        con.close()
