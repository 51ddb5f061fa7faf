"""How every command of the project ends on a user's mistake: one ``error: ...`` line and an exit code.

2 (``EXIT_USAGE``) for a bad argument, config or environment (nothing was started), 1 (``EXIT_FAILED``) for a
failure while working. Shared by ``data-feed``, ``data-feed role`` and ``featurizer``, so none of them imports
another's command line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NoReturn

import typer

from data_feed.contracts.config import Config, ConfigError, load_config
from data_feed.observability.logs import JsonFormatter
from data_feed.observability.logs import log_format as current_log_format

EXIT_USAGE = 2  # a bad argument, config or environment: nothing was started
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """``error: message`` on stderr, unwrapped (messages hold paths and keys), then exit ``code``; a JSON log
    line instead with ``--log-format json``."""
    if current_log_format() == "json":
        record = logging.LogRecord("data_feed.cli", logging.ERROR, __file__, 0, message, None, None)
        typer.echo(JsonFormatter("cli").format(record), err=True)
    else:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_config_or_exit(config: Path | None) -> Config:
    """The config, or exit code 2 with every bad key's path on stderr (before anything starts)."""
    try:
        return load_config(config)
    except ConfigError as err:
        fail(str(err), EXIT_USAGE)
