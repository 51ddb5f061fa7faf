"""Collector feed classes by exchange id: one module per exchange, same shape each."""

from __future__ import annotations

from collections.abc import Callable

from cryptofeed.feed import Feed

from data_feed.collector.exchanges import binance, coinbase
from data_feed.collector.exchanges.base import Endpoints

FEED_FACTORIES: dict[str, Callable[[Endpoints | None], type[Feed]]] = {
    "BINANCE": binance.feed_class,
    "COINBASE": coinbase.feed_class,
}


def feed_class(exchange: str, sim: Endpoints | None) -> type[Feed]:
    try:
        return FEED_FACTORIES[exchange](sim)
    except KeyError:
        raise ValueError(f"no collector for exchange {exchange!r}; known: {', '.join(FEED_FACTORIES)}") from None


__all__ = ["Endpoints", "feed_class"]
