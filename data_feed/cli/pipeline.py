"""``data-feed run``, ``record``, ``role``, ``sim`` and ``replay``: starting the pipeline, one role or the simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from data_feed.cli.common import (
    ConfigOpt,
    DurationOpt,
    LogFormat,
    LogFormatOpt,
    app,
    check_environment_or_exit,
    claim_run_dir,
    console,
    exit_if_busy,
    exit_on_unoffered,
    replay_speed,
)
from data_feed.contracts.config import DEFAULT_CONFIG_PATH, Config, ConfigError
from data_feed.observability.exits import EXIT_USAGE, fail, load_config_or_exit
from data_feed.observability.logs import log_format as current_log_format
from data_feed.observability.logs import setup_logging

if TYPE_CHECKING:
    from data_feed.runtime.spawner import Spawner


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
    from data_feed.collector.recorder import recording_config

    _run_pipeline(recording_config(load_config_or_exit(config), out), duration, status, _source(config))


def _source(config: Path | None) -> str:
    return str(config or DEFAULT_CONFIG_PATH)


def _run_pipeline(cfg: Config, duration: float | None, status: bool, source: str) -> None:
    exit_if_busy(cfg)  # first: a second run in this directory is told which PID holds it
    check_environment_or_exit(cfg)
    run_dir = claim_run_dir(cfg)
    exit_on_unoffered(cfg, source)  # still before any role starts
    setup_logging("spawner")
    from data_feed.runtime.spawner import Spawner

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
        from data_feed.cache.streams import STATE_FRAMES_FIELD

        self.last = time.monotonic()
        frames = {ex: st.get(STATE_FRAMES_FIELD, "0") for ex, st in spawner.collector_states().items()}
        rows = {ch: v["rows"] for ch, v in spawner.run_summary().items()}
        logging.getLogger("data_feed.spawner").info("frames received %s; rows landed %s", frames, rows)


def _run_with_live_status(spawner: Spawner, duration: float | None) -> None:
    from rich.live import Live

    from data_feed.cache.streams import STATE_FRAMES_FIELD, STATE_RECORDS_PREFIX, parse_stream_key

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
            lag = sum(v for k, v in health["lag"].items() if parse_stream_key(k)[0] == ex)
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
    from data_feed.runtime.roles import main as role_main

    argv = [name, *([arg] if arg else []), "--config", str(config), "--http-port", str(http_port),
            "--http-host", http_host, "--shard", str(shard)]
    raise typer.Exit(role_main(argv))


@app.command()
def sim(config: ConfigOpt = None) -> None:
    """Run the exchange simulator alone (every exchange whose source is 'simulator')."""
    cfg = load_config_or_exit(config)
    exit_on_unoffered(cfg, _source(config))  # this process serves the simulator: no multiprocess metrics
    if not cfg.simulated():
        fail("no exchange in the config has source: simulator", EXIT_USAGE)
    setup_logging("simulator")
    from data_feed.sim.server import serve_forever

    asyncio.run(serve_forever(cfg, cfg.simulator_cert_dir()))


@app.command()
def replay(
    files: Annotated[list[Path], typer.Argument(help="recorded sessions (.jsonl or .jsonl.zst), one per exchange")],
    speed: Annotated[str, typer.Option(help="X times the recorded pace, or 'max'", callback=replay_speed)] = "max",
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Serve recorded sessions through the whole pipeline into the lake; return once all of it has landed."""
    from data_feed.contracts.capture import SessionError
    from data_feed.runtime.replay import replay_config, run_replay

    try:
        pace = None if speed == "max" else float(speed)
        cfg = replay_config(load_config_or_exit(config), files, pace, lake)
    except (ValueError, OSError, ConfigError, SessionError) as err:
        fail(str(err), EXIT_USAGE)
    exit_if_busy(cfg)
    check_environment_or_exit(cfg)
    run_dir = claim_run_dir(cfg)
    exit_on_unoffered(cfg, "replay")
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
