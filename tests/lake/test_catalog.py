"""The catalog as readers meet it: a lake the reader cannot write (an analyst's read-only mount) is queried and its
books decoded through a read-only catalog, without writing a byte, whether its aggregator stopped cleanly (no
WAL files) or still has the catalog open."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_feed.lake.catalog import LocalCatalog, NoLake
from tests.conftest import make_config
from tests.lakes import T0, cli, land, make_read_only, make_writable, trade_rows

COUNT = "select count(*) as n, count(distinct id) as ids from trades"


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture()
def lake(tmp_path: Path, redis_url: str) -> Path:
    cfg = make_config(tmp_path, lake={"slice_seconds": 1, "allowed_lateness_seconds": 0})
    land(cfg, redis_url, "BINANCE", "trades", trade_rows("BTC-USDT", 500))
    book = [("BTC-USDT", T0 + 0.5, T0 + 0.5, side, 100.0 + k, 1.0, True, 1)
            for side, k in (("bid", -1), ("ask", 1))]
    return land(cfg, redis_url, "BINANCE", "l2_book", book)


@pytest.mark.parametrize("writer_open", [False, True], ids=["stopped-cleanly", "writer-running"])
def test_a_read_only_lake_is_queried_without_writing_anything(lake: Path, writer_open: bool) -> None:
    writer = LocalCatalog(lake) if writer_open else None  # holds the WAL files open, as a live aggregator does
    before = _listing(lake)
    make_read_only(lake)
    try:
        out = cli("query", COUNT, "--lake", str(lake), "--format", "csv", unprivileged=True)
        book = cli("book", "BINANCE", "BTC-USDT", "--at", str(T0 + 1), "--lake", str(lake), unprivileged=True)
        after = _listing(lake)
    finally:
        make_writable(lake)
        if writer is not None:
            writer.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout == "n,ids\n500,500\n"
    assert book.returncode == 0 and "99.0" in book.stdout and "101.0" in book.stdout, book.stderr
    assert after == before  # no lease, no WAL, no lock file


def test_a_writable_lake_still_leases_its_snapshots(lake: Path) -> None:
    catalog = LocalCatalog.existing(lake)
    try:
        assert not catalog.read_only
        snap = catalog.snapshot()
        assert snap.lease > 0 and catalog.db.execute("SELECT count(*) FROM leases").fetchone() == (1,)
        catalog.release(snap.lease)
    finally:
        catalog.close()


def test_existing_never_creates_a_lake(tmp_path: Path) -> None:
    with pytest.raises(NoLake, match="no such directory"):
        LocalCatalog.existing(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
