"""The ``data-feed`` command line: run the pipeline, the simulator alone, SQL queries and status."""

from __future__ import annotations

import asyncio
import json
import logging
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

from data_feed.config import Config, ConfigError, load_config
from data_feed.logs import setup_logging
from data_feed.runtime import RunDir, RunDirBusy

if TYPE_CHECKING:
    from data_feed.spawner import Spawner

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the embedded one)")]


class Engine(StrEnum):
    duckdb = "duckdb"
    athena = "athena"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def load_config_or_exit(config: Path | None) -> Config:
    """The config, or exit code 2 with every bad key's path on stderr (before anything starts)."""
    try:
        return load_config(config)
    except ConfigError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)  # messages may hold [brackets]
        raise typer.Exit(2) from None


def claim_run_dir(cfg: Config) -> RunDir:
    """The run directory, locked for this pipeline; exit code 2 naming the holder when another run has it."""
    run_dir = RunDir(Path(cfg.spawner.run_dir))
    try:
        run_dir.prepare_environment()  # before prometheus_client is imported
    except RunDirBusy as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    return run_dir


@app.command()
def run(
    config: ConfigOpt = None,
    duration: Annotated[float | None, typer.Option(help="stop cleanly after this many seconds")] = None,
    status: Annotated[bool, typer.Option(help="live status table (when stdout is a terminal)")] = True,
) -> None:
    """Run the whole pipeline (simulator, collectors, aggregator) until Ctrl-C or --duration."""
    _run_pipeline(load_config_or_exit(config), duration, status)


@app.command()
def record(
    out: Annotated[Path, typer.Option(help="directory for the session files, one per exchange")],
    config: ConfigOpt = None,
    duration: Annotated[float | None, typer.Option(help="stop cleanly after this many seconds")] = None,
    status: Annotated[bool, typer.Option(help="live status table (when stdout is a terminal)")] = True,
) -> None:
    """Run the pipeline and also record every exchange's raw session (REST, websocket frames) for replay."""
    from data_feed.recorder import recording_config

    _run_pipeline(recording_config(load_config_or_exit(config), out), duration, status)


def _run_pipeline(cfg: Config, duration: float | None, status: bool) -> None:
    run_dir = claim_run_dir(cfg)
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
    if status and sys.stdout.isatty():
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
        self.last = time.monotonic()
        frames = {ex: st.get("frames_received", "0") for ex, st in spawner.collector_states().items()}
        rows = {ch: v["rows"] for ch, v in spawner.run_summary().items()}
        logging.getLogger("data_feed.spawner").info("frames received %s; rows landed %s", frames, rows)


def _run_with_live_status(spawner: Spawner, duration: float | None) -> None:
    from rich.live import Live

    rates: dict[str, tuple[float, int]] = {}

    def render() -> Table:
        table = Table(title="data-feed (Ctrl-C stops cleanly)")
        for col in ("exchange", "frames/s", "frames", "records cached", "lag (entries)"):
            table.add_column(col, justify="right" if col != "exchange" else "left")
        health = spawner.health()
        for ex, st in spawner.collector_states().items():
            frames = int(st.get("frames_received", 0))
            t0, f0 = rates.get(ex, (time.monotonic(), frames))
            rate = (frames - f0) / max(time.monotonic() - t0, 1e-9)
            rates[ex] = (time.monotonic(), frames)
            cached = sum(int(v) for k, v in st.items() if k.startswith("records_"))
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
    table = Table(title="landed this run")
    for col in ("channel", "rows", "files", "bytes"):
        table.add_column(col, justify="left" if col == "channel" else "right")
    for channel, v in sorted(summary.items()):
        table.add_row(channel, f"{v['rows']:,}", f"{v['files']:,}", f"{v['bytes']:,}")
    console.print(table)


@app.command()
def sim(config: ConfigOpt = None) -> None:
    """Run the exchange simulator alone (every exchange whose source is 'simulator')."""
    cfg = load_config_or_exit(config)
    if not cfg.simulated():
        err_console.print("error: no exchange in the config has source: simulator")
        raise typer.Exit(2)
    setup_logging("simulator")
    from data_feed.sim.server import serve_forever

    run_dir = RunDir(Path(cfg.spawner.run_dir))
    run_dir.sim_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve_forever(cfg, run_dir.sim_dir, run_dir.sim_ready_file))


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(help="recorded sessions (.jsonl or .jsonl.zst), one per exchange")],
    speed: Annotated[str, typer.Option(help="X times the recorded pace, or 'max'")] = "max",
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Serve recorded sessions through the whole pipeline into the lake; return once all of it has landed."""
    from data_feed.replay import replay_config, run_replay
    from data_feed.sim.session import SessionError

    try:
        pace = None if speed == "max" else float(speed)
        cfg = replay_config(load_config_or_exit(config), files, pace, lake)
    except (ValueError, OSError, ConfigError, SessionError) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    run_dir = claim_run_dir(cfg)
    setup_logging("spawner")
    try:
        served, summary = run_replay(cfg, run_dir)
    except Exception as err:
        logging.getLogger("data_feed.replay").error("replay failed: %s", err)
        raise typer.Exit(1) from None
    for exchange, st in sorted(served.items()):
        console.print(f"{exchange}: served {st.get('frames_sent', 0):,} of {st.get('frames_total', 0):,} frames")
    _print_summary(summary)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the views trades, l2_book, ticker")],
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config, or the "
                                              "lake on S3 when lake.s3 is set)")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
    engine: Annotated[Engine, typer.Option(help="duckdb: the lake (local or lake.s3); athena: the configured Athena "
                                           "workgroup (SQL in Athena's dialect)")] = Engine.duckdb,
    dialect: Annotated[Engine | None, typer.Option(help="dialect of the SQL (default: the engine's); "
                                                   "--dialect athena on duckdb translates it")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run SQL over the lake with DuckDB, or on Athena."""
    from data_feed.query import QueryError, run_athena, run_query

    try:
        if engine is Engine.athena:
            df = run_athena(sql, load_config_or_exit(config).athena)
        else:
            s3 = None if lake else load_config_or_exit(config).lake.s3
            root = lake or Path(load_config_or_exit(config).lake.root)
            df = run_query(root, sql, "athena" if dialect is Engine.athena else "duckdb", s3=s3)
    except QueryError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if fmt is OutputFormat.csv:
        sys.stdout.write(df.to_csv(index=False))
    elif fmt is OutputFormat.json:
        sys.stdout.write(df.to_json(orient="records", lines=True, date_format="iso") + "\n")
    else:
        table = Table()
        for col in df.columns:
            table.add_column(str(col))
        for row in df.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        console.print(table)


@app.command()
def book(
    exchange: Annotated[str, typer.Argument(help="e.g. BINANCE")],
    symbol: Annotated[str, typer.Argument(help="e.g. BTC-USDT")],
    at: Annotated[str, typer.Option(help="exchange time: ISO-8601 (UTC unless zoned) or epoch seconds")],
    depth: Annotated[int, typer.Option(min=1, help="levels per side")] = 10,
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the order book at one instant, decoded from the single l2_book slice that holds it."""
    from data_feed.book import book_at, parse_instant

    root = lake or Path(load_config_or_exit(config).lake.root)
    try:
        levels = book_at(root, exchange, symbol, parse_instant(at), depth)
    except (LookupError, ValueError) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    table = Table(title=f"{exchange} {symbol} at {at}")
    for col in ("bid size", "bid", "ask", "ask size"):
        table.add_column(col, justify="right")
    bids, asks = levels["bid"], levels["ask"]
    for i in range(max(len(bids), len(asks))):
        b = bids[i] if i < len(bids) else ("", "")
        a = asks[i] if i < len(asks) else ("", "")
        table.add_row(str(b[1]), str(b[0]), str(a[0]), str(a[1]))
    console.print(table)


lake_app = typer.Typer(no_args_is_help=True, help="Lake maintenance: compaction and retention.")
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
    from data_feed.compaction import BYTES_PER_MB, MaintenanceBusy, compact, compact_s3, parse_duration

    cfg = load_config_or_exit(config)
    setup_logging("compaction")
    try:
        target = target_mb * BYTES_PER_MB if target_mb else None
        if cfg.lake.s3 and not lake:
            report = compact_s3(cfg.lake, parse_duration(older_than), target)
        else:
            report = compact(lake or Path(cfg.lake.root), cfg.lake, parse_duration(older_than), target)
    except (ValueError, MaintenanceBusy) as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2 if isinstance(err, ValueError) else 1) from None
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
    from data_feed.compaction import MaintenanceBusy
    from data_feed.retention import expire, expire_s3

    cfg = load_config_or_exit(config)
    setup_logging("retention")
    try:
        report = expire_s3(cfg.lake) if cfg.lake.s3 and not lake else expire(lake or Path(cfg.lake.root), cfg.lake)
    except MaintenanceBusy as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    for channel, parts in sorted(report.partitions.items()):
        console.print(f"{channel}: expired {len(parts)} partitions")
    console.print(f"files expired: {report.files}; deleted: {report.purged}; kept for readers: {report.held}")


@app.command()
def status(config: ConfigOpt = None) -> None:
    """List the running roles with PID, uptime, restarts, and the aggregator's lag."""
    cfg = load_config_or_exit(config)
    state_file = RunDir(Path(cfg.spawner.run_dir)).spawner_file
    health = _fetch_health(state_file)
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


def _fetch_health(state_file: Path) -> dict[str, Any]:
    if not state_file.exists():
        err_console.print(f"data-feed is not running (no {state_file})")
        raise typer.Exit(1)
    port = json.loads(state_file.read_text())["http_port"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # 503 still carries the health body
        body = json.loads(err.read())
    except OSError as err:
        err_console.print(f"data-feed is not answering on port {port} ({err}); stale {state_file}?")
        raise typer.Exit(1) from None
    return body


def main() -> None:
    app()


if __name__ == "__main__":
    main()
