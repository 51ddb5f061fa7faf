"""What every ``data-feed`` subcommand shares: the Typer app, consoles, option types and start-up checks."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from data_feed.contracts.config import Config
from data_feed.contracts.rundir import RunDir, RunDirBusy, RunDirLock
from data_feed.observability.exits import EXIT_USAGE, fail
from data_feed.observability.logs import LOG_FORMAT_ENV

CLI_HELP = """\
The ``data-feed`` command line: run the pipeline, the simulator alone, SQL queries, books, lake upkeep, status.

Every mistake a user can make here ends in one ``error: ...`` line (or a config's list of bad keys) on
stderr and a non-zero exit: 2 for a bad argument, config or environment (nothing was started), 1 for a
failure while working. Nothing is created at a path given to read from.
"""  # data-feed --help

app = typer.Typer(add_completion=False, no_args_is_help=True, help=CLI_HELP)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the embedded one)")]
TABLE_MAX_ROWS = 1000  # rows of table output shown by default


def _positive_seconds(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g}: expected a number of seconds > 0")
    return value


def replay_speed(text: str) -> str:
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


def exit_on_unoffered(cfg: Config, source: str) -> None:
    """Exit 2 with the keys of every channel or simulated symbol an exchange does not offer. Imports the
    collector modules (and so prometheus-client): in a pipeline run, only after ``prepare_environment``."""
    from data_feed.runtime.preflight import offered_problems

    problems = offered_problems(cfg)
    if problems:
        fail(f"invalid config {source}:\n  " + "\n  ".join(problems), EXIT_USAGE)


def check_environment_or_exit(cfg: Config) -> None:
    from data_feed.runtime.preflight import PreflightError, check_environment

    try:
        check_environment(cfg)
    except PreflightError as err:
        fail(str(err), EXIT_USAGE)


def exit_if_busy(cfg: Config) -> None:
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


