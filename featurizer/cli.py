"""The ``featurizer`` command line: recompute features from the lake for a period (``backfill``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from data_feed.contracts.instants import format_instant, parse_instant
from data_feed.lake.catalog import NoLake, require_lake
from data_feed.observability.exits import EXIT_USAGE, fail, load_config_or_exit
from featurizer.backfill import Period, backfill, not_whole_in_lake

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
err_console = Console(stderr=True)



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
    incomplete: Annotated[bool, typer.Option("--incomplete", help="write only the slices the lake's features "
                                             "table has marked incomplete or lacks")] = False,
) -> None:
    """Compute the features of [--from, --to) from the lake, exactly as the live featurizer does."""
    cfg = load_config_or_exit(config)
    period = Period(parse_time(start), parse_time(end))
    if period.end_ns <= period.start_ns:
        raise typer.BadParameter("--to must be after --from")
    if not out.parent.is_dir():
        fail(f"--out {out}: no directory {out.parent} to write it in", EXIT_USAGE)
    try:
        root = require_lake(lake or Path(cfg.lake.root))
    except NoLake as err:
        fail(str(err), EXIT_USAGE)
    columns = (TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
        task = bar.add_task("records", total=None)
        totals: list[int] = []

        def on_total(n: int) -> None:
            totals.append(n)
            bar.update(task, total=n)

        table = backfill(root, list(cfg.exchanges), cfg.featurizer, cfg.lake.slice_seconds, period, time.time_ns(),
                         progress=lambda n: bar.advance(task, n), on_total=on_total)
    if not sum(totals):
        fail(f"no trades or l2_book rows of {', '.join(cfg.exchanges)} in the lake at {root} from "
             f"{format_instant(period.start_ns)} to {format_instant(period.end_ns)}; nothing written to {out}")
    what = "feature rows"
    if incomplete:
        table, what = not_whole_in_lake(root, table), "feature rows the lake has incomplete or lacks"
    pq.write_table(table, out, compression="zstd")
    err_console.print(f"{table.num_rows:,} {what} ({', '.join(cfg.featurizer.intervals)}) written to {out}",
                      markup=False, highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
