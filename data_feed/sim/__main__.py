"""`python -m data_feed.sim [--config FILE] [--cert-dir DIR]`: run the simulator (as `data-feed sim` does)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from data_feed.contracts.config import load_config
from data_feed.sim.server import serve_forever


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_feed.sim", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="config YAML (default: the embedded one)")
    parser.add_argument("--cert-dir", type=Path, default=Path(".data-feed/sim"), help="where the TLS cert goes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve_forever(load_config(args.config), args.cert_dir))


if __name__ == "__main__":
    main()
