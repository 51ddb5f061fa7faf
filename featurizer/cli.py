"""The ``featurizer`` command line: recompute features from the lake for a period (``backfill``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_feed.book import parse_instant
from data_feed.cli import load_config_or_exit
from featurizer.backfill import Period, backfill

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err_console = Console(stderr=True)

NS_PER_SECOND = 1_000_000_000


@app.callback()
def _main() -> None:
    """Featurizer commands (the live featurizer runs under ``data-feed run``)."""


def parse_time(text: str) -> int:
    """ISO-8601 (UTC unless it says otherwise) or epoch seconds -> int64 ns."""
    try:
        return parse_instant(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command("backfill")
def backfill_cmd(
    start: Annotated[str, typer.Option("--from", help="period start (ISO-8601 UTC or epoch seconds), inclusive")],
    end: Annotated[str, typer.Option("--to", help="period end, exclusive")],
    out: Annotated[Path, typer.Option(help="parquet file to write the features to")] = Path("features.parquet"),
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")] = None,
) -> None:
    """Compute the features of [--from, --to) from the lake, exactly as the live featurizer does."""
    cfg = load_config_or_exit(config)
    period = Period(parse_time(start), parse_time(end))
    if period.end_ns <= period.start_ns:
        raise typer.BadParameter("--to must be after --from")
    root = lake or Path(cfg.lake.root)
    columns = (TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("records", total=None)
        table = backfill(root, list(cfg.exchanges), cfg.featurizer, cfg.lake.slice_seconds, period, time.time_ns(),
                         progress=lambda n: bar.advance(task, n), on_total=lambda n: bar.update(task, total=n))
    pq.write_table(table, out, compression="zstd")
    err_console.print(f"{table.num_rows:,} feature rows ({', '.join(cfg.featurizer.intervals)}) written to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
