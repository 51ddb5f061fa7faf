"""Previews: what a consumer without a grant may see of a dataset that declares one (fishnet's Views).

A dataset row's ``preview_interval_seconds`` (null: no preview), ``preview_delay_seconds`` and
``preview_normalize`` say what: at most one batch per topic per interval, sent ``delay`` seconds after the
bus had it, and, when normalized, prices as an index (100 = the topic's first previewed close) and sizes
withheld. A preview is never the dataset: it goes only to ``c/<consumer>/preview/<topic>``, down-sampled
and delayed, whatever the consumer's grants.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from data_feed.access.patterns import covered
from data_feed.contracts.config import FEATURES_CHANNEL
from data_feed.contracts.schemas import batch_columns

COLUMNS = batch_columns(FEATURES_CHANNEL)
PRICES = frozenset({"open", "high", "low", "close", "vwap", "twap_mid", "microprice"})
KEPT = PRICES | {"symbol", "ts_event", "ts_recv", "interval", "trade_count", "book_updates", "mean_spread_bps",
                 "max_spread_bps", "mean_imbalance", "complete"}
CLOSE = COLUMNS.index("close")


@dataclass(frozen=True)
class PreviewSpec:
    dataset: str
    pattern: str
    interval_seconds: float
    delay_seconds: float
    normalize: bool


def specs(datasets: tuple[dict[str, Any], ...]) -> list[PreviewSpec]:
    return [PreviewSpec(d["name"], d["pattern"], float(d["preview_interval_seconds"]),
                        float(d["preview_delay_seconds"] or 0.0), bool(d["preview_normalize"]))
            for d in datasets if d.get("preview_interval_seconds")]


def spec_for(topic: str, previews: list[PreviewSpec]) -> PreviewSpec | None:
    return next((p for p in previews if covered(topic, p.pattern, "*")), None)


class Previewer:
    """Down-samples, delays and normalizes bus batches into preview batches (pure: time is passed in)."""

    def __init__(self) -> None:
        self.last_taken: dict[str, float] = {}
        self.base_close: dict[str, float] = {}
        self._due: list[tuple[float, int, str, bytes]] = []
        self._order = itertools.count()

    def offer(self, topic: str, payload: bytes, spec: PreviewSpec, now: float) -> None:
        """Keep this batch for the preview if the topic's interval has passed since the last one kept."""
        if now - self.last_taken.get(topic, float("-inf")) < spec.interval_seconds:
            return
        self.last_taken[topic] = now
        body = self._normalized(topic, payload) if spec.normalize else payload
        heapq.heappush(self._due, (now + spec.delay_seconds, next(self._order), topic, body))

    def due(self, now: float) -> Iterator[tuple[str, bytes]]:
        """(topic, payload) of every kept batch whose delay has passed, oldest first."""
        while self._due and self._due[0][0] <= now:
            _, _, topic, body = heapq.heappop(self._due)
            yield topic, body

    def _normalized(self, topic: str, payload: bytes) -> bytes:
        rows = msgpack.unpackb(payload, raw=False)
        out = []
        for row in rows:
            base = self.base_close.setdefault(topic, row[CLOSE] if row[CLOSE] else 1.0)
            out.append([_index(v, base) if name in PRICES else v if name in KEPT else None
                        for name, v in zip(COLUMNS, row, strict=True)])
        return msgpack.packb(out, use_bin_type=True)  # type: ignore[no-any-return]


def _index(value: Any, base: float) -> Any:
    if value is None or base == 0 or value != value:  # NaN stays NaN
        return value
    return 100.0 * value / base
