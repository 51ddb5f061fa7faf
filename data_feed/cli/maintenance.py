"""``data-feed lake compact|expire|repair``: lake maintenance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from data_feed.cli.common import ConfigOpt, console
from data_feed.contracts.config import LakeConfig
from data_feed.observability.exits import EXIT_USAGE, fail, load_config_or_exit
from data_feed.observability.logs import setup_logging

lake_app = typer.Typer(no_args_is_help=True, help="Lake maintenance: compaction, retention, catalog repair.")


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
    from data_feed.lake.catalog import NoLake
    from data_feed.lake.compaction import BYTES_PER_MB, MaintenanceBusy, compact, parse_duration

    cfg = load_config_or_exit(config)
    setup_logging("compaction")
    try:
        target = target_mb * BYTES_PER_MB if target_mb else None
        report = compact(_lake_root(cfg.lake, lake), cfg.lake, parse_duration(older_than), target)
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
    from data_feed.lake.catalog import NoLake
    from data_feed.lake.compaction import MaintenanceBusy
    from data_feed.lake.retention import expire

    cfg = load_config_or_exit(config)
    setup_logging("retention")
    try:
        report = expire(_lake_root(cfg.lake, lake), cfg.lake)
    except NoLake as err:
        fail(str(err), EXIT_USAGE)
    except MaintenanceBusy as err:
        fail(str(err))
    for channel, parts in sorted(report.partitions.items()):
        console.print(f"{channel}: expired {len(parts)} partitions")
    console.print(f"files expired: {report.files}; deleted: {report.purged}; kept for readers: {report.held}")


def _lake_root(cfg: LakeConfig, lake: Path | None) -> Path | None:
    """The local lake maintenance works on; None for the lake on S3 (``lake.s3`` set and no ``--lake``)."""
    return None if cfg.s3 and not lake else lake or Path(cfg.root)


@lake_app.command("repair")
def lake_repair(
    lake: Annotated[Path | None, typer.Option(help="lake directory (default: lake.root of the config)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Rebuild a lost or partial catalog: register every parquet file of the lake's layout it does not list."""
    from data_feed.lake.catalog import NoLake
    from data_feed.lake.compaction import MaintenanceBusy
    from data_feed.lake.repair import repair

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
