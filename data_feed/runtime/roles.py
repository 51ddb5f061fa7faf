"""Every role as a process of its own: ``data-feed role ROLE [ARG] --config FILE``.

Roles: ``simulator``, ``bus`` (the ZMQ proxy), ``collector EXCHANGE``, ``aggregator [--shard I]``,
``featurizer`` and ``gateway`` (signal access, ``data_feed.access.gateway``). Each reads the one YAML config,
reaches Redis at ``redis.url`` and the bus at ``bus.publish_endpoint`` / ``bus.subscribe_endpoint``,
serves ``/health`` and ``/metrics`` on ``--http-port`` (``data_feed.observability.status``), stops cleanly on SIGTERM
and exits non-zero on a fatal error, so any supervisor (docker-compose, Kubernetes, the spawner) can
restart it. The spawner runs these same
commands, with a config it derived from the user's: the private Redis's URL, the simulator's port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from setproctitle import setproctitle

from data_feed.contracts.config import Config, ConfigError, load_config
from data_feed.observability.exits import EXIT_FAILED, EXIT_USAGE
from data_feed.observability.logs import setup_logging
from data_feed.observability.status import RoleStatus

ROLES = ("simulator", "bus", "collector", "aggregator", "featurizer", "gateway")
NEEDS_REDIS = ("collector", "aggregator", "featurizer")

LOG = logging.getLogger("data_feed")


def role_name(role: str, arg: str | None = None, shard: int | None = None, shards: int = 1) -> str:
    """How the role is named in ``ps``, logs, health keys and ``/health``: ``collector BINANCE``,
    ``aggregator`` (``aggregator 2`` when sharded)."""
    if role == "aggregator" and shards > 1:
        return f"aggregator {shard or 0}"
    return role + (f" {arg}" if arg else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="data-feed role", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("arg", nargs="?", help="collector: the exchange (e.g. BINANCE)")
    parser.add_argument("--config", required=True, help="the deployment's YAML config")
    parser.add_argument("--http-port", type=int, default=0, help="/health and /metrics (0: a free port)")
    parser.add_argument("--http-host", default="127.0.0.1", help="address to serve them on (0.0.0.0 in a container)")
    parser.add_argument("--shard", type=int, default=0, help="aggregator: which of aggregator.shards this is")
    return parser.parse_args(argv)


def check(args: argparse.Namespace, cfg: Config) -> str | None:
    """What makes this role impossible to start from this config, or None."""
    if args.role == "collector" and args.arg not in cfg.exchanges:
        return f"collector needs one of the configured exchanges ({', '.join(cfg.exchanges)}), got {args.arg!r}"
    if args.role in NEEDS_REDIS and not cfg.redis.url:
        return f"{args.role} run alone needs redis.url (the spawner passes its private Redis; here there is none)"
    if args.role == "aggregator" and not 0 <= args.shard < cfg.aggregator.shards:
        last = cfg.aggregator.shards - 1
        return f"--shard {args.shard}: aggregator.shards is {cfg.aggregator.shards} (shards 0 to {last})"
    if args.role in ("bus", "featurizer", "gateway") and not cfg.bus.enabled:
        return f"{args.role}: bus.enabled is false"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(Path(args.config))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    problem = check(args, cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    name = role_name(args.role, args.arg, args.shard, cfg.aggregator.shards)
    setproctitle(f"data-feed: {name}")
    setup_logging(name.replace(" ", "-"), exchange=args.arg if args.role == "collector" else None)
    status = RoleStatus(name, cfg.redis.url if args.role in NEEDS_REDIS else None)
    status.serve(args.http_port, args.http_host)
    try:
        run(args, cfg, status)
    except Exception:
        LOG.exception("data-feed: %s failed", name)
        return EXIT_FAILED
    finally:
        status.close()
    LOG.info("data-feed: %s exiting cleanly", name)
    return 0


def run(args: argparse.Namespace, cfg: Config, status: RoleStatus) -> None:
    if args.role == "simulator":
        from data_feed.sim.server import serve_forever

        asyncio.run(serve_forever(cfg, cfg.simulator_cert_dir(), status=status))
    elif args.role == "bus":
        from data_feed.bus.wire import Proxy

        Proxy(cfg).run_until_stopped(status)
    elif args.role == "collector":
        from data_feed.contracts.rundir import trust_simulator

        trust_simulator(cfg)  # before cryptofeed (and so aiohttp) is imported
        from data_feed.collector import run as run_collector

        run_collector(args.arg, cfg, status)
    elif args.role == "featurizer":
        from featurizer.role import run as run_featurizer

        run_featurizer(cfg, status)
    elif args.role == "gateway":
        from data_feed.access.gateway import run as run_gateway

        run_gateway(cfg, status)
    else:
        from data_feed.aggregator.role import run as run_aggregator

        run_aggregator(cfg, status, args.shard)


if __name__ == "__main__":
    sys.exit(main())
