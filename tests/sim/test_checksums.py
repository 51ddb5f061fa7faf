"""The simulator's book checksums are computed exactly as cryptofeed 2.4.1 verifies them."""

from __future__ import annotations

import random
from decimal import Decimal

from cryptofeed.symbols import Symbols
from cryptofeed.types import OrderBook

from data_feed.collector.exchanges.kraken import KrakenWithChecks
from data_feed.sim.kraken import checksum, kraken_price
from data_feed.sim.market import price_str, size_str
from data_feed.sim.okx import checksum as okx_checksum


def random_book(rng: random.Random) -> tuple[dict[int, int], dict[int, int]]:
    mid = 6_500_000
    bids = {mid - rng.randint(1, 5000): rng.randint(1, 10**9) for _ in range(40)}
    asks = {mid + rng.randint(1, 5000): rng.randint(1, 10**9) for _ in range(40)}
    return bids, asks


def test_kraken_checksum_equals_cryptofeeds() -> None:
    rng = random.Random(5)
    for _ in range(50):
        bids, asks = random_book(rng)
        book = OrderBook("KRAKEN", "BTC-USD", max_depth=100, checksum_format="KRAKEN",
                         bids={Decimal(kraken_price(p)): Decimal(size_str(s)) for p, s in bids.items()},
                         asks={Decimal(kraken_price(p)): Decimal(size_str(s)) for p, s in asks.items()})
        assert book.book.checksum() == checksum((bids, asks))


def test_kraken_checksum_changes_with_a_top_level() -> None:
    bids, asks = random_book(random.Random(1))
    before = checksum((bids, asks))
    best = max(bids)
    bids[best] += 1
    assert checksum((bids, asks)) != before


def test_the_kraken_collector_always_validates_checksums() -> None:
    Symbols.set("KRAKEN", {"BTC-USD": "XBT/USD"}, {"instrument_type": {"BTC-USD": "spot"}})  # no REST needed
    feed = KrakenWithChecks(symbols=["BTC-USD"], channels=["l2_book"], callbacks={}, checksum_validation=False)
    assert feed.checksum_validation is True


def test_okx_checksum_equals_cryptofeeds() -> None:
    rng = random.Random(6)
    for _ in range(50):
        bids, asks = random_book(rng)
        book = OrderBook("OKX", "BTC-USDT", max_depth=400, checksum_format="OKX",
                         bids={Decimal(price_str(p)): Decimal(size_str(s)) for p, s in bids.items()},
                         asks={Decimal(price_str(p)): Decimal(size_str(s)) for p, s in asks.items()})
        assert book.book.checksum() == okx_checksum((bids, asks)) & 0xFFFFFFFF  # OKX sends it signed
