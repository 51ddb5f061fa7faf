"""``data-feed query`` and ``book``: reading the lake (and the cache) with SQL, and an order book at an instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from data_feed.cli.common import TABLE_MAX_ROWS, ConfigOpt, Engine, OutputFormat, app, console
from data_feed.contracts.schemas import LAKE_CHANNELS
from data_feed.observability.exits import EXIT_USAGE, fail, load_config_or_exit


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help=f"SQL over the views {', '.join(LAKE_CHANNELS)} (each with the "
                                       "partition columns exchange, symbol, date)")],
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config, or the "
                                              "lake on S3 when lake.s3 is set)")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="table: for people (UTC times, at most "
                                              "--max-rows rows); csv, json (lines): every value exact")]
    = OutputFormat.table,
    max_rows: Annotated[int, typer.Option(min=0, help="table output: rows shown at most (0: all)")]
    = TABLE_MAX_ROWS,
    engine: Annotated[Engine, typer.Option(help="duckdb: the lake (local or lake.s3); athena: the configured Athena "
                                           "workgroup (SQL in Athena's dialect)")] = Engine.duckdb,
    dialect: Annotated[Engine | None, typer.Option(help="dialect of the SQL (default: the engine's); "
                                                   "--dialect athena on duckdb translates it")] = None,
    config: ConfigOpt = None,
    live: Annotated[bool, typer.Option("--live", help="also the records still in the running pipeline's cache "
                                       "(open slices): data within a second of its arrival")] = False,
    as_consumer: Annotated[str | None, typer.Option("--as", help="only the lake tables and rows this consumer "
                                                    "is granted (data-feed access); anything else is an error")]
    = None,
) -> None:
    """Run SQL over the lake with DuckDB, or on Athena."""
    from data_feed.access.live import NoCache
    from data_feed.access.output import write_csv, write_json, write_table
    from data_feed.access.query import QueryError
    from data_feed.lake.catalog import NoLake

    try:
        if as_consumer is not None:
            table = _query_as(sql, lake, engine, dialect, config, live, as_consumer)
        else:
            table = _query(sql, lake, engine, dialect, config, live)
    except (NoLake, NoCache) as err:
        fail(str(err), EXIT_USAGE)
    except QueryError as err:
        fail(str(err))
    if fmt is OutputFormat.csv:
        write_csv(table, sys.stdout)
    elif fmt is OutputFormat.json:
        write_json(table, sys.stdout)
    else:
        write_table(table, sys.stdout, max_rows or None)


def _query(sql: str, lake: Path | None, engine: Engine, dialect: Engine | None, config: Path | None,
           live: bool = False) -> Any:
    """The result as an Arrow table."""
    import pyarrow as pa

    from data_feed.access.query import query_table, run_athena

    if engine is Engine.athena:
        return pa.Table.from_pandas(run_athena(sql, load_config_or_exit(config).athena), preserve_index=False)
    cfg = None if lake and not live else load_config_or_exit(config)
    root = lake or Path(cfg.lake.root if cfg else ".")
    if live and cfg is not None and cfg.lake.s3 is not None:
        fail("--live reads a local lake with the cache in front of it; lake.s3 is set", EXIT_USAGE)
    return query_table(root, sql, "athena" if dialect is Engine.athena else "duckdb",
                       s3=cfg.lake.s3 if cfg and not live else None, live=cfg if live else None)


def _query_as(sql: str, lake: Path | None, engine: Engine, dialect: Engine | None, config: Path | None,
              live: bool, consumer: str) -> Any:
    """The result of ``sql`` over ``consumer``'s granted rows of the local lake."""
    from data_feed.access import store
    from data_feed.access.db import make_engine
    from data_feed.access.lake import query_table_as

    cfg = load_config_or_exit(config)
    if engine is Engine.athena or live or (lake is None and cfg.lake.s3 is not None):
        fail("--as reads a local lake with DuckDB (no --engine athena, --live or lake.s3)", EXIT_USAGE)
    db = make_engine(cfg.database.url)
    try:
        grants = store.entitlements(db, consumer)
    except store.AccessError as err:
        fail(str(err), EXIT_USAGE)
    finally:
        db.dispose()
    if not grants:
        fail(f"consumer {consumer} has no GRANTED, unexpired permission (data-feed access list --consumer "
             f"{consumer})", EXIT_USAGE)
    return query_table_as(lake or Path(cfg.lake.root), sql, consumer, grants,
                          "athena" if dialect is Engine.athena else "duckdb")


@app.command()
def book(
    exchange: Annotated[str, typer.Argument(help="e.g. BINANCE")],
    symbol: Annotated[str, typer.Argument(help="e.g. BTC-USDT")],
    at: Annotated[str, typer.Option(help="exchange time: ISO-8601 (UTC unless zoned) or epoch seconds")],
    depth: Annotated[int, typer.Option(min=1, help="levels per side")] = 10,
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the order book at one instant, decoded from the single l2_book slice that holds it, and its age."""
    from data_feed.contracts.instants import format_age, format_instant, parse_instant
    from data_feed.lake.book import book_view
    from data_feed.lake.catalog import NoLake

    root = lake or Path(load_config_or_exit(config).lake.root)
    try:
        at_ns = parse_instant(at)
    except ValueError as err:
        fail(f"--at {err}", EXIT_USAGE)
    try:
        view = book_view(root, exchange, symbol, at_ns, depth)
    except NoLake as err:
        fail(str(err), EXIT_USAGE)
    except LookupError as err:
        fail(str(err))
    typer.echo(f"{exchange} {symbol} at {format_instant(at_ns)}")
    table = Table()
    for col in ("bid size", "bid", "ask", "ask size"):
        table.add_column(col, justify="right")
    bids, asks = view.levels["bid"], view.levels["ask"]
    for i in range(max(len(bids), len(asks))):
        b = bids[i] if i < len(bids) else ("", "")
        a = asks[i] if i < len(asks) else ("", "")
        table.add_row(str(b[1]), str(b[0]), str(a[0]), str(a[1]))
    console.print(table)
    note = f"book as of {format_instant(view.as_of_ns)}, {format_age(at_ns - view.as_of_ns)} before the requested time"
    typer.echo(note + (" (the lake's l2_book data for it ends there)" if view.beyond_data else ""))
