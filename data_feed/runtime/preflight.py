"""Start-up checks: what must hold before the spawner starts any role, each failure naming the key to fix.

``offered_problems`` is part of loading a config to run: every configured channel must be one the
exchange's collector class (cryptofeed's, see ``data_feed.collector.exchanges``) subscribes to, and for a
simulated exchange every symbol one its simulator module lists for that channel (``listed`` of
``data_feed.sim.<venue>``), so a typo is a config error, never an invented market or a collector that
restart-loops. Symbols of live and replayed exchanges are not checked: cryptofeed's symbol lists come from
the exchange's REST API, which is not offline. The checks import cryptofeed (and so aiohttp), which is why
they run in the CLI and not in ``data_feed.contracts.config``, which every role imports before its TLS setup.

``check_environment`` runs before the run directory is prepared: ``lake.root`` must be a directory this
process can write, or creatable in one (unless the lake is on S3), and ``spawner.http_port`` must be free.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from data_feed.contracts.config import Config, ExchangeConfig
from data_feed.lake.catalog import CATALOG_FILE

LOCALHOST = "127.0.0.1"


class PreflightError(RuntimeError):
    """The machine cannot run this config (unwritable lake, port in use); the message names the key."""


def offered_problems(cfg: Config) -> list[str]:
    """``key.path: problem`` for every channel or simulated symbol the config asks for that is not offered."""
    problems: list[str] = []
    for name, ex in cfg.exchanges.items():
        problems += _exchange_problems(name, ex)
    return problems


def _exchange_problems(name: str, ex: ExchangeConfig) -> list[str]:
    from data_feed.collector.callbacks import CRYPTOFEED_CHANNEL
    from data_feed.collector.exchanges import offered_channels

    try:
        offered = offered_channels(name, ex.source)
    except ValueError as err:
        return [f"exchanges.{name}: {err}"]
    problems = []
    channels = [c for c in CRYPTOFEED_CHANNEL if CRYPTOFEED_CHANNEL[c] in offered]
    for channel in ex.channels():
        if CRYPTOFEED_CHANNEL[channel] not in offered:
            problems.append(f"exchanges.{name}.{channel}: {name} offers no {channel} channel (its cryptofeed "
                            f"class has {', '.join(channels)})")
    if ex.source == "simulator" and not problems:
        problems += _simulated_symbol_problems(name, ex)
    return problems


def _simulated_symbol_problems(name: str, ex: ExchangeConfig) -> list[str]:
    from data_feed.sim.server import PROTOCOLS

    listed = PROTOCOLS[name].listed
    problems = []
    for channel, sub in ex.channels().items():
        served = listed.get(channel, ())
        for symbol in sub.symbols:
            if symbol not in served:
                where = f"it lists {', '.join(served)}" if served else "it serves no symbol on this channel"
                problems.append(f"exchanges.{name}.{channel}.symbols: {symbol} is not listed by the simulated "
                                f"{name} for {channel} ({where})")
    return problems


def check_environment(cfg: Config) -> None:
    """``PreflightError`` unless the lake root can be written and the http port is free."""
    if cfg.lake.s3 is None:
        check_lake_writable(Path(cfg.lake.root))
    if cfg.spawner.http_port:
        check_port_free(cfg.spawner.http_port)


def check_lake_writable(root: Path) -> None:
    """The lake root (or, while it does not exist, the directory it will be created in) takes new files, and
    its catalog, when there is one, can be written. Creates nothing that outlives the check."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a directory")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".preflight-"):
            pass
    except OSError as err:
        raise PreflightError(f"lake.root {root} is not a writable directory: {err.strerror or err}") from None
    catalog = root / CATALOG_FILE
    if catalog.exists() and not os.access(catalog, os.W_OK):
        raise PreflightError(f"lake.root {root}: its catalog {catalog.name} is not writable")


def check_port_free(port: int) -> None:
    """Bind the port as the spawner's http server will (address reuse on), then let it go."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError as err:
            reason = "in use" if err.errno == errno.EADDRINUSE else f"not available ({err.strerror})"
            raise PreflightError(f"spawner.http_port {port} is {reason}: stop what holds it, or set "
                                 "spawner.http_port to a free port (0 picks one)") from None
