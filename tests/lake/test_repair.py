"""`data-feed lake repair` rebuilds a lost catalog from the lake's files: every file of the Hive layout registered
with its rows and size, members of compacted files still on disk recorded as retired (so no row is listed twice
and the next compaction deletes them), and a second run changes nothing."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from data_feed.access.query import run_query
from data_feed.cli import app
from data_feed.contracts.config import Config
from data_feed.lake.catalog import CATALOG_FILE, LocalCatalog
from data_feed.lake.compaction import compact
from tests.conftest import make_config
from tests.lakes import land, trade_rows

runner = CliRunner()
COUNTS = "select count(*) as n, count(distinct (symbol, id)) as ids, sum(price * amount) as notional from trades"


def _lake(tmp_path: Path, redis_url: str) -> tuple[Config, Path]:
    cfg = make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})
    for symbol in ("BTC-USDT", "ETH-USDT"):
        land(cfg, redis_url, "BINANCE", "trades", trade_rows(symbol, 1200, step=0.01))  # 12 one-second slices
    return cfg, Path(cfg.lake.root)


def _lose_catalog(root: Path) -> None:
    for path in root.glob(CATALOG_FILE + "*"):
        path.unlink()


def _catalogued(root: Path) -> set[object]:
    catalog = LocalCatalog(root)
    try:
        return {f for channel in ("trades", "l2_book", "ticker") for f in catalog.files(channel)}
    finally:
        catalog.close()


def _repair(root: Path) -> str:
    out = runner.invoke(app, ["lake", "repair", "--lake", str(root)])
    assert out.exit_code == 0, out.stderr
    return out.stdout


def test_repair_of_a_lost_catalog_registers_every_file_with_its_rows_and_size(tmp_path: Path,
                                                                                redis_url: str) -> None:
    _, root = _lake(tmp_path, redis_url)
    before, counts = _catalogued(root), run_query(root, COUNTS).iloc[0].tolist()
    _lose_catalog(root)
    assert runner.invoke(app, ["query", COUNTS, "--lake", str(root)]).exit_code == 2  # no lake without it
    out = _repair(root)
    assert f"trades: registered {len(before)} files (2,400 rows)" in out
    assert _catalogued(root) == before  # same paths, partitions, slice starts, rows and bytes
    assert run_query(root, COUNTS).iloc[0].tolist() == counts == [2400, 2400, counts[2]]
    again = _repair(root)
    assert "files registered: 0; already listed: 24;" in again and _catalogued(root) == before


def test_repair_after_compaction_lists_each_row_once_and_retires_the_merged_files_members(
        tmp_path: Path, redis_url: str) -> None:
    cfg, root = _lake(tmp_path, redis_url)
    size = max(f.bytes for f in _catalogued(root))  # type: ignore[attr-defined]
    report = compact(root, cfg.lake, older_than_seconds=0, target_bytes=4 * size)
    assert report.merged > report.written > 0 and report.held == report.merged  # members still on disk
    before, counts = _catalogued(root), run_query(root, COUNTS).iloc[0].tolist()
    _lose_catalog(root)
    out = _repair(root)
    assert f"members of compacted files recorded as retired: {report.merged}" in out
    assert _catalogued(root) == before
    assert run_query(root, COUNTS).iloc[0].tolist() == counts and counts[:2] == [2400, 2400]
    no_grace = cfg.lake.model_copy(update={"compaction_grace_seconds": 0})
    purged = compact(root, no_grace, older_than_seconds=0, target_bytes=4 * size)
    assert purged.purged == report.merged  # the next compaction deletes the members repair found
    assert run_query(root, COUNTS).iloc[0].tolist() == counts


def test_repair_registers_only_the_files_a_partial_catalog_lacks(tmp_path: Path, redis_url: str) -> None:
    _, root = _lake(tmp_path, redis_url)
    before = _catalogued(root)
    catalog = LocalCatalog(root)
    dropped = [f.path for f in catalog.files("trades", "BINANCE", "ETH-USDT")][:5]
    catalog.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in dropped])
    catalog.close()
    assert "trades: registered 5 files" in _repair(root)
    assert _catalogued(root) == before


def test_repair_skips_files_that_are_not_lake_files_and_refuses_what_is_no_lake(tmp_path: Path,
                                                                                 redis_url: str) -> None:
    _, root = _lake(tmp_path, redis_url)
    partition = next(root.glob("trades/exchange=*/symbol=*/date=*"))
    (partition / "20231114T221320Z-garbage.parquet").write_bytes(b"not parquet")
    out = runner.invoke(app, ["lake", "repair", "--lake", str(root)])
    assert out.exit_code == 0
    assert f"skipped (not a readable lake file): {partition.relative_to(root)}/20231114T221320Z-garbage.parquet" \
        in out.stderr
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "nope", "no such directory"),
                      (tmp_path / "empty", "no _catalog.sqlite and no lake files under it")):
        refused = runner.invoke(app, ["lake", "repair", "--lake", str(path)])
        assert refused.exit_code == 2 and refused.stderr == f"error: no lake at {path}: {why}\n"
    assert not (tmp_path / "nope").exists() and not list((tmp_path / "empty").iterdir())


def test_repaired_lake_answers_the_cli_as_before(tmp_path: Path, redis_url: str) -> None:
    _, root = _lake(tmp_path, redis_url)
    sql = "select symbol, count(*) as n from trades group by 1 order by 1"
    before = runner.invoke(app, ["query", sql, "--lake", str(root), "--format", "csv"]).stdout
    _lose_catalog(root)
    _repair(root)
    after = runner.invoke(app, ["query", sql, "--lake", str(root), "--format", "csv"]).stdout
    assert after == before == "symbol,n\nBTC-USDT,1200\nETH-USDT,1200\n"
