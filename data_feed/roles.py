"""Entry point of every child process the spawner starts: ``python -m data_feed.roles ROLE [ARG]``.

Each role names itself in ``ps`` (``data-feed: collector BINANCE``), logs to its
own file in the run directory, and reads the effective config and runtime the
spawner saved there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from setproctitle import setproctitle

from data_feed.config import parse_config
from data_feed.logs import setup_logging
from data_feed.runtime import RunDir, Runtime, trust_simulator

ROLES = ("simulator", "collector", "aggregator", "featurizer")


def process_title(role: str, arg: str | None) -> str:
    return f"data-feed: {role}" + (f" {arg}" if arg else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="data_feed.roles")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("arg", nargs="?")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--port", type=int, help="simulator: listen here (a restart keeps its first port)")
    args = parser.parse_args(argv)
    setproctitle(process_title(args.role, args.arg))
    run_dir = RunDir(Path(args.run_dir))
    setup_logging(args.role + (f"-{args.arg}" if args.arg else ""),
                  exchange=args.arg if args.role == "collector" else None)
    cfg = parse_config(json.loads(run_dir.effective_config.read_text()), str(run_dir.effective_config))
    if args.role == "simulator":
        from data_feed.sim.server import serve_forever

        asyncio.run(serve_forever(cfg, run_dir.sim_dir, run_dir.sim_ready_file, args.port))
        return 0
    runtime = Runtime.load(run_dir.runtime_file)
    if args.role == "collector":
        trust_simulator(runtime)  # before cryptofeed (and so aiohttp) is imported
        from data_feed.collector import run as run_collector

        run_collector(args.arg, cfg, runtime)
    elif args.role == "featurizer":
        from featurizer.role import run as run_featurizer

        run_featurizer(cfg, runtime.redis_url)
    else:
        from data_feed.aggregator import run as run_aggregator

        run_aggregator(cfg, runtime.redis_url)
    logging.getLogger("data_feed").info("%s exiting cleanly", process_title(args.role, args.arg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
