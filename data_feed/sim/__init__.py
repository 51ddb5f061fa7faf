"""Local exchange simulator over TLS: Binance spot and USD-M futures, Bybit v5, Coinbase Advanced Trade, Kraken
and OKX v5 wire protocols, injected faults, and replay of recorded sessions of any exchange."""

from data_feed.sim.server import Simulator, serve_forever

__all__ = ["Simulator", "serve_forever"]
