"""Simulator throughput: frames/s per exchange at a high event rate, and how far its market clock lags wall time.

Runs the simulator in this process with Binance and Coinbase at 500 trades/s and 1,000 book updates/s per
symbol, read by the raw websocket load client of the tests (a separate process); prints the rate of each
exchange over the measured seconds and ends with ``RESULT sim_frames_per_s <lowest exchange rate>`` (the
target is >= 2,000 frames/s per exchange on a quiet machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from data_feed.contracts.config import parse_config
from data_feed.sim import Simulator

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "sim" / "load_client.py"
MARKET = {"trades_per_second": 500, "book_updates_per_second": 1000, "levels": 50}


async def measure(seconds: float, workdir: Path) -> tuple[dict[str, float], float]:
    chans, cb = {"symbols": ["BTC-USDT", "ETH-USDT"]}, {"symbols": ["BTC-USD", "ETH-USD"]}
    config = parse_config({"exchanges": {
        "BINANCE": {"trades": chans, "l2_book": chans, "ticker": chans, "market": MARKET},
        "COINBASE": {"trades": cb, "l2_book": cb, "ticker": cb, "market": MARKET}}})
    sim = Simulator(config, workdir / "certs")
    await sim.start()
    env = {**os.environ, "SSL_CERT_FILE": str(sim.cert_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), "--ws-base", sim.ws_base, "--out", str(workdir / "load.json"),
        "--binance", ",".join(chans["symbols"]), "--coinbase", ",".join(cb["symbols"]), env=env)
    try:
        await asyncio.sleep(1.0)  # connect + start grace
        start, before = time.monotonic(), sim.stats()
        clocks = {s.symbol: s.market.clock for p in sim.protocols.values() for s in p.symbols.values()}
        await asyncio.sleep(seconds)
        elapsed, after = time.monotonic() - start, sim.stats()
        lag = max(elapsed - (s.market.clock - clocks[s.symbol]) for p in sim.protocols.values()
                  for s in p.symbols.values())
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
        await sim.stop()
    return {ex: (after[ex]["frames_sent"] - before[ex]["frames_sent"]) / elapsed for ex in after}, lag


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rates, lag = asyncio.run(measure(args.seconds, Path(tmp)))
    for exchange, rate in sorted(rates.items()):
        print(f"{exchange}: {rate:,.0f} frames/s")
    print(f"market clock behind wall time by at most {lag * 1000:.0f} ms")
    print(f"RESULT sim_frames_per_s {min(rates.values()):.0f}")


if __name__ == "__main__":
    main()
