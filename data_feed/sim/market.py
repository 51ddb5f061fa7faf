"""Seeded synthetic market: one random-walk L2 book and trade tape per (exchange, symbol).

The market knows nothing about wire protocols. It advances in virtual time and returns
`MarketEvent`s (a trade and/or book level changes) that the protocol modules turn into frames.
Prices are integer ticks (0.01 of the quote currency) and sizes integer units (1e-8 of the base
asset), so the decimal strings on the wire are exact.

Invariants, after every event: each side holds exactly `levels` levels (unless prices would reach
zero), best bid < best ask, trade ids are consecutive (1, 2, 3, ... in a new lake, continuing an earlier
run's with `continue_after`) and every level change has its own update id, consecutive across events.
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from data_feed.contracts.config import SimulatedMarketConfig

Side = Literal["bid", "ask"]
TakerSide = Literal["buy", "sell"]
BID: Final = "bid"
ASK: Final = "ask"

PRICE_DECIMALS: Final = 2
SIZE_DECIMALS: Final = 8
PRICE_SCALE: Final = 10**PRICE_DECIMALS
SIZE_SCALE: Final = 10**SIZE_DECIMALS

_START_PRICES: Final = {"BTC": 65_000.0, "ETH": 3_500.0, "SOL": 150.0}
_MIN_LEVEL_SIZE: Final = 1_000  # 0.00001 base units


def price_str(ticks: int) -> str:
    """Ticks as a fixed-decimal price string: 6500001 -> '65000.01'."""
    return f"{ticks // PRICE_SCALE}.{ticks % PRICE_SCALE:0{PRICE_DECIMALS}d}"


def size_str(units: int) -> str:
    """Size units as a fixed-decimal size string: 12345678 -> '0.12345678'."""
    return f"{units // SIZE_SCALE}.{units % SIZE_SCALE:0{SIZE_DECIMALS}d}"


def stable_seed(seed: int, exchange: str, symbol: str) -> int:
    """Per-market seed, identical across processes (unlike hash())."""
    return seed ^ zlib.crc32(f"{exchange}:{symbol}".encode())


@dataclass(frozen=True, slots=True)
class LevelChange:
    """New absolute size of one price level; size 0 removes the level."""

    side: Side
    price: int
    size: int


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: int
    price: int
    size: int
    taker_side: TakerSide
    timestamp: float  # wall-clock epoch seconds


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """One market event. Change i has update id `first_update_id + i`."""

    timestamp: float  # wall-clock epoch seconds
    trade: Trade | None
    changes: tuple[LevelChange, ...]
    first_update_id: int
    top: tuple[int, int, int, int]  # best bid price, its size, best ask price, its size, after the event

    @property
    def last_update_id(self) -> int:
        return self.first_update_id + len(self.changes) - 1


class BookSide:
    """One side of an L2 book: price ticks -> size units, with a sorted price index."""

    def __init__(self, side: Side) -> None:
        self.side: Side = side
        self.sizes: dict[int, int] = {}
        self._prices: list[int] = []  # ascending

    def __len__(self) -> int:
        return len(self._prices)

    def best(self) -> int:
        return self._prices[-1] if self.side == BID else self._prices[0]

    def worst(self) -> int:
        return self._prices[0] if self.side == BID else self._prices[-1]

    def price_at(self, index: int) -> int:
        """Price of the index-th level counted from the best."""
        return self._prices[-1 - index] if self.side == BID else self._prices[index]

    def set(self, price: int, size: int) -> None:
        if size == 0:
            del self.sizes[price]
            self._prices.pop(bisect.bisect_left(self._prices, price))
            return
        if price not in self.sizes:
            bisect.insort(self._prices, price)
        self.sizes[price] = size

    def top(self, depth: int) -> list[tuple[int, int]]:
        """(price, size) best first."""
        prices = self._prices[::-1][:depth] if self.side == BID else self._prices[:depth]
        return [(p, self.sizes[p]) for p in prices]

    def deeper(self, price: int, ticks: int) -> int:
        """The price `ticks` further from the touch than `price`."""
        return price - ticks if self.side == BID else price + ticks


class SymbolMarket:
    """Synthetic market for one (exchange, symbol); deterministic for a given seed.

    `advance(seconds, now)` runs the market clock forward and returns the events that fell due,
    in order. The event sequence depends only on the seed and total time advanced, not on how
    the time is sliced into calls.
    """

    def __init__(self, exchange: str, symbol: str, cfg: SimulatedMarketConfig, seed: int) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.cfg = cfg
        self.rng = random.Random(stable_seed(seed, exchange, symbol))
        self.bids = BookSide(BID)
        self.asks = BookSide(ASK)
        self.clock = 0.0
        self.last_trade_id = 0
        self.update_id = self.rng.randint(1_000_000, 9_999_999)  # id of the last applied change
        self._fair = 0.0
        self._next_trade = self.rng.expovariate(cfg.trades_per_second)
        self._next_book = self.rng.expovariate(cfg.book_updates_per_second)
        self._build_book()
        self._reserve: Callable[[int, int], tuple[int, int]] | None = None
        self._limits = (0, 0)  # ids reserved (sim.ledger) up to; only checked with a reserve hook

    def continue_after(self, trade_id: int, update_id: int, reserve: Callable[[int, int], tuple[int, int]]) -> None:
        """Number trades and level changes above an earlier simulation of this market (``sim.ledger``);
        ``reserve(trade_id, update_id)`` is called before ids beyond the current reservation are used."""
        self.last_trade_id = trade_id
        self.update_id += update_id
        if trade_id:  # a later run: a different path from the same seed
            self.rng.seed(stable_seed(self.rng.randint(0, 2**31) ^ trade_id, self.exchange, self.symbol))
        self._reserve = reserve
        self._limits = reserve(self.last_trade_id, self.update_id)

    def _check_reserved(self) -> None:
        if self._reserve is not None and (self.last_trade_id >= self._limits[0] or self.update_id >= self._limits[1]):
            self._limits = self._reserve(self.last_trade_id, self.update_id)

    # -- public -----------------------------------------------------------------------------

    def side(self, side: Side) -> BookSide:
        return self.bids if side == BID else self.asks

    def top(self) -> tuple[int, int, int, int]:
        """(best bid, its size, best ask, its size)."""
        bid, ask = self.bids.best(), self.asks.best()
        return bid, self.bids.sizes[bid], ask, self.asks.sizes[ask]

    def mid(self) -> float:
        return (self.bids.best() + self.asks.best()) / 2

    def advance(self, seconds: float, now: float) -> list[MarketEvent]:
        """Generate every event due in the next `seconds` of market time; stamp them relative to `now`."""
        end = self.clock + seconds
        events: list[MarketEvent] = []
        while min(self._next_trade, self._next_book) <= end:
            if self._next_trade <= self._next_book:
                ts = now - (end - self._next_trade)
                changes, trade = self._trade(ts)
                self._next_trade += self.rng.expovariate(self.cfg.trades_per_second)
            else:
                ts, trade = now - (end - self._next_book), None
                changes = self._book_update()
                self._next_book += self.rng.expovariate(self.cfg.book_updates_per_second)
            events.append(self._event(ts, trade, changes))
        self.clock = end
        return events

    # -- construction -----------------------------------------------------------------------

    def _build_book(self) -> None:
        base = self.symbol.split("-")[0]
        start = _START_PRICES.get(base, self.rng.uniform(10, 1000))
        mid = round(start * PRICE_SCALE)
        self._fair = float(mid)
        for book, first in ((self.bids, mid - 1), (self.asks, mid + 1)):
            price = first
            for _ in range(self.cfg.levels):
                if price <= 0:
                    break
                book.set(price, self._level_size())
                price = book.deeper(price, self.rng.randint(1, 3))

    def _level_size(self) -> int:
        return max(_MIN_LEVEL_SIZE, int(self.rng.lognormvariate(math.log(0.5 * SIZE_SCALE), 1.0)))

    # -- events -----------------------------------------------------------------------------

    def _event(self, timestamp: float, trade: Trade | None, changes: list[LevelChange]) -> MarketEvent:
        first = self.update_id + 1
        self.update_id += len(changes)
        self._check_reserved()
        return MarketEvent(timestamp, trade, tuple(changes), first, self.top())

    def _apply(self, side: Side, price: int, size: int) -> LevelChange:
        self.side(side).set(price, size)
        return LevelChange(side, price, size)

    def _buy_probability(self) -> float:
        """Takers lean toward the random-walk fair price, which makes the mid follow it."""
        self._fair += self.rng.gauss(0.0, 1.5)
        return 0.5 + 0.4 * math.tanh((self._fair - self.mid()) / 10.0)

    def _trade(self, ts: float) -> tuple[list[LevelChange], Trade]:
        taker: TakerSide = "buy" if self.rng.random() < self._buy_probability() else "sell"
        side: Side = ASK if taker == "buy" else BID
        book = self.side(side)
        price = book.best()
        available = book.sizes[price]
        size = available if self.rng.random() < 0.3 else max(1, int(available * self.rng.uniform(0.05, 0.9)))
        size = min(size, available)
        changes = [self._apply(side, price, available - size)]
        if size == available:
            changes += self._refill(side, price)
        self.last_trade_id += 1
        return changes, Trade(self.last_trade_id, price, size, taker, ts)

    def _refill(self, side: Side, removed: int) -> list[LevelChange]:
        """Add a level beyond the deepest one so the side keeps `levels` levels."""
        book = self.side(side)
        if len(book) >= self.cfg.levels:
            return []
        anchor = book.worst() if len(book) else removed
        price = book.deeper(anchor, self.rng.randint(1, 3))
        if price <= 0 or price in book.sizes:
            return []
        return [self._apply(side, price, self._level_size())]

    def _book_update(self) -> list[LevelChange]:
        spread = self.asks.best() - self.bids.best()
        roll = self.rng.random()
        if spread > 1 and roll < min(0.6, 0.15 * (spread - 1)):
            return self._insert_inside_spread(spread)
        side: Side = BID if self.rng.random() < 0.5 else ASK
        if roll < 0.8:
            return self._resize_level(side)
        return self._cancel_level(side)

    def _insert_inside_spread(self, spread: int) -> list[LevelChange]:
        side: Side = BID if self.rng.random() < self._buy_probability() else ASK
        book = self.side(side)
        offset = self.rng.randint(1, spread - 1)
        price = self.bids.best() + offset if side == BID else self.asks.best() - offset
        changes = [self._apply(side, price, self._level_size())]
        if len(book) > self.cfg.levels:
            changes.append(self._apply(side, book.worst(), 0))
        return changes

    def _resize_level(self, side: Side) -> list[LevelChange]:
        book = self.side(side)
        price = book.price_at(self._level_index(len(book)))
        size = self._level_size()
        if size == book.sizes[price]:
            size += 1
        return [self._apply(side, price, size)]

    def _cancel_level(self, side: Side) -> list[LevelChange]:
        book = self.side(side)
        price = book.price_at(self._level_index(len(book)))
        return [self._apply(side, price, 0), *self._refill(side, price)]

    def _level_index(self, count: int) -> int:
        """Level to touch, biased toward the top of the book."""
        return min(count - 1, int(self.rng.expovariate(1.0 / max(1.0, count / 5))))


@dataclass
class Candle:
    """The candle of one time bucket, folded from its trades (prices in ticks, sizes in units).

    ``start`` is the bucket start in whatever unit the exchange module keys buckets by (seconds or ms).
    """

    start: int
    open: int
    high: int
    low: int
    close: int
    volume: int = 0
    notional: int = 0  # sum of size * price, for a VWAP
    trades: int = 0
    first_id: int = 0
    last_id: int = 0

    @classmethod
    def fold(cls, current: Candle | None, start: int, trade: Trade) -> Candle:
        """``current`` with ``trade`` added, or a new candle when ``trade`` opens bucket ``start``."""
        c = current
        if c is None or c.start != start:
            c = cls(start, trade.price, trade.price, trade.price, trade.price, first_id=trade.trade_id)
        c.high, c.low, c.close = max(c.high, trade.price), min(c.low, trade.price), trade.price
        c.volume += trade.size
        c.notional += trade.size * trade.price
        c.trades += 1
        c.last_id = trade.trade_id
        return c
