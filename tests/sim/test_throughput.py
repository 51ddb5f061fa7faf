"""The simulator at high event rates: every frame arrives, in order, with consecutive trade ids and book
sequences. How fast it goes is measured by `bench/simulator.py`, not asserted here (wall-clock rates depend on
the machine's load)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from data_feed.contracts.config import parse_config
from data_feed.sim import Simulator

CLIENT = Path(__file__).with_name("load_client.py")
RUN_SECONDS = 4.0
MARKET = {"trades_per_second": 500, "book_updates_per_second": 1000, "levels": 50}


async def _scenario(workdir: Path) -> dict[str, Any]:
    chans = {"symbols": ["BTC-USDT", "ETH-USDT"]}
    cb = {"symbols": ["BTC-USD", "ETH-USD"]}
    config = parse_config({"exchanges": {
        "BINANCE": {"trades": chans, "l2_book": chans, "ticker": chans, "market": MARKET},
        "COINBASE": {"trades": cb, "l2_book": cb, "ticker": cb, "market": MARKET},
    }})
    sim = Simulator(config, workdir / "certs")
    await sim.start()
    out = workdir / "load.json"
    env = {**os.environ, "SSL_CERT_FILE": str(sim.cert_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), "--ws-base", sim.ws_base, "--out", str(out),
        "--binance", ",".join(chans["symbols"]), "--coinbase", ",".join(cb["symbols"]), env=env,
    )
    try:
        await asyncio.sleep(1.0)  # connect + start grace
        start, before = time.monotonic(), sim.stats()
        clocks = {s.symbol: s.market.clock for p in sim.protocols.values() for s in p.symbols.values()}
        await asyncio.sleep(RUN_SECONDS)
        elapsed, after = time.monotonic() - start, sim.stats()
        lag = {s.symbol: elapsed - (s.market.clock - clocks[s.symbol])
               for p in sim.protocols.values() for s in p.symbols.values()}
        await sim.pause()
        await asyncio.sleep(1.0)
        final = sim.stats()
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
        await sim.stop()
    rates = {ex: (after[ex]["frames_sent"] - before[ex]["frames_sent"]) / elapsed for ex in after}
    return {"client": json.loads(out.read_text()), "rates": rates, "lag": lag, "final": final}


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return asyncio.run(_scenario(tmp_path_factory.mktemp("load")))


def test_every_frame_arrives_in_order(load: dict[str, Any]) -> None:
    client = load["client"]
    assert client["errors"] == [] and client["problems"] == []
    for exchange, stats in load["final"].items():
        assert client["frames"][exchange] == stats["frames_sent"]
        for symbol, sym_stats in stats["symbols"].items():
            key = f"{exchange} {symbol.replace('-', '') if exchange == 'BINANCE' else symbol}"
            ids = client["trade_ids"][key]
            assert ids == list(range(1, sym_stats["last_trade_id"] + 1))
            assert len(ids) == sym_stats["trades_sent"]
