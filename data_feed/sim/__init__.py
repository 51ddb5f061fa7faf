"""Local exchange simulator speaking the Binance spot and Coinbase Advanced Trade wire protocols over TLS."""

from data_feed.sim.server import Simulator, serve_forever

__all__ = ["Simulator", "serve_forever"]
