"""Order-book state from the lake: the opening snapshot of each l2_book slice, and the book at any instant.

l2_book rows are level changes replayed in ``ts_recv`` order; a run of rows with
``snapshot = true`` sharing one ``ts_recv`` replaces the whole book. The
aggregator starts every l2_book slice with such a run (the book at the end of
the symbol's previous slice, ``book_snapshot_depth`` levels per side, stamped
one nanosecond before the slice's first row, so never a whole microsecond as
collector times are), so any single file decodes alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_feed.catalog import LocalCatalog
from data_feed.schemas import L2_BOOK

SIDES = ("bid", "ask")
SNAPSHOT_STAMP_OFFSET_NS = 1  # the opening snapshot sorts just before the slice's first row


Book = dict[str, dict[float, float]]  # side -> price -> size
Levels = dict[str, list[tuple[float, float]]]  # side -> [(price, size)], best first


def book_state(rows: pd.DataFrame) -> Book:
    """The book after applying ``rows`` (l2_book columns) in ``ts_recv`` order, from their last snapshot run."""
    book: Book = {side: {} for side in SIDES}
    if rows.empty:
        return book
    rows = rows.sort_values("ts_recv", kind="stable")
    snap = rows["snapshot"].to_numpy(dtype=bool)
    recv = rows["ts_recv"].to_numpy()
    run_starts = np.flatnonzero(snap & ~np.concatenate(([False], snap[:-1] & (recv[1:] == recv[:-1]))))
    tail = rows.iloc[int(run_starts[-1]):] if len(run_starts) else rows
    last = tail.drop_duplicates(["side", "price"], keep="last")
    for side, price, size in zip(last["side"], last["price"], last["size"], strict=True):
        if size > 0:
            book[side][float(price)] = float(size)
    return book


def top(book: Book, depth: int) -> Levels:
    return {"bid": sorted(book["bid"].items(), reverse=True)[:depth], "ask": sorted(book["ask"].items())[:depth]}


def snapshot_table(book: Book, depth: int, ts_event: int, ts_recv: int) -> pa.Table:
    """Snapshot rows of the book's top ``depth`` levels per side, in l2_book's schema."""
    levels = top(book, depth)
    sides = [side for side in SIDES for _ in levels[side]]
    prices = [p for side in SIDES for p, _ in levels[side]]
    sizes = [s for side in SIDES for _, s in levels[side]]
    n = len(sides)
    return pa.Table.from_pydict({"ts_event": [ts_event] * n, "ts_recv": [ts_recv] * n, "side": sides,
                                 "price": prices, "size": sizes, "snapshot": [True] * n, "sequence": [None] * n},
                                schema=L2_BOOK)


def read_files(root: Path, paths: list[str]) -> pd.DataFrame:
    tables = [pq.read_table(root / p, schema=L2_BOOK) for p in paths]
    return pa.concat_tables(tables).to_pandas() if tables else L2_BOOK.empty_table().to_pandas()


def previous_slice_files(catalog: LocalCatalog, exchange: str, symbol: str, before_ns: int) -> list[str]:
    """Every part of the symbol's latest l2_book slice that starts before ``before_ns``."""
    files = [f for f in catalog.files("l2_book", exchange, symbol) if f.slice_start_ns < before_ns]
    if not files:
        return []
    latest = max(f.slice_start_ns for f in files)
    return [f.path for f in files if f.slice_start_ns == latest]


def book_at(root: str | Path, exchange: str, symbol: str, at_ns: int, depth: int) -> Levels:
    """The top ``depth`` levels per side at exchange time ``at_ns``, from the one slice that holds it."""
    root = Path(root)
    catalog = LocalCatalog(root)
    try:
        paths = previous_slice_files(catalog, exchange, symbol, at_ns + 1)
    finally:
        catalog.close()
    if not paths:
        raise LookupError(f"exchange={exchange} symbol={symbol}: no l2_book slice in the lake at or before {at_ns}")
    rows = read_files(root, paths)
    return top(book_state(rows[rows["ts_event"] <= at_ns]), depth)


def parse_instant(text: str) -> int:
    """Epoch nanoseconds of ISO-8601 (UTC unless it names a zone) or of epoch seconds."""
    try:
        return round(float(text) * 1e6) * 1000
    except ValueError:
        pass
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected ISO-8601 (2024-05-01T12:00:00) or epoch seconds") from None
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.value)
