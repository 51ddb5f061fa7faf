"""Collector feed classes by exchange id: one module per exchange, same shape each.

Each module exposes ``feed_class(sim)`` (cryptofeed's class, endpoints swapped
for the simulator's when simulated) and ``feed_config(sim)`` (what cryptofeed's
config needs for that exchange, e.g. keys).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from cryptofeed.feed import Feed

from data_feed.collector.exchanges import binance, binance_futures, bybit, coinbase, kraken, okx, replay
from data_feed.collector.exchanges.base import Endpoints

# keyed by cryptofeed's own id of each quirk class; the names users write are config.SUPPORTED_EXCHANGES
# (tests/test_contracts.py holds the two, and the simulator's protocols, to the same set)
EXCHANGE_MODULES: dict[str, ModuleType] = {
    m.QUIRKS.id: m for m in (binance, binance_futures, bybit, coinbase, kraken, okx)}


def _module(exchange: str) -> ModuleType:
    try:
        return EXCHANGE_MODULES[exchange]
    except KeyError:
        raise ValueError(f"no collector for exchange {exchange!r}; known: {', '.join(EXCHANGE_MODULES)}") from None


def feed_class(exchange: str, sim: Endpoints | None, source: str = "simulator") -> type[Feed]:
    """cryptofeed's class for ``exchange``: live, pointed at the simulator, or at a replayed recording."""
    if source == "replay":
        if sim is None:
            raise ValueError(f"exchange={exchange}: source is replay but no simulator is running")
        return replay.feed_class(exchange, EXCHANGE_MODULES.get(exchange), sim)
    cls: type[Feed] = _module(exchange).feed_class(sim)
    return cls


def feed_config(exchange: str, sim: Endpoints | None) -> dict[str, Any]:
    """What cryptofeed's config needs for ``exchange`` (keys); nothing for exchanges without a module."""
    module = EXCHANGE_MODULES.get(exchange)
    cfg: dict[str, Any] = module.feed_config(sim) if module is not None else {}
    return cfg


def offered_channels(exchange: str, source: str) -> frozenset[str]:
    """cryptofeed channel names (``trades``, ``funding``, ...) the exchange's collector class can subscribe to;
    ``ValueError`` for an exchange cryptofeed does not have."""
    if source == "replay":
        return frozenset(replay.base_class(exchange, EXCHANGE_MODULES.get(exchange)).websocket_channels)
    return frozenset(feed_class(exchange, None, source).websocket_channels)


__all__ = ["Endpoints", "feed_class", "feed_config", "offered_channels"]
