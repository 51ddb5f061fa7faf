"""Per-exchange featurizing: base-interval slices from the kernels, longer intervals merged from them.

Data flow: trade and l2_book batches of one exchange (bus rows, or lake columns in a backfill)
-> ``Engine`` (event-time slices of the first configured interval, closed by the exchange's
watermark) -> ``merge`` rolls each closed base slice into the longer intervals -> ``Closed``
batches, one per (interval, symbol), ready to publish. Live and backfill share this class,
so both compute features the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from data_feed.contracts.config import FeaturizerConfig
from data_feed.contracts.schemas import NS_PER_SECOND
from featurizer._kernels import Engine, empty_slice, merge
from featurizer.features import Slices, interval_ns

LOG = logging.getLogger("featurizer.engine")



@dataclass(frozen=True)
class Closed:
    """Closed slices of one symbol and interval, ordered by start; ``complete`` (per slice) is False for a slice
    a flush (at stop, or the end of a backfill) closed while it still reached past the newest event time seen:
    the data of its end was never there."""

    interval: str
    symbol: str
    slices: Slices
    complete: npt.NDArray[np.bool_] | bool = True


class ExchangeFeaturizer:
    """One exchange: its watermark, every symbol's open slices and the roll-ups into longer intervals."""

    def __init__(self, exchange: str, cfg: FeaturizerConfig) -> None:
        self.exchange = exchange
        self.base = cfg.intervals[0]
        self.base_ns = interval_ns(self.base)
        self.longer = [(name, interval_ns(name)) for name in cfg.intervals[1:]]
        self.engine = Engine(self.base_ns, int(cfg.allowed_lateness_seconds * NS_PER_SECOND), cfg.imbalance_levels,
                             cfg.depth_bps)
        self._acc: dict[tuple[str, str], Slices] = {}  # (symbol, interval) -> open roll-up

    # -- input -------------------------------------------------------------------------------

    def trade_rows(self, rows: list[list[object]]) -> int:
        """Collector trade rows; returns how many were late (their slice had closed)."""
        return self.engine.trade_rows(rows)

    def book_rows(self, rows: list[list[object]]) -> int:
        """Collector l2_book rows (whole messages); returns late rows."""
        return self.engine.book_rows(rows)

    def open_until_ns(self) -> int:
        """Start of the first base slice after every slice open now (the one holding the watermark)."""
        wm = int(self.engine.watermark)
        return wm - wm % self.base_ns + self.base_ns if wm > 0 else -1

    # -- output ------------------------------------------------------------------------------

    @property
    def has_closed(self) -> bool:
        """A base slice closed since the last ``closed()``: the watermark passed its end (plus lateness)."""
        return self.engine.closed_waiting > 0

    def closed(self) -> list[Closed]:
        """Slices closed since the last call: the base interval's, then every roll-up that completed."""
        return self._collect(final=False)

    def provisional(self) -> list[Closed]:
        """Each symbol's open base slice holding the watermark, as it would close if nothing more came (one slice
        per batch, ``complete`` False); the engine is unchanged, so the slices it closes later are too."""
        sym_ids, slices = self.engine.peek()
        return [Closed(self.base, self.engine.symbols[int(index)], slices[i : i + 1], complete=False)
                for i, index in enumerate(sym_ids)]

    def flush(self) -> list[Closed]:
        """At stop or the end of a backfill: close every open slice and return all; those reaching past the
        watermark (the newest event time seen) are marked incomplete."""
        watermark = int(self.engine.watermark)
        self.engine.flush()
        return [replace(c, complete=c.slices["start"] + interval_ns(c.interval) <= watermark)
                for c in self._collect(final=True)]

    def _collect(self, final: bool) -> list[Closed]:
        sym_ids, slices = self.engine.take()
        out: list[Closed] = []
        for index in np.unique(sym_ids):
            mine = slices[sym_ids == index]
            mine = mine[np.argsort(mine["start"], kind="stable")]
            symbol = self.engine.symbols[int(index)]
            out.append(Closed(self.base, symbol, mine))
            out.extend(self._roll_up(symbol, mine))
        if final:
            out.extend(self._drain_rollups())
        return out

    def _roll_up(self, symbol: str, base: Slices) -> list[Closed]:
        out: list[Closed] = []
        for name, width in self.longer:
            done: list[Slices] = []
            for i in range(len(base)):
                start = int(base["start"][i])
                group = start - start % width
                acc = self._acc.get((symbol, name))
                if acc is not None and int(acc["start"][0]) != group:  # a gap in the base slices: emit as is
                    done.append(acc)
                    acc = None
                acc = merge(acc if acc is not None else empty_slice(group), base[i : i + 1])
                if start + self.base_ns == group + width:
                    done.append(acc)
                    self._acc.pop((symbol, name), None)
                else:
                    self._acc[(symbol, name)] = acc
            if done:
                out.append(Closed(name, symbol, np.concatenate(done)))
        return out

    def _drain_rollups(self) -> list[Closed]:
        out = [Closed(name, symbol, acc) for (symbol, name), acc in sorted(self._acc.items())]
        self._acc.clear()
        return out

    @property
    def late_trades(self) -> int:
        return self.engine.late_trades

    @property
    def late_book_rows(self) -> int:
        return self.engine.late_book_rows
