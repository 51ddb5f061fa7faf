"""Order-book state from the lake: the opening snapshot of each l2_book slice, and the book at any instant.

l2_book rows are level changes replayed in ``ts_recv`` order; a run of rows with
``snapshot = true`` sharing one ``ts_recv`` replaces the whole book. The
aggregator starts every l2_book slice with such a run (the book at the end of
the symbol's previous slice, ``book_snapshot_depth`` levels per side, stamped
one nanosecond before the slice's first row, so never a whole microsecond as
collector times are), so any single file decodes alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_feed.contracts.instants import INT64_MAX, format_instant
from data_feed.contracts.schemas import L2_BOOK, Channel
from data_feed.lake.catalog import LocalCatalog

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


@dataclass(frozen=True)
class BookAt:
    """The book at an instant, and the instant of its last change (``as_of_ns`` <= the requested time)."""

    levels: Levels
    as_of_ns: int
    beyond_data: bool  # the requested time is after the symbol's last l2_book row in the lake


def book_at(root: str | Path, exchange: str, symbol: str, at_ns: int, depth: int) -> Levels:
    """The top ``depth`` levels per side at exchange time ``at_ns``, from the one slice that holds it."""
    return book_view(root, exchange, symbol, at_ns, depth).levels


def book_view(root: str | Path, exchange: str, symbol: str, at_ns: int, depth: int) -> BookAt:
    """The book at exchange time ``at_ns`` with the time of its last change; ``LookupError`` (saying where the
    data starts) when the lake holds no l2_book row of the symbol at or before ``at_ns``."""
    root = Path(root)
    catalog = LocalCatalog.existing(root)
    try:
        files = catalog.files(Channel.L2_BOOK, exchange, symbol)
    finally:
        catalog.close()
    if not files:
        raise LookupError(f"exchange={exchange} symbol={symbol}: no l2_book data in the lake at {root}")
    at = min(at_ns, INT64_MAX)
    last_start = max(f.slice_start_ns for f in files)
    for start in sorted({f.slice_start_ns for f in files if f.slice_start_ns <= at}, reverse=True)[:2]:
        rows = read_files(root, [f.path for f in files if f.slice_start_ns == start])
        before = rows[rows["ts_event"] <= at]
        if not before.empty:
            as_of = int(before["ts_event"].max())
            beyond = start == last_start and len(before) == len(rows)
            return BookAt(top(book_state(before), depth), as_of, beyond)
    first = read_files(root, [f.path for f in files if f.slice_start_ns == min(f.slice_start_ns for f in files)])
    raise LookupError(f"exchange={exchange} symbol={symbol}: {format_instant(at_ns)} is before the first l2_book "
                      f"row in the lake, at {format_instant(int(first['ts_event'].min()))}")
