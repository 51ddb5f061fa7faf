"""What a config may ask of each exchange, decided by that exchange's own modules: channels its cryptofeed class
offers (live, simulated, replayed) and, when simulated, symbols its simulator lists for the channel. Everything
the simulator serves passes; anything else names its key; the simulator itself refuses an unlisted market."""

from __future__ import annotations

from typing import Any

import pytest

from data_feed.contracts.config import ExchangeConfig, load_config, parse_config
from data_feed.runtime.preflight import offered_problems
from data_feed.sim.hub import UnlistedSymbol
from data_feed.sim.server import PROTOCOLS
from tests.sim.test_all_exchanges_run import OFFERED


def _config(exchanges: dict[str, Any]) -> Any:
    return parse_config({"exchanges": exchanges})


def test_the_default_config_and_everything_the_simulator_serves_pass() -> None:
    assert offered_problems(load_config()) == []
    everything = {name: {ch: {"symbols": syms} for ch, syms in chans.items()} for name, chans in OFFERED.items()}
    assert offered_problems(_config(everything)) == []


@pytest.mark.parametrize(("exchange", "section", "expected"), [
    ("BINANCE", {"source": "live", "funding": {"symbols": ["BTC-USDT"]}},
     "exchanges.BINANCE.funding: BINANCE offers no funding channel"),
    ("COINBASE", {"candles": {"symbols": ["BTC-USD"]}}, "exchanges.COINBASE.candles: COINBASE offers no candles"),
    ("BINANCE", {"candles": {"symbols": ["BTC-USDT"]}},
     "exchanges.BINANCE.candles.symbols: BTC-USDT is not listed by the simulated BINANCE for candles (it serves no "
     "symbol on this channel)"),
    ("OKX", {"open_interest": {"symbols": ["BTC-USDT"]}},
     "exchanges.OKX.open_interest.symbols: BTC-USDT is not listed by the simulated OKX for open_interest"),
    ("KRAKEN", {"trades": {"symbols": ["XBT-USD"]}}, "exchanges.KRAKEN.trades.symbols: XBT-USD is not listed"),
    ("DERIBIT", {"source": "replay", "trades": {"symbols": ["BTC-USD-PERP"]}}, None),
    ("NOSUCHVENUE", {"source": "replay", "trades": {"symbols": ["BTC-USD"]}},
     "exchanges.NOSUCHVENUE: cryptofeed has no exchange 'NOSUCHVENUE'"),
])
def test_what_an_exchange_does_not_offer_is_named_by_its_key(exchange: str, section: dict[str, Any],
                                                              expected: str | None) -> None:
    problems = offered_problems(_config({exchange: section}))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_live_symbols_are_not_checked_offline() -> None:
    assert offered_problems(_config({"BINANCE": {"source": "live", "trades": {"symbols": ["FOO-BAR"]}}})) == []


def test_the_simulator_refuses_to_invent_a_market() -> None:
    cfg = ExchangeConfig.model_validate({"trades": {"symbols": ["BTC-USDT", "FOO-BAR"]}})
    with pytest.raises(UnlistedSymbol, match="exchange=BINANCE: the simulator lists no market FOO-BAR"):
        PROTOCOLS["BINANCE"](cfg, 42)
