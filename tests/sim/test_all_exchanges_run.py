"""Every simulated exchange in one `data-feed run`, each with every channel its simulator offers: each channel
lands rows in its own lake table, trades land exactly once, books equal the simulator's, nothing is a gap."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from data_feed.access.query import run_query
from data_feed.contracts.schemas import MARKET_CHANNELS
from data_feed.runtime.spawner import SIM_ACCOUNT_FILE
from tests.conftest import ROOT
from tests.test_pipeline import rebuild_book, top

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
RUN_SECONDS = 20
SPOT_CHANNELS = ("trades", "l2_book", "ticker")
BYBIT_LINEAR = ["BTC-USDT-PERP", "ETH-USDT-PERP"]
BYBIT_SPOT = ["BTC-USDT", "ETH-USDT"]
BYBIT_SPOT_CHANNELS = ("trades", "l2_book", "candles")  # cryptofeed 2.4.1 takes only these from Bybit spot
OKX_SWAP = ["BTC-USDT-PERP", "ETH-USDT-PERP"]
OKX_SPOT = ["BTC-USDT"]
OKX_SPOT_CHANNELS = ("trades", "l2_book", "ticker", "candles")  # funding, open interest, liquidations: swaps


def _all(symbols: list[str], channels: tuple[str, ...]) -> dict[str, list[str]]:
    return {ch: list(symbols) for ch in channels}


OFFERED: dict[str, dict[str, list[str]]] = {  # exchange -> channel -> symbols its simulator serves
    "BINANCE": _all(["BTC-USDT", "ETH-USDT"], SPOT_CHANNELS),
    "BINANCE_FUTURES": _all(["BTC-USDT-PERP", "ETH-USDT-PERP"], MARKET_CHANNELS),
    "BYBIT": {ch: BYBIT_LINEAR + (BYBIT_SPOT if ch in BYBIT_SPOT_CHANNELS else []) for ch in MARKET_CHANNELS},
    "COINBASE": _all(["BTC-USD", "ETH-USD"], SPOT_CHANNELS),
    "KRAKEN": _all(["BTC-USD", "ETH-USD"], (*SPOT_CHANNELS, "candles")),
    "OKX": {ch: OKX_SWAP + (OKX_SPOT if ch in OKX_SPOT_CHANNELS else []) for ch in MARKET_CHANNELS},
}

NO_TRADE_IDS = {"KRAKEN"}  # Kraken's v1 trade messages carry no trade id

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("all")
    exchanges = {name: {ch: {"symbols": symbols} for ch, symbols in chans.items()} for name, chans in OFFERED.items()}
    config = {"exchanges": exchanges,
              "lake": {"root": str(tmp / "lake"), "slice_seconds": 5, "allowed_lateness_seconds": 1},
              "spawner": {"http_port": 0, "run_dir": str(tmp / "run")},
              "database": {"url": f"sqlite:///{tmp / 'df.db'}"}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([CLI, "run", "--config", str(path), "--duration", str(RUN_SECONDS), "--no-status"],
                         capture_output=True, text=True, timeout=RUN_SECONDS + 180)
    account = json.loads((tmp / "run" / "sim" / SIM_ACCOUNT_FILE).read_text())
    return {"lake": tmp / "lake", "out": out, "account": account}


def test_run_exits_cleanly(run: dict[str, Any]) -> None:
    assert run["out"].returncode == 0, run["out"].stderr[-3000:]


@pytest.mark.parametrize("exchange", sorted(OFFERED))
def test_every_offered_channel_has_rows_in_its_own_table(run: dict[str, Any], exchange: str) -> None:
    for channel, symbols in OFFERED[exchange].items():
        df = run_query(run["lake"], f"select symbol, count(*) n from {channel} where exchange = '{exchange}' "
                                    "group by 1")
        assert set(df["symbol"]) == set(symbols), (exchange, channel, df)


@pytest.mark.parametrize("exchange", sorted(OFFERED))
def test_trades_land_exactly_once(run: dict[str, Any], exchange: str) -> None:
    sent = run["account"]["stats"][exchange]["symbols"]
    df = run_query(run["lake"], f"select symbol, count(*) n, count(distinct id) d, max(id) m from trades "
                                f"where exchange = '{exchange}' group by 1")
    if exchange in NO_TRADE_IDS:  # counted, and distinct by exchange time, price and size instead
        df = run_query(run["lake"], f"select symbol, count(*) n, count(distinct (ts_event, price, amount)) d, "
                                    f"count(*) m from trades where exchange = '{exchange}' group by 1")
    got = {r.symbol: (r.n, r.d, r.m) for r in df.itertuples()}
    assert got == {s: (v["trades_sent"],) * 3 for s, v in sent.items()}


def test_books_equal_the_simulators(run: dict[str, Any]) -> None:
    lake: Path = run["lake"]
    for exchange, symbols in run["account"]["books"].items():
        for symbol, sim_book in symbols.items():
            rows = run_query(lake, f"select side, price, size, snapshot, ts_recv from l2_book where exchange = "
                                   f"'{exchange}' and symbol = '{symbol}' order by ts_recv").to_dict("records")
            assert top(rebuild_book(rows), 20) == sim_book, (exchange, symbol)


def test_a_clean_run_has_no_gaps_but_the_stop(run: dict[str, Any]) -> None:
    """Kraken's books are checksum-validated: a mismatch would be a gaps row. The clean stop is marked once per
    channel and symbol (the next run into this lake starts from there)."""
    gaps = run_query(run["lake"], "select exchange, channel, symbol, reason from gaps")
    assert set(gaps["reason"]) == {"stopped"}
    assert not gaps.duplicated(["exchange", "channel", "symbol"]).any()


def test_futures_channels_carry_sane_values(run: dict[str, Any]) -> None:
    lake = run["lake"]
    funding = run_query(lake, "select * from funding where exchange = 'BINANCE_FUTURES'")
    assert (funding["rate"] == 0.0001).all() and (funding["next_funding_time"] > funding["ts_event"]).all()
    candles = run_query(lake, "select * from candles where exchange = 'BINANCE_FUTURES'")
    assert ((candles["low"] <= candles["open"]) & (candles["open"] <= candles["high"])).all()
    assert (candles["stop"] - candles["start"] == 60 * 10**9 - 10**6).all() and (candles["interval"] == "1m").all()
    oi = run_query(lake, "select * from open_interest where exchange = 'BINANCE_FUTURES'")
    assert (oi["open_interest"] > 0).all()
    liq = run_query(lake, "select * from liquidations where exchange = 'BINANCE_FUTURES'")
    assert set(liq["side"]) <= {"buy", "sell"} and (liq["status"] == "filled").all()
