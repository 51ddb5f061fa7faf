"""The ``data-feed`` command line: run the pipeline, the simulator alone, SQL queries, books, lake upkeep, status.

Every mistake a user can make here ends in one ``error: ...`` line (or a config's list of bad keys) on
stderr and a non-zero exit: 2 for a bad argument, config or environment (nothing was started), 1 for a
failure while working. Nothing is created at a path given to read from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from data_feed.config import DEFAULT_CONFIG_PATH, Config, ConfigError
from data_feed.exits import EXIT_USAGE, fail, load_config_or_exit
from data_feed.logs import LOG_FORMAT_ENV, setup_logging
from data_feed.logs import log_format as current_log_format
from data_feed.runtime import RunDir, RunDirBusy, RunDirLock
from data_feed.schemas import LAKE_CHANNELS

if TYPE_CHECKING:
    from data_feed.spawner import Spawner

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the embedded one)")]
TABLE_MAX_ROWS = 1000  # rows of table output shown by default


def _positive_seconds(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g}: expected a number of seconds > 0")
    return value


def _speed(text: str) -> str:
    if text != "max":
        try:
            ok = float(text) > 0 and float(text) != float("inf")
        except ValueError:
            ok = False
        if not ok:
            raise typer.BadParameter(f"{text!r}: expected a number > 0 (times the recorded pace) or 'max'")
    return text


DurationOpt = Annotated[float | None, typer.Option(help="stop cleanly after this many seconds (> 0)",
                                                   callback=_positive_seconds)]


class Engine(StrEnum):
    duckdb = "duckdb"
    athena = "athena"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def _log_format(value: LogFormat) -> LogFormat:
    os.environ[LOG_FORMAT_ENV] = value.value  # before anything logs; every role the spawner starts inherits it
    return value


LogFormatOpt = Annotated[LogFormat, typer.Option(
    "--log-format", callback=_log_format, envvar=LOG_FORMAT_ENV,
    help="text, or json: one JSON object a line (time, level, role, message, exchange, channel, symbol), in every "
         "role's log too")]


def _exit_on_unoffered(cfg: Config, source: str) -> None:
    """Exit 2 with the keys of every channel or simulated symbol an exchange does not offer. Imports the
    collector modules (and so prometheus-client): in a pipeline run, only after ``prepare_environment``."""
    from data_feed.preflight import offered_problems

    problems = offered_problems(cfg)
    if problems:
        fail(f"invalid config {source}:\n  " + "\n  ".join(problems), EXIT_USAGE)


def _check_environment_or_exit(cfg: Config) -> None:
    from data_feed.preflight import PreflightError, check_environment

    try:
        check_environment(cfg)
    except PreflightError as err:
        fail(str(err), EXIT_USAGE)


def _exit_if_busy(cfg: Config) -> None:
    try:
        RunDirLock(Path(cfg.spawner.run_dir)).probe()
    except RunDirBusy as err:
        fail(str(err), EXIT_USAGE)


def claim_run_dir(cfg: Config) -> RunDir:
    """The run directory, locked for this pipeline; exit code 2 naming the holder when another run has it."""
    run_dir = RunDir(Path(cfg.spawner.run_dir))
    try:
        run_dir.prepare_environment()  # before prometheus_client is imported
    except RunDirBusy as err:
        fail(str(err), EXIT_USAGE)
    return run_dir


@app.command()
def run(
    config: ConfigOpt = None,
    duration: DurationOpt = None,
    status: Annotated[bool, typer.Option(help="live status table (when stdout is a terminal)")] = True,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run the whole pipeline (simulator, collectors, aggregator, featurizer) until Ctrl-C or --duration."""
    _run_pipeline(load_config_or_exit(config), duration, status, _source(config))


@app.command()
def record(
    out: Annotated[Path, typer.Option(help="directory for the session files, one per exchange")],
    config: ConfigOpt = None,
    duration: DurationOpt = None,
    status: Annotated[bool, typer.Option(help="live status table (when stdout is a terminal)")] = True,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run the pipeline and also record every exchange's raw session (REST, websocket frames) for replay."""
    from data_feed.recorder import recording_config

    _run_pipeline(recording_config(load_config_or_exit(config), out), duration, status, _source(config))


def _source(config: Path | None) -> str:
    return str(config or DEFAULT_CONFIG_PATH)


def _run_pipeline(cfg: Config, duration: float | None, status: bool, source: str) -> None:
    _exit_if_busy(cfg)  # first: a second run in this directory is told which PID holds it
    _check_environment_or_exit(cfg)
    run_dir = claim_run_dir(cfg)
    _exit_on_unoffered(cfg, source)  # still before any role starts
    setup_logging("spawner")
    from data_feed.spawner import Spawner

    spawner = Spawner(cfg, run_dir)
    spawner.install_signal_handlers()
    try:
        spawner.start()
    except Exception as err:
        logging.getLogger("data_feed.spawner").error("start-up failed: %s", err)
        spawner.stop()
        raise typer.Exit(1) from None
    if status and sys.stdout.isatty() and current_log_format() != "json":
        _run_with_live_status(spawner, duration)
    else:
        spawner.run(duration, on_tick=_StatusLog(spawner))
    _print_summary(spawner.summary)


class _StatusLog:
    """Periodic one-line status in the log when there is no terminal to draw on."""

    INTERVAL_SECONDS = 10.0

    def __init__(self, spawner: Spawner) -> None:
        self.last = time.monotonic()

    def __call__(self, spawner: Spawner) -> None:
        if time.monotonic() - self.last < self.INTERVAL_SECONDS:
            return
        from data_feed.cache import STATE_FRAMES_FIELD

        self.last = time.monotonic()
        frames = {ex: st.get(STATE_FRAMES_FIELD, "0") for ex, st in spawner.collector_states().items()}
        rows = {ch: v["rows"] for ch, v in spawner.run_summary().items()}
        logging.getLogger("data_feed.spawner").info("frames received %s; rows landed %s", frames, rows)


def _run_with_live_status(spawner: Spawner, duration: float | None) -> None:
    from rich.live import Live

    from data_feed.cache import STATE_FRAMES_FIELD, STATE_RECORDS_PREFIX

    rates: dict[str, tuple[float, int]] = {}

    def render() -> Table:
        table = Table(title="data-feed (Ctrl-C stops cleanly)")
        for col in ("exchange", "frames/s", "frames", "records cached", "lag (entries)"):
            table.add_column(col, justify="right" if col != "exchange" else "left")
        health = spawner.health()
        for ex, st in spawner.collector_states().items():
            frames = int(st.get(STATE_FRAMES_FIELD, 0))
            t0, f0 = rates.get(ex, (time.monotonic(), frames))
            rate = (frames - f0) / max(time.monotonic() - t0, 1e-9)
            rates[ex] = (time.monotonic(), frames)
            cached = sum(int(v) for k, v in st.items() if k.startswith(STATE_RECORDS_PREFIX))
            lag = sum(v for k, v in health["lag"].items() if f":{ex}:" in k)
            table.add_row(ex, f"{rate:,.0f}", f"{frames:,}", f"{cached:,}", f"{lag:,}")
        landed = ", ".join(f"{ch} {v['rows']:,}" for ch, v in sorted(spawner.run_summary().items())) or "-"
        table.caption = f"rows landed: {landed}   roles: " + ", ".join(
            f"{r['role']}{'' if r['alive'] else ' (down)'}" for r in health["roles"])
        return table

    last = [0.0]
    with Live(render(), console=console, refresh_per_second=2) as live:
        def tick(sp: Spawner) -> None:
            if time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                live.update(render())

        spawner.run(duration, on_tick=tick)


def _print_summary(summary: dict[str, dict[str, int]]) -> None:
    """The table of what landed; with ``--log-format json`` one log line holding it (the output is all JSON)."""
    if current_log_format() == "json":
        logging.getLogger("data_feed.spawner").info("landed this run: %s", json.dumps(summary, sort_keys=True))
        return
    table = Table(title="landed this run")
    for col in ("channel", "rows", "files", "bytes"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for channel, v in sorted(summary.items()):
        table.add_row(channel, f"{v['rows']:,}", f"{v['files']:,}", f"{v['bytes']:,}")
    console.print(table)


@app.command()
def role(
    name: Annotated[str, typer.Argument(metavar="ROLE", help="simulator, bus, collector, aggregator or featurizer")],
    arg: Annotated[str | None, typer.Argument(metavar="[EXCHANGE]", help="collector: the exchange")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="the deployment's YAML config")] = DEFAULT_CONFIG_PATH,
    http_port: Annotated[int, typer.Option(help="/health and /metrics (0: a free port)")] = 0,
    http_host: Annotated[str, typer.Option(help="address to serve them on (0.0.0.0 in a container)")] = "127.0.0.1",
    shard: Annotated[int, typer.Option(help="aggregator: which of aggregator.shards this process is")] = 0,
) -> None:
    """Run one role alone, as docker-compose or Kubernetes run it; stops cleanly on SIGTERM."""
    from data_feed.roles import main as role_main

    argv = [name, *([arg] if arg else []), "--config", str(config), "--http-port", str(http_port),
            "--http-host", http_host, "--shard", str(shard)]
    raise typer.Exit(role_main(argv))


@app.command()
def sim(config: ConfigOpt = None) -> None:
    """Run the exchange simulator alone (every exchange whose source is 'simulator')."""
    cfg = load_config_or_exit(config)
    _exit_on_unoffered(cfg, _source(config))  # this process serves the simulator: no multiprocess metrics
    if not cfg.simulated():
        fail("no exchange in the config has source: simulator", EXIT_USAGE)
    setup_logging("simulator")
    from data_feed.sim.server import serve_forever

    asyncio.run(serve_forever(cfg, cfg.simulator_cert_dir()))


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(help="recorded sessions (.jsonl or .jsonl.zst), one per exchange")],
    speed: Annotated[str, typer.Option(help="X times the recorded pace, or 'max'", callback=_speed)] = "max",
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Serve recorded sessions through the whole pipeline into the lake; return once all of it has landed."""
    from data_feed.capture import SessionError
    from data_feed.replay import replay_config, run_replay

    try:
        pace = None if speed == "max" else float(speed)
        cfg = replay_config(load_config_or_exit(config), files, pace, lake)
    except (ValueError, OSError, ConfigError, SessionError) as err:
        fail(str(err), EXIT_USAGE)
    _exit_if_busy(cfg)
    _check_environment_or_exit(cfg)
    run_dir = claim_run_dir(cfg)
    _exit_on_unoffered(cfg, "replay")
    setup_logging("spawner")
    try:
        served, summary = run_replay(cfg, run_dir)
    except Exception as err:
        logging.getLogger("data_feed.replay").error("replay failed: %s", err)
        raise typer.Exit(1) from None
    for exchange, st in sorted(served.items()):
        served_line = f"{exchange}: served {st.get('frames_sent', 0):,} of {st.get('frames_total', 0):,} frames"
        if current_log_format() == "json":
            logging.getLogger("data_feed.replay").info("exchange=%s", served_line)
        else:
            console.print(served_line)
    _print_summary(summary)


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
    from data_feed.catalog import NoLake
    from data_feed.live import NoCache
    from data_feed.output import write_csv, write_json, write_table
    from data_feed.query import QueryError

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

    from data_feed.query import query_table, run_athena

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
    from data_feed.access.lake import query_table_as
    from data_feed.db import make_engine

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
    from data_feed.book import book_view
    from data_feed.catalog import NoLake
    from data_feed.instants import format_age, format_instant, parse_instant

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


def _add_access_app() -> None:
    from data_feed.access.cli import app as access_app

    app.add_typer(access_app, name="access", help="Signal access: consumers, datasets, permissions, audit.")


_add_access_app()

lake_app = typer.Typer(no_args_is_help=True, help="Lake maintenance: compaction, retention, catalog repair.")
app.add_typer(lake_app, name="lake")


@lake_app.command("compact")
def lake_compact(
    older_than: Annotated[str, typer.Option(help="only slices closed at least this long ago: 30m, 6h, 2d, 0s")],
    target_mb: Annotated[int | None, typer.Option(min=1, help="merged file size at most (default: "
                                                  "lake.compaction_target_mb)")] = None,
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config, or the "
                                              "lake on S3 when lake.s3 is set)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Merge the small slice files of closed periods into large files, atomically for running queries."""
    from data_feed.catalog import NoLake
    from data_feed.compaction import BYTES_PER_MB, MaintenanceBusy, compact, compact_s3, parse_duration

    cfg = load_config_or_exit(config)
    setup_logging("compaction")
    try:
        target = target_mb * BYTES_PER_MB if target_mb else None
        if cfg.lake.s3 and not lake:
            report = compact_s3(cfg.lake, parse_duration(older_than), target)
        else:
            report = compact(lake or Path(cfg.lake.root), cfg.lake, parse_duration(older_than), target)
    except (ValueError, NoLake) as err:
        fail(str(err), EXIT_USAGE)
    except MaintenanceBusy as err:
        fail(str(err))
    table = Table(title=f"compacted: {report.merged} files merged into {report.written}")
    for col in ("channel", "files before", "files after"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for channel, (before, after) in sorted(report.per_channel.items()):
        table.add_row(channel, f"{before:,}", f"{after:,}")
    table.caption = f"retired files deleted: {report.purged}; kept for readers or the grace period: {report.held}"
    console.print(table)


@lake_app.command("expire")
def lake_expire(
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Delete whole partitions older than lake.retention_days of their channel, and their catalog entries."""
    from data_feed.catalog import NoLake
    from data_feed.compaction import MaintenanceBusy
    from data_feed.retention import expire, expire_s3

    cfg = load_config_or_exit(config)
    setup_logging("retention")
    try:
        report = expire_s3(cfg.lake) if cfg.lake.s3 and not lake else expire(lake or Path(cfg.lake.root), cfg.lake)
    except NoLake as err:
        fail(str(err), EXIT_USAGE)
    except MaintenanceBusy as err:
        fail(str(err))
    for channel, parts in sorted(report.partitions.items()):
        console.print(f"{channel}: expired {len(parts)} partitions")
    console.print(f"files expired: {report.files}; deleted: {report.purged}; kept for readers: {report.held}")


@lake_app.command("repair")
def lake_repair(
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Rebuild a lost or partial catalog: register every parquet file of the lake's layout it does not list."""
    from data_feed.catalog import NoLake
    from data_feed.compaction import MaintenanceBusy
    from data_feed.repair import repair

    cfg = None if lake else load_config_or_exit(config)
    if cfg is not None and cfg.lake.s3:
        fail("lake repair rebuilds a local catalog; a lake on S3 (lake.s3) is catalogued by Glue", EXIT_USAGE)
    root = lake or Path(cfg.lake.root if cfg else ".")
    setup_logging("repair")
    try:
        report = repair(root)
    except NoLake as err:
        fail(str(err), EXIT_USAGE)
    except (MaintenanceBusy, OSError) as err:
        fail(str(err))
    for channel, (files, rows) in sorted(report.registered.items()):
        typer.echo(f"{channel}: registered {files:,} files ({rows:,} rows)")
    typer.echo(f"files registered: {sum(f for f, _ in report.registered.values()):,}; already listed: "
               f"{report.known:,}; members of compacted files recorded as retired: {report.retired:,}")
    for label, paths in (("skipped (not a readable lake file)", report.unreadable),
                         ("left out (merged file of an interrupted compaction)", report.orphans),
                         ("registered but possibly duplicated by a compacted file", report.ambiguous)):
        for path in paths:
            typer.echo(f"{label}: {path}", err=True)


@app.command()
def status(config: ConfigOpt = None) -> None:
    """List the running roles with PID, uptime, restarts, and the aggregator's lag; exit 1, saying why, unless
    every role is up."""
    cfg = load_config_or_exit(config)
    run_dir = RunDir(Path(cfg.spawner.run_dir))
    health = _fetch_health(run_dir.spawner_file)
    table = Table(title=f"data-feed: {health['status']} (spawner pid {health['pid']}, up {health['uptime_s']}s)")
    for col in ("role", "pid", "alive", "uptime (s)", "restarts"):
        table.add_column(col)
    for r in health["roles"]:
        table.add_row(r["role"], str(r["pid"]), "yes" if r["alive"] else "NO", str(r["uptime_s"]), str(r["restarts"]))
    console.print(table)
    lag = Table(title="consumer lag (stream entries not yet in the lake)")
    lag.add_column("stream")
    lag.add_column("lag", justify="right")
    for key, value in health["lag"].items():
        lag.add_row(key, str(value))
    console.print(lag)
    if health["status"] != "ok":
        fail(f"data-feed is {health['status']}: {'; '.join(unhealthy_reasons(health, run_dir.logs_dir))}")


def unhealthy_reasons(health: dict[str, Any], logs_dir: Path) -> list[str]:
    """Why a /health body is not ok, one phrase per cause."""
    reasons = ["the spawner is stopping every role"] if health["status"] == "stopping" else []
    reasons += [f"{r['role']} is not running (restarted {r['restarts']} times; see "
                f"{logs_dir / (r['role'].replace(' ', '-') + '.log')})" for r in health["roles"] if not r["alive"]]
    return reasons or [f"/health says {health['status']}"]


def _fetch_health(state_file: Path) -> dict[str, Any]:
    if not state_file.exists():
        fail(f"data-feed is not running (no {state_file})")
    port = json.loads(state_file.read_text())["http_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 503 still carries the health body
        body = json.loads(err.read())
    except OSError as err:
        fail(f"data-feed is not answering on port {port} ({err}); stale {state_file}?")
    return body


def main() -> None:
    app()


if __name__ == "__main__":
    main()
