"""Collector feed classes by exchange id: one module per exchange, same shape each.

Each module exposes ``feed_class(sim)`` (cryptofeed's class, endpoints swapped
for the simulator's when simulated) and ``feed_config(sim)`` (what cryptofeed's
config needs for that exchange, e.g. keys).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from cryptofeed.feed import Feed

from data_feed.collector.exchanges import binance, coinbase
from data_feed.collector.exchanges.base import Endpoints

EXCHANGE_MODULES: dict[str, ModuleType] = {"BINANCE": binance, "COINBASE": coinbase}


def _module(exchange: str) -> ModuleType:
    try:
        return EXCHANGE_MODULES[exchange]
    except KeyError:
        raise ValueError(f"no collector for exchange {exchange!r}; known: {', '.join(EXCHANGE_MODULES)}") from None


def feed_class(exchange: str, sim: Endpoints | None) -> type[Feed]:
    cls: type[Feed] = _module(exchange).feed_class(sim)
    return cls


def feed_config(exchange: str, sim: Endpoints | None) -> dict[str, Any]:
    cfg: dict[str, Any] = _module(exchange).feed_config(sim)
    return cfg


__all__ = ["Endpoints", "feed_class", "feed_config"]
