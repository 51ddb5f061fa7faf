"""The slicer: one stream entry's rows cut into lake slices, by (symbol, slice start by exchange time).

Pure (no Redis, no files): the aggregator cuts every entry it reads with it, and cuts it again the same
way when it redoes an interrupted write after a crash, so the same rows always fall in the same slices;
``query --live`` cuts the records still in the cache with it to tell which are already in the lake.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_feed.contracts.schemas import NS_PER_DAY, SYMBOL_COLUMN, Channel
from data_feed.lake.layout import SliceKey

HISTORY_MIN_SLICES = 3  # an entry whose rows of one symbol span this many slices carries history
LIVE_ONLY_CHANNELS = (Channel.L2_BOOK, Channel.TRADES)  # in their own slices (book snapshots, backfill's ranges)


def split_entry(channel: str, exchange: str, table: pa.Table, width_ns: int) -> list[tuple[SliceKey, pa.Table]]:
    """Cut one entry's rows by (symbol, slice start), keeping each part's rows in entry order."""
    if table.num_rows == 0:
        return []
    ts = table.column("ts_event").to_numpy()
    starts = ts - ts % width_ns
    symbols = pc.dictionary_encode(table.column(SYMBOL_COLUMN)).combine_chunks()
    names = symbols.dictionary.to_pylist()
    rows = table.drop_columns(SYMBOL_COLUMN)
    if len(names) == 1 and starts[0] == starts[-1] and (starts == starts[0]).all():
        return [(SliceKey(channel, exchange, names[0], int(starts[0])), rows)]
    if channel not in LIVE_ONLY_CHANNELS:
        starts = group_history(starts, symbols.indices.to_numpy())
    start_codes, start_index = np.unique(starts, return_inverse=True)
    combined = symbols.indices.to_numpy().astype(np.int64) * len(start_codes) + start_index
    order = np.argsort(combined, kind="stable")
    ordered = combined[order]
    bounds = [0, *(np.flatnonzero(np.diff(ordered)) + 1).tolist(), len(ordered)]
    taken = rows.take(pa.array(order))
    out = []
    for lo, hi in itertools.pairwise(bounds):
        code = int(ordered[lo])
        sk = SliceKey(channel, exchange, names[code // len(start_codes)], int(start_codes[code % len(start_codes)]))
        out.append((sk, taken.slice(lo, hi - lo)))
    return out


def group_history(starts: np.ndarray[Any, Any], codes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A symbol's rows of one entry spanning many slices are history (a subscription's snapshot of past
    candles, funding, open interest): they go to the slice opening their day, one file per day and entry
    instead of one per row. Decided from the entry alone, so a redo after a crash cuts it the same way."""
    out = starts
    for code in np.unique(codes):
        mine = codes == code
        if len(np.unique(starts[mine])) >= HISTORY_MIN_SLICES:
            if out is starts:
                out = starts.copy()
            out[mine] = starts[mine] - starts[mine] % NS_PER_DAY
    return out
