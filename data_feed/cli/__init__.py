"""The ``data-feed`` command line (``main``; its help text is ``common.CLI_HELP``).

The subcommands live in this package by concern: ``pipeline`` (run, record, role, sim, replay),
``history`` (query, book), ``access`` (``data_feed.access.cli``), ``maintenance`` (lake) and ``health``
(status); ``common`` holds the app, the option types and the start-up checks they share. Every mistake a
user can make ends in one ``error: ...`` line on stderr and a non-zero exit (``data_feed.observability.exits``).
"""

from __future__ import annotations

# isort: off
# Importing a module registers its commands: this order is the order of ``data-feed --help``.
from data_feed.cli import pipeline, history, health
from data_feed.cli.common import app
from data_feed.cli.maintenance import lake_app

# isort: on


def _add_groups() -> None:
    from data_feed.access.cli import app as access_app

    app.add_typer(access_app, name="access", help="Signal access: consumers, datasets, permissions, audit.")
    app.add_typer(lake_app, name="lake")


_add_groups()


def main() -> None:
    app()


__all__ = ["app", "health", "history", "main", "pipeline"]
