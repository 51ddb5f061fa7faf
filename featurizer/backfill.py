"""Backfill: the featurizer over the lake instead of the bus, for any past period.

Data flow: lake ``trades`` and ``l2_book`` files of one catalog snapshot -> rows with
``ts_event`` in [from, to) -> per exchange, every symbol's records in arrival order
(``ts_recv``) -> the same ``ExchangeFeaturizer`` the live role runs (which computes each slice's
trades in exchange order: event time, then trade id) -> a parquet file of ``features`` rows.
Because the engine, the slicing and the order of records are the live path's, a backfill of a
recorded period equals what the live featurizer published for it.

The aggregator opens each l2_book slice file with a synthetic snapshot of the book (stamped
off the microsecond grid, see ``data_feed.lake.book``); the live featurizer never saw those, so a
backfill uses only a symbol's first one (to start its book) and skips the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_feed.contracts.config import FEATURES_CHANNEL, FeaturizerConfig
from data_feed.contracts.schemas import NS_PER_SECOND, NS_PER_US, Channel, GapReason, schema_for
from data_feed.lake.catalog import CatalogFile, LocalCatalog
from featurizer._kernels import NO_TRADE_ID
from featurizer.engine import Closed, ExchangeFeaturizer
from featurizer.features import COMPLETE_COLUMN, VALUE_COLUMNS, interval_ns, overlaps, values

LOG = logging.getLogger("featurizer.backfill")

TRADE_COLUMNS = ["ts_event", "ts_recv", "id", "side", "price", "amount"]
BOOK_COLUMNS = ["ts_event", "ts_recv", "side", "price", "size", "snapshot"]
CHANNELS = (Channel.TRADES, Channel.L2_BOOK)
GAP_COLUMNS = ["ts_event", "channel", "reason", "missing_from_ts", "missing_to_ts"]

Progress = Callable[[int], None]  # called with how many records were just processed


@dataclass(frozen=True)
class Period:
    start_ns: int
    end_ns: int  # exclusive


def lake_records(root: Path, channel: str, exchange: str, period: Period, slice_ns: int) -> pa.Table:
    """One channel's rows of one exchange in the period, with a symbol column, in lake order."""
    catalog = LocalCatalog.existing(root)
    snap = catalog.snapshot()
    try:
        files = [f for f in snap.files.get(channel, []) if f.exchange == exchange
                 and period.start_ns - slice_ns < f.slice_start_ns < period.end_ns]
        files.sort(key=lambda f: (f.symbol, f.slice_start_ns, f.path))
        parts = [_read(root, f, channel, period) for f in files]
    finally:
        catalog.release(snap.lease)
        catalog.close()
    columns = TRADE_COLUMNS if channel == Channel.TRADES else BOOK_COLUMNS
    if not parts:
        schema = schema_for(channel)
        empty = {c: pa.array([], schema.field(c).type) for c in columns}
        return pa.table({"symbol": pa.array([], pa.string()), **empty})
    return pa.concat_tables(parts)


def _read(root: Path, f: CatalogFile, channel: str, period: Period) -> pa.Table:
    columns = TRADE_COLUMNS if channel == Channel.TRADES else BOOK_COLUMNS
    table = pq.read_table(root / f.path, columns=columns)
    ts = table.column("ts_event")
    table = table.filter(pc.and_(pc.greater_equal(ts, period.start_ns), pc.less(ts, period.end_ns)))
    return table.add_column(0, "symbol", pa.array([f.symbol] * table.num_rows, pa.string()))


def drop_opening_snapshots(book: pa.Table) -> pa.Table:
    """Keep real rows and each symbol's first synthetic opening snapshot (its starting book)."""
    if book.num_rows == 0:
        return book
    recv = book.column("ts_recv").to_numpy()
    # collector times are whole microseconds; the lake's opening snapshots are not
    synthetic = book.column("snapshot").to_numpy(zero_copy_only=False) & (recv % NS_PER_US != 0)
    symbols = book.column("symbol").to_numpy(zero_copy_only=False)
    first_row = np.zeros(len(recv), dtype=bool)
    _, first_index = np.unique(symbols, return_index=True)
    first_row[first_index] = True
    starts_symbol = np.cumsum(first_row)  # run id per symbol (rows are grouped by symbol)
    first_recv = recv[first_index][starts_symbol - 1]
    keep = ~synthetic | (recv == first_recv)
    return book.filter(pa.array(keep))


def _runs(keys: np.ndarray[tuple[int], np.dtype[np.int64]]) -> Iterator[tuple[int, int]]:
    """[start, end) of each run of equal consecutive keys."""
    if len(keys) == 0:
        return
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    bounds = np.concatenate(([0], cuts, [len(keys)]))
    yield from zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)


def gap_windows(root: Path, exchange: str) -> dict[str, list[tuple[int, int]]]:
    """Per symbol, the exchange time (ns) the lake's gaps rows say trades or book rows are missing, as the
    live featurizer reads them from the bus (a clean stop is not a gap: the end of the data is flushed)."""
    catalog = LocalCatalog(root)
    snap = catalog.snapshot()
    try:
        files = [f for f in snap.files.get(Channel.GAPS, []) if f.exchange == exchange]
        tables = [pq.read_table(root / f.path, columns=GAP_COLUMNS).append_column(
            "symbol", pa.array([f.symbol] * pq.read_metadata(root / f.path).num_rows, pa.string())) for f in files]
    finally:
        catalog.release(snap.lease)
    out: dict[str, list[tuple[int, int]]] = {}
    for table in tables:
        for row in table.to_pylist():
            if row["channel"] not in CHANNELS or row["reason"] == GapReason.STOPPED:
                continue
            lo = row["missing_from_ts"] if row["missing_from_ts"] is not None else row["ts_event"]
            hi = row["missing_to_ts"] if row["missing_to_ts"] is not None else row["ts_event"]
            out.setdefault(row["symbol"], []).append((int(lo), int(hi)))
    return out


def featurize_exchange(fx: ExchangeFeaturizer, trades: pa.Table, book: pa.Table,
                       progress: Progress | None = None) -> list[Closed]:
    """Feed both channels to ``fx`` in arrival (ts_recv) order, as the bus would have; return every slice."""
    symbols = sorted(set(trades.column("symbol").to_pylist()) | set(book.column("symbol").to_pylist()))
    sym_code = {s: i for i, s in enumerate(symbols)}
    t_sym = np.array([sym_code[s] for s in trades.column("symbol").to_pylist()], dtype=np.int64)
    b_sym = np.array([sym_code[s] for s in book.column("symbol").to_pylist()], dtype=np.int64)
    recv = np.concatenate([trades.column("ts_recv").to_numpy(), book.column("ts_recv").to_numpy()])
    channel = np.concatenate([np.zeros(trades.num_rows, np.int64), np.ones(book.num_rows, np.int64)])
    sym = np.concatenate([t_sym, b_sym])
    order = np.lexsort((np.arange(len(recv)), recv))  # by ts_recv; ties keep lake order
    key = (channel * len(symbols) + sym)[order]
    t = _columns(trades, TRADE_COLUMNS)
    b = _columns(book, BOOK_COLUMNS)
    closed: list[Closed] = []
    for start, end in _runs(key):
        rows = order[start:end]
        name = symbols[int(sym[rows[0]])]
        if channel[rows[0]] == 0:
            fx.engine.trade_arrays(name, t["ts_event"][rows], t["price"][rows], t["amount"][rows], t["buy"][rows],
                                   t["id"][rows])
        else:
            rows = rows - trades.num_rows
            fx.engine.book_arrays(name, b["ts_event"][rows], b["ts_recv"][rows], b["bid"][rows], b["price"][rows],
                                  b["size"][rows], b["snapshot"][rows])
        closed.extend(fx.closed())
        if progress is not None:
            progress(end - start)
    closed.extend(fx.flush())
    return closed


def _columns(table: pa.Table, names: list[str]) -> dict[str, np.ndarray[Any, Any]]:
    out = {n: table.column(n).to_numpy(zero_copy_only=False) for n in names if n not in ("side", "id")}
    if "id" in names:  # trades without an integer id are ordered by event time, then arrival
        out["id"] = np.ascontiguousarray(pc.fill_null(table.column("id"), NO_TRADE_ID).to_numpy(), dtype=np.int64)
    side = table.column("side").to_numpy(zero_copy_only=False)
    out["buy"] = (side == "buy").astype(np.uint8)
    out["bid"] = (side == "bid").astype(np.uint8)
    if "snapshot" in out:
        out["snapshot"] = out["snapshot"].astype(np.uint8)
    for n in ("ts_event", "ts_recv"):
        out[n] = np.ascontiguousarray(out[n], dtype=np.int64)
    for n in ("price", "amount", "size"):
        if n in out:
            out[n] = np.ascontiguousarray(out[n], dtype=np.float64)
    return out


def features_table(exchange: str, closed: list[Closed], ts_recv_ns: int,
                   windows: dict[str, list[tuple[int, int]]] | None = None) -> pa.Table:
    """Closed slices as a ``features`` table with ``exchange`` and ``symbol`` columns (the lake's view); a
    slice closed by the final flush, or touching a gap window, is incomplete."""
    schema = schema_for(FEATURES_CHANNEL)
    parts = []
    for batch in closed:
        n = len(batch.slices)
        vals = values(batch.slices)
        cols: dict[str, pa.Array] = {
            "exchange": pa.array([exchange] * n), "symbol": pa.array([batch.symbol] * n),
            "ts_event": pa.array(batch.slices["start"], pa.int64()), "ts_recv": pa.array([ts_recv_ns] * n, pa.int64()),
            "interval": pa.array([batch.interval] * n),
        }
        for name in VALUE_COLUMNS:
            col = vals[name]
            mask = col == -1 if name in ("first_trade_ts", "last_trade_ts") else None
            cols[name] = pa.array(col, schema.field(name).type, mask=mask)
        touched = overlaps(batch.slices["start"].astype(np.int64), interval_ns(batch.interval),
                           (windows or {}).get(batch.symbol, []))
        cols[COMPLETE_COLUMN] = pa.array(batch.complete & ~touched, pa.bool_())
        parts.append(pa.table(cols))
    if not parts:
        return pa.table({"exchange": pa.array([], pa.string()), "symbol": pa.array([], pa.string()),
                         **{f.name: pa.array([], f.type) for f in schema}})
    return pa.concat_tables(parts)


def backfill(root: Path, exchanges: list[str], cfg: FeaturizerConfig, slice_seconds: int, period: Period,
             ts_recv_ns: int, progress: Progress | None = None,
             on_total: Callable[[int], None] | None = None) -> pa.Table:
    """Features of every exchange's symbols over ``period``, computed from the lake."""
    slice_ns = slice_seconds * NS_PER_SECOND
    inputs = {}
    for exchange in exchanges:
        trades = lake_records(root, Channel.TRADES, exchange, period, slice_ns)
        book = drop_opening_snapshots(lake_records(root, Channel.L2_BOOK, exchange, period, slice_ns))
        inputs[exchange] = (trades, book)
    if on_total is not None:
        on_total(sum(t.num_rows + b.num_rows for t, b in inputs.values()))
    tables = []
    for exchange, (trades, book) in inputs.items():
        fx = ExchangeFeaturizer(exchange, cfg)
        closed = featurize_exchange(fx, trades, book, progress)
        if fx.late_trades or fx.late_book_rows:
            LOG.warning("exchange=%s: %d trades and %d book rows were late (after their slice closed)", exchange,
                        fx.late_trades, fx.late_book_rows)
        tables.append(features_table(exchange, closed, ts_recv_ns, gap_windows(root, exchange)))
    return pa.concat_tables(tables)


FEATURE_KEY = ["exchange", "symbol", "interval", "ts_event"]


def not_whole_in_lake(root: Path, table: pa.Table) -> pa.Table:
    """The rows of a backfill whose key the lake's ``features`` table marks incomplete or does not have:
    what to put in place of what the live featurizer could not see whole."""
    from data_feed.access.query import run_query

    landed = run_query(root, "select exchange, symbol, interval, ts_event, complete from features")
    whole = landed[landed["complete"].astype(bool)][FEATURE_KEY]
    computed = table.select(FEATURE_KEY).to_pandas()
    keep = computed.merge(whole.assign(_whole=True), on=FEATURE_KEY, how="left")["_whole"].isna().to_numpy()
    return table.filter(pa.array(keep))
