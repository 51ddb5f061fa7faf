"""Typed stub of the compiled Cython kernels (featurizer/_kernels.pyx)."""

from typing import Any

import numpy as np
import numpy.typing as npt

NO_TRADE_ID: int
MAX_INITIAL_RING_SLOTS: int
SLICE_FIELDS: tuple[str, ...]
SLICE_DTYPE: np.dtype[np.void]

Slices = npt.NDArray[np.void]

def merge_runs(slices: Slices, width_ns: int) -> Slices: ...
def merge(a: Slices, b: Slices) -> Slices: ...
def empty_slice(start: int) -> Slices: ...
def batch_threads() -> int: ...
def _use_vector_width(width: int) -> int: ...
def trade_slices(
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    amount: npt.NDArray[np.float64],
    is_buy: npt.NDArray[np.uint8],
    width_ns: int,
) -> Slices: ...

class Engine:
    width_ns: int
    lateness_ns: int
    top_levels: int
    depth_bps: float
    watermark: int
    late_trades: int
    late_book_rows: int
    symbols: list[str]
    def __init__(self, width_ns: int, lateness_ns: int = 0, top_levels: int = 5, depth_bps: float = 10.0) -> None: ...
    def trade_rows(self, rows: list[list[Any]]) -> int: ...
    def trade_arrays(
        self,
        name: str,
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        amount: npt.NDArray[np.float64],
        is_buy: npt.NDArray[np.uint8],
        ids: npt.NDArray[np.int64] | None = None,
    ) -> int: ...
    def book_rows(self, rows: list[list[Any]]) -> int: ...
    def book_arrays(
        self,
        name: str,
        ts_event: npt.NDArray[np.int64],
        ts_recv: npt.NDArray[np.int64],
        is_bid: npt.NDArray[np.uint8],
        price: npt.NDArray[np.float64],
        size: npt.NDArray[np.float64],
        snapshot: npt.NDArray[np.uint8],
    ) -> int: ...
    @property
    def closed_waiting(self) -> int: ...
    def peek(self) -> tuple[npt.NDArray[np.int64], Slices]: ...
    def flush(self) -> None: ...
    def take(self) -> tuple[npt.NDArray[np.int64], Slices]: ...
