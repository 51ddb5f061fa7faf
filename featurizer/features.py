"""Feature values from mergeable slice state: the one definition of the ``features`` columns.

Data flow: closed ``SLICE_DTYPE`` slices (from ``featurizer._kernels``) -> ``values`` (derived
statistics such as VWAP and time-weighted mid next to the state they come from) -> rows for
the bus and the Redis ``features`` stream, in ``schemas.FEATURES`` column order.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

from featurizer._kernels import NS_PER_SECOND, SLICE_DTYPE

INTERVAL_UNITS_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_INTERVAL = re.compile(r"^(\d+)([smhd])$")

Column = npt.NDArray[Any]
Slices = npt.NDArray[np.void]  # SLICE_DTYPE records


def interval_ns(interval: str) -> int:
    """``"1s"`` -> 1_000_000_000; units s, m, h, d."""
    match = _INTERVAL.match(interval)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"interval {interval!r}: expected a positive count and a unit of s, m, h or d, e.g. 1s, 1m")
    return int(match.group(1)) * INTERVAL_UNITS_SECONDS[match.group(2)] * NS_PER_SECOND


def _sum(slices: Slices, name: str) -> Column:
    return np.asarray(slices[name] + slices[name + "_c"], dtype=np.float64)


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
        "sell_volume": _sum(slices, "sell_volume"), "notional": notional, "vwap": _ratio(notional, volume),
        "realized_variance": _sum(slices, "rv"),
        "first_trade_ts": np.where(has_trades, slices["first_ts"], -1),
        "last_trade_ts": np.where(has_trades, slices["last_ts"], -1),
        "book_updates": slices["n_updates"], "twap_mid": _ratio(mid_int, book_ns),
        "mean_spread_bps": _ratio(spread_sum, samples), "max_spread_bps": slices["spread_max"],
        "microprice": slices["microprice"], "mean_imbalance": _ratio(imb_sum, samples),
        "depth_bid": slices["depth_bid"], "depth_ask": slices["depth_ask"], "book_time_ns": slices["book_ns"],
        "mid_integral": mid_int, "spread_samples": slices["n_samples"], "spread_sum_bps": spread_sum,
        "imbalance_sum": imb_sum,
    }
