"""Unit tests of the synthetic market: ids, book invariants, determinism."""

from __future__ import annotations

import pytest

from data_feed.contracts.config import SimulatedMarketConfig
from data_feed.sim.hub import PublishedBook
from data_feed.sim.market import MarketEvent, SymbolMarket, price_str, size_str

CFG = SimulatedMarketConfig(trades_per_second=200, book_updates_per_second=500, levels=20)


def _run(market: SymbolMarket, steps: list[float]) -> list[MarketEvent]:
    events: list[MarketEvent] = []
    for step in steps:
        events += market.advance(step, 0.0)
    return events


def _shape(events: list[MarketEvent]) -> list[tuple[object, ...]]:
    """Events without their wall-clock stamps."""
    return [(e.trade and (e.trade.trade_id, e.trade.price, e.trade.size, e.trade.taker_side), e.changes,
             e.first_update_id, e.top) for e in events]


def test_ids_are_consecutive_and_book_never_crossed() -> None:
    market = SymbolMarket("BINANCE", "BTC-USDT", CFG, seed=1)
    next_update = market.update_id + 1
    trade_ids = []
    for _ in range(2000):
        for event in market.advance(0.01, 0.0):
            assert event.first_update_id == next_update
            next_update = event.last_update_id + 1
            if event.trade:
                trade_ids.append(event.trade.trade_id)
            bid, _, ask, _ = event.top
            assert bid < ask
        assert len(market.bids) == len(market.asks) == CFG.levels
        assert market.bids.best() < market.asks.best()
        assert all(size > 0 for size in (*market.bids.sizes.values(), *market.asks.sizes.values()))
    assert len(trade_ids) > 2000
    assert trade_ids == list(range(1, len(trade_ids) + 1))
    assert market.last_trade_id == len(trade_ids)


def test_trades_hit_the_opposite_best_level() -> None:
    market = SymbolMarket("COINBASE", "ETH-USD", CFG, seed=3)
    for _ in range(500):
        before = market.top()
        for event in market.advance(0.005, 0.0):
            if event.trade:
                expected = before[2] if event.trade.taker_side == "buy" else before[0]
                assert event.trade.price == expected
                assert event.changes[0].price == expected
            before = event.top


def test_same_seed_same_events_regardless_of_slicing() -> None:
    a = _run(SymbolMarket("BINANCE", "BTC-USDT", CFG, seed=42), [0.01] * 500)
    b = _run(SymbolMarket("BINANCE", "BTC-USDT", CFG, seed=42), [0.5] * 9 + [0.5 - 1e-9])
    assert len(a) > 1000
    assert _shape(a) == _shape(b[: len(a)])
    c = _run(SymbolMarket("BINANCE", "BTC-USDT", CFG, seed=43), [0.01] * 500)
    d = _run(SymbolMarket("BINANCE", "ETH-USDT", CFG, seed=42), [0.01] * 500)
    assert _shape(a) != _shape(c) and _shape(a) != _shape(d)


def test_published_book_replays_to_the_market_book() -> None:
    market = SymbolMarket("BINANCE", "ETH-USDT", CFG, seed=5)
    book = PublishedBook(market)
    events = market.advance(2.0, 0.0)
    book.record(events)
    middle = events[len(events) // 2].last_update_id
    assert book.advance_to(middle) == middle - (events[0].first_update_id - 1)
    assert book.advance_to(market.update_id) > 0
    assert book.bids == market.bids.sizes and book.asks == market.asks.sizes


@pytest.mark.parametrize(("ticks", "text"), [(6500001, "65000.01"), (5, "0.05"), (100, "1.00")])
def test_price_strings(ticks: int, text: str) -> None:
    assert price_str(ticks) == text
    assert float(text) == ticks / 100


def test_size_strings() -> None:
    assert size_str(12345678) == "0.12345678"
    assert size_str(150000000) == "1.50000000"
