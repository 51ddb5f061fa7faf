"""`data-feed replay`: recorded sessions through the whole pipeline (simulator -> collectors -> Redis -> lake).

Each session file names its exchange and what its recording client subscribed to; the replay run
subscribes to the same channels and symbols (those the exchange's cryptofeed class and the lake both
know), serves the recorded frames through the simulator, and stops once every recording has been
served and everything it produced has landed.

Features do not depend on the replay's speed: at ``--speed max`` one collector batch spans seconds of
the session and its channels reach the featurizer one after another, so an event-time watermark raised
by one channel's records would close slices before another channel's records for them arrive. A
replay's featurizer therefore closes no slice until the session has been served (its stop, after the
collectors', closes them all), computing every slice from all its records.

A replay fails fast (`ReplayError`, exit non-zero) instead of waiting forever when the recording cannot
answer a REST request the collector makes, or when a collector keeps exiting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from data_feed.contracts.capture import load_session
from data_feed.contracts.config import Config, parse_config
from data_feed.contracts.schemas import MARKET_CHANNELS, NS_PER_SECOND

LOG = logging.getLogger("data_feed.replay")

DONE_POLL_SECONDS: Final = 0.5
DONE_TIMEOUT_SECONDS: Final = 3600.0  # without a frame served for this long, the replay stops
# The recording says when the exchange went quiet or dropped a connection: a replay's collector never
# reconnects on silence (at --speed max one connection waits while another's frames go first).
REPLAY_WATCHDOG_SECONDS: Final = 365 * 86_400.0
REPLAY_RUN_SUBDIR: Final = "replay"
# Slices close at the end of the session, not by the watermark: a lateness no recording's event times span.
REPLAY_FEATURE_LATENESS_SECONDS: Final = 10 * 365 * 86_400.0
MAX_COLLECTOR_EXITS: Final = 3  # a collector exiting this often during a replay will not get further
NO_CLIENT_SECONDS: Final = 120.0  # a collector that opened no websocket connection by then never will


class ReplayError(RuntimeError):
    """A replay that cannot complete: names the exchange and what is missing."""


def supported_channels(exchange: str) -> set[str]:
    """Lake channels the exchange's cryptofeed class can subscribe to."""
    from data_feed.collector.callbacks import CRYPTOFEED_CHANNEL
    from data_feed.collector.exchanges import EXCHANGE_MODULES
    from data_feed.collector.exchanges.replay import base_class

    cls = base_class(exchange, EXCHANGE_MODULES.get(exchange))
    return {name for name, cf in CRYPTOFEED_CHANNEL.items() if cf in cls.websocket_channels}


def exchange_section(recorded: dict[str, list[str]], supported: set[str]) -> dict[str, Any]:
    section: dict[str, Any] = {"source": "replay", "watchdog_seconds": REPLAY_WATCHDOG_SECONDS}
    for channel in MARKET_CHANNELS:
        symbols = recorded.get(channel)
        if symbols and channel in supported:
            section[channel] = {"symbols": list(dict.fromkeys(symbols))}
    return section


def replay_config(base: Config, files: Sequence[Path], speed: float | None, lake: Path | None) -> Config:
    """The base config with its exchanges replaced by the recorded ones, served from ``files``."""
    data = base.model_dump(mode="json")
    exchanges: dict[str, Any] = {}
    target = Path(lake) if lake is not None else Path(base.lake.root)
    for path in files:
        session = load_session(path)
        if session.exchange in exchanges:
            raise ValueError(f"{path}: a second recording of {session.exchange}; replay one per exchange")
        exchanges[session.exchange] = exchange_section(session.config, supported_channels(session.exchange))
        if base.lake.s3 is None or lake is not None:
            refuse_if_landed(target, session.exchange, list(exchanges[session.exchange]), session.first_ts,
                             session.last_ts, path)
    data["exchanges"] = exchanges
    data["replay"] = {"files": [str(Path(f).resolve()) for f in files], "speed": speed}
    data["featurizer"]["allowed_lateness_seconds"] = REPLAY_FEATURE_LATENESS_SECONDS
    if lake is not None:
        data["lake"]["root"] = str(lake)
    data["spawner"]["run_dir"] = str(Path(data["spawner"]["run_dir"]) / REPLAY_RUN_SUBDIR)
    data["spawner"]["http_port"] = 0
    return parse_config(data, "replay")


def refuse_if_landed(lake: Path, exchange: str, channels: list[str], first_ts: float, last_ts: float,
                     path: Path) -> None:
    """A replay never lands a record twice: refuse a lake that already holds the recording's records (records
    of its exchange received while it was recorded, as a run that recorded itself leaves them)."""
    from data_feed.access.query import QueryError, run_query
    from data_feed.lake.catalog import NoLake, require_lake

    try:
        require_lake(lake)
    except NoLake:
        return  # a new lake: nothing in it yet
    lo, hi = int(first_ts * NS_PER_SECOND), int(last_ts * NS_PER_SECOND)
    for channel in channels:
        try:
            n = int(run_query(lake, f"select count(*) from {channel} where exchange = '{exchange}' and ts_recv "
                                    f"between {lo} and {hi}").iloc[0, 0])
        except QueryError:  # a channel with no table yet holds nothing
            continue
        if n:
            raise ValueError(f"lake {lake} already holds {n:,} {channel} rows of {exchange} received while {path} "
                             "was recorded: replaying it there would land them twice; give it another --lake")


def wait_until_served(spawner: Any, timeout: float = DONE_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Poll the simulator until every replayed exchange reports its recording served (or none served a frame
    for ``timeout`` seconds); returns its stats.

    Raises ReplayError as soon as a recording cannot answer a request or a collector cannot get going.
    """
    started = time.monotonic()
    deadline, sent = started + timeout, -1
    replayed = [name for name, ex in spawner.cfg.exchanges.items() if ex.source == "replay"]
    while True:
        stats: dict[str, Any] = spawner.sim_request("GET", "/_sim/stats")
        check_progress(spawner, replayed, stats, time.monotonic() - started)
        if all(stats.get(name, {}).get("done") for name in replayed):
            report_unserved(replayed, stats)
            return stats
        now_sent = sum(int(stats.get(name, {}).get("frames_sent", 0)) for name in replayed)
        if now_sent != sent:  # a long session at its recorded pace takes as long as it lasts
            deadline, sent = time.monotonic() + timeout, now_sent
        if time.monotonic() > deadline or spawner.stop_requested.is_set():
            LOG.error("replay stopped before every recording was served: %s", json.dumps(stats)[:2000])
            return stats
        spawner.supervise_once()
        time.sleep(DONE_POLL_SECONDS)


def check_progress(spawner: Any, replayed: list[str], stats: dict[str, Any], elapsed: float) -> None:
    """ReplayError for a request the recording has no answer to, or a collector that keeps exiting or that
    opens no connection."""
    for name in replayed:
        served = stats.get(name, {})
        unanswered = served.get("unanswered") or []
        if unanswered:
            more = f" (and {len(unanswered) - 1} more)" if len(unanswered) > 1 else ""
            raise ReplayError(f"exchange={name}: the recording {served.get('file')} has no answer for the request "
                              f"GET {unanswered[0]} that cryptofeed's collector made{more}; what it recorded: "
                              f"{', '.join(served.get('recorded_requests', [])) or 'no REST request'}")
        role = spawner.roles.get(f"collector {name}")
        log = role.log_path if role is not None else "its log"
        if role is not None and role.restarts >= MAX_COLLECTOR_EXITS:
            raise ReplayError(f"exchange={name}: the collector exited {role.restarts + 1} times during the replay; "
                              f"see {log}")
        opened = any(c.get("clients") for c in served.get("connections", {}).values())
        if served.get("connections") and not opened and elapsed > NO_CLIENT_SECONDS:
            raise ReplayError(f"exchange={name}: the collector opened none of the recording's websocket "
                              f"connections in {NO_CLIENT_SECONDS:.0f}s; see {log}")


def report_unserved(replayed: list[str], stats: dict[str, Any]) -> None:
    for name in replayed:
        never = stats.get(name, {}).get("never_opened") or []
        if never:
            LOG.warning("exchange=%s: the collector never opened the recorded connections %s; their frames were "
                        "not served (cryptofeed 2.4.1 subscribes differently from the recording client)", name,
                        ", ".join(never))


def run_replay(cfg: Config, run_dir: Any) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """Start every role, wait for the recordings to be served, stop cleanly; (served stats, landed summary)."""
    from data_feed.runtime.spawner import Spawner

    spawner = Spawner(cfg, run_dir)
    spawner.install_signal_handlers()
    try:
        spawner.start()
        served = wait_until_served(spawner)
    finally:
        spawner.stop()
    return served, spawner.summary
