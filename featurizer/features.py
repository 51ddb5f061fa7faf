"""Feature values from mergeable slice state, as rows of the ``features`` channel.

Data flow: closed ``SLICE_DTYPE`` slices (from ``featurizer._kernels``) -> ``values`` (derived
statistics such as VWAP and time-weighted mid next to the state they come from) -> ``rows``
in ``schemas.FEATURES`` column order, for the bus and the Redis ``features`` stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from data_feed.contracts.config import FEATURES_CHANNEL, interval_seconds
from data_feed.contracts.schemas import NS_PER_SECOND, batch_columns
from featurizer._kernels import SLICE_DTYPE

NO_TRADE_TS = -1  # first/last trade time of a slice without trades, written as null

Column = npt.NDArray[Any]
Slices = npt.NDArray[np.void]  # SLICE_DTYPE records


def interval_ns(interval: str) -> int:
    """``"1s"`` -> 1_000_000_000; units s, m, h, d."""
    return interval_seconds(interval) * NS_PER_SECOND


def _sum(slices: Slices, name: str) -> Column:
    return np.asarray(slices[name] + slices[name + "_c"], dtype=np.float64)


def _difference(slices: Slices, minuend: str, subtrahend: str) -> Column:
    """(a + a_c) - (b + b_c) of two double-double sums, rounded once (exact subtraction of the high parts)."""
    a, b = slices[minuend], slices[subtrahend]
    high = a - b
    virtual = high - a
    err = (a - (high - virtual)) - (b + virtual)  # TwoSum(a, -b): a - b == high + err exactly
    return np.asarray(high + (err + (slices[minuend + "_c"] - slices[subtrahend + "_c"])), dtype=np.float64)


def _ratio(num: Column, den: Column) -> Column:
    out = np.full(len(num), np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def values(slices: Slices) -> dict[str, Column]:
    """Every feature column of ``slices`` (trade and book statistics plus their mergeable state)."""
    if slices.dtype != SLICE_DTYPE:
        raise TypeError(f"values: expected SLICE_DTYPE slices, got {slices.dtype}")
    has_trades = slices["n_trades"] > 0
    volume, notional = _sum(slices, "volume"), _sum(slices, "notional")
    book_ns = slices["book_ns"].astype(np.float64)
    samples = slices["n_samples"].astype(np.float64)
    mid_int, spread_sum, imb_sum = _sum(slices, "mid_int"), _sum(slices, "spread_sum"), _sum(slices, "imb_sum")
    return {
        "trade_count": slices["n_trades"], "open": slices["open"], "high": slices["high"], "low": slices["low"],
        "close": slices["close"], "volume": volume, "buy_volume": _sum(slices, "buy_volume"),
        "sell_volume": _difference(slices, "volume", "buy_volume"), "notional": notional,
        "vwap": _ratio(notional, volume),
        "realized_variance": _sum(slices, "rv"),
        "first_trade_ts": np.where(has_trades, slices["first_ts"], NO_TRADE_TS),
        "last_trade_ts": np.where(has_trades, slices["last_ts"], NO_TRADE_TS),
        "book_updates": slices["n_updates"], "twap_mid": _ratio(mid_int, book_ns),
        "mean_spread_bps": _ratio(spread_sum, samples), "max_spread_bps": slices["spread_max"],
        "microprice": slices["microprice"], "mean_imbalance": _ratio(imb_sum, samples),
        "depth_bid": slices["depth_bid"], "depth_ask": slices["depth_ask"], "book_time_ns": slices["book_ns"],
        "mid_integral": mid_int, "spread_samples": slices["n_samples"], "spread_sum_bps": spread_sum,
        "imbalance_sum": imb_sum,
    }


COMPLETE_COLUMN = "complete"  # not a statistic: whether the slice was seen whole (schemas.FEATURES)
VALUE_COLUMNS = tuple(c for c in batch_columns(FEATURES_CHANNEL)[4:] if c != COMPLETE_COLUMN)  # after symbol,
# ts_event, ts_recv, interval; the statistics and their mergeable state


def rows(symbol: str, interval: str, slices: Slices, ts_recv_s: float,
         complete: npt.NDArray[np.bool_]) -> list[tuple[Any, ...]]:
    """Cached-batch rows (``batch_columns("features")``), times as float seconds like every cached row."""
    if batch_columns(FEATURES_CHANNEL)[-1] != COMPLETE_COLUMN:
        raise KeyError(f"features schema must end with {COMPLETE_COLUMN!r}")
    vals = values(slices)
    missing = set(VALUE_COLUMNS) ^ set(vals)
    if missing:
        raise KeyError(f"features schema and values() differ in {sorted(missing)}")
    columns = [vals[name].tolist() for name in VALUE_COLUMNS]
    for name in ("first_trade_ts", "last_trade_ts"):
        col = columns[VALUE_COLUMNS.index(name)]
        columns[VALUE_COLUMNS.index(name)] = [None if v == NO_TRADE_TS else v for v in col]
    starts = (slices["start"] / NS_PER_SECOND).tolist()
    flags = [bool(c) for c in complete]
    return [(symbol, start, ts_recv_s, interval, *vs, flag)
            for start, flag, *vs in zip(starts, flags, *columns, strict=True)]


def overlaps(starts: npt.NDArray[np.int64], width_ns: int, windows: list[tuple[int, int]]) -> npt.NDArray[np.bool_]:
    """Which slices [start, start + width) share time with any window [lo, hi] (exchange time, ns): a gap in
    the data makes the slices it touches incomplete."""
    hit = np.zeros(len(starts), dtype=bool)
    for lo, hi in windows:
        hit |= (starts <= hi) & (starts + width_ns > lo)
    return hit
