"""The whole pipeline (`data-feed run`: simulator, cryptofeed collectors, aggregator) while the aggregator is
SIGKILLed at random instants, 12 times, each once it is at work: after the last restart every trade id of every
symbol is in the lake exactly once and every l2_book row the collectors cached is there once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from data_feed.access.query import run_query
from data_feed.cache.streams import collector_state_key
from data_feed.runtime.spawner import SIM_ACCOUNT_FILE
from tests.conftest import ROOT, default_config_dict
from tests.harness import wait_for

CLI = str(ROOT / ".venv" / "bin" / "data-feed")
KILLS_WANTED = 12  # the chaos test (make test-chaos) kills every role, this one the aggregator alone
KILL_AFTER_SECONDS = (0.05, 1.5)  # uniform, after the aggregator started working: recovery to mid-write of a slice
SEED = 20240611
WORKING_LINE = "aggregating "  # logged once the aggregator has its lake and streams, before it recovers
START_TIMEOUT_SECONDS = 90
RESTART_TIMEOUT_SECONDS = 60


def _config(tmp_path: Path, redis_url: str) -> Path:
    data = default_config_dict()
    data["redis"]["url"] = redis_url
    data["lake"].update(root=str(tmp_path / "lake"), slice_seconds=1, allowed_lateness_seconds=0.3)
    data["spawner"].update(run_dir=str(tmp_path / "run"), http_port=0, restart_backoff_max_seconds=0.2)
    data["database"]["url"] = f"sqlite:///{tmp_path / 'run' / 'df.db'}"
    for ex in data["exchanges"].values():
        ex["market"].update(trades_per_second=80, book_updates_per_second=200)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _aggregator_pid(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            body = json.loads(resp.read())
    except OSError as err:
        body = json.loads(err.read()) if hasattr(err, "read") else {"roles": []}
    for role in body["roles"]:
        if role["role"] == "aggregator" and role["alive"]:
            return int(role["pid"])
    return None


def _kill_repeatedly(run_dir: Path, proc: subprocess.Popen[str]) -> int:
    """Kill each new aggregator once it is at work (its start-up logged), at a random instant after that."""
    rng = random.Random(SEED)
    port = wait_for(lambda: _port(run_dir), START_TIMEOUT_SECONDS, "the spawner's status port")
    log = run_dir / "logs" / "aggregator.log"
    kills, last_pid = 0, None
    while kills < KILLS_WANTED:
        assert proc.poll() is None, "the pipeline exited during the kills"
        pid = wait_for(lambda last=last_pid: (p := _aggregator_pid(port)) != last and p,  # type: ignore[misc]
                       RESTART_TIMEOUT_SECONDS, "a restarted aggregator")
        wait_for(lambda done=kills: log.read_text().count(WORKING_LINE) > done,  # type: ignore[misc]
                 RESTART_TIMEOUT_SECONDS, "the aggregator to start working")
        time.sleep(rng.uniform(*KILL_AFTER_SECONDS))
        os.kill(pid, signal.SIGKILL)
        kills, last_pid = kills + 1, pid
    return kills


def _port(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "spawner.json").read_text())["http_port"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_aggregator_sigkilled_again_and_again_lands_every_trade_and_book_row_exactly_once(
        tmp_path: Path, redis_url: str) -> None:
    config = _config(tmp_path, redis_url)
    proc = subprocess.Popen([CLI, "run", "--config", str(config), "--no-status"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kills = _kill_repeatedly(tmp_path / "run", proc)
        time.sleep(3)  # the last aggregator lands what is due before the stop drains the rest
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert kills >= KILLS_WANTED
    log = (tmp_path / "run" / "logs" / "aggregator.log").read_text()
    assert log.count("unacknowledged entries from a previous run") >= KILLS_WANTED // 2  # work was in flight
    lake = tmp_path / "lake"
    _assert_trades_once(lake, tmp_path / "run" / "sim" / SIM_ACCOUNT_FILE)
    _assert_book_rows_once(lake, redis.Redis.from_url(redis_url))


def _assert_trades_once(lake: Path, account: Path) -> None:
    sent = json.loads(account.read_text())["stats"]
    df = run_query(lake, "select exchange, symbol, count(*) n, count(distinct id) d, max(id) m from trades "
                         "group by all")
    got = {(r.exchange, r.symbol): (r.n, r.d, r.m) for r in df.itertuples()}
    expected = {(ex, sym): (v["trades_sent"],) * 3 for ex, s in sent.items() for sym, v in s["symbols"].items()}
    assert got == expected
    assert all(n > 1000 for n, _, _ in got.values())  # the market really ran through the kills


def _assert_book_rows_once(lake: Path, client: redis.Redis) -> None:
    # A row's identity: its message (symbol, ts_recv: strictly increasing per symbol) and the level change.
    # Size is part of it because a Coinbase update may remove a price and re-add it in one message.
    # The aggregator's opening snapshot of each slice is not a cached row: stamped 1 ns before the slice's first
    # row, its ts_recv is never a whole microsecond as the collector's are.
    df = run_query(lake, "select exchange, count(*) n, count(distinct (symbol, ts_recv, side, price, size)) d "
                         "from l2_book where ts_recv % 1000 = 0 group by 1 order by 1")
    got = {r.exchange: (r.n, r.d) for r in df.itertuples()}
    cached: dict[str, Any] = {}
    for exchange in got:
        state = client.hgetall(collector_state_key(exchange))
        n = int(state[b"records_l2_book"])  # type: ignore[index]
        cached[exchange] = (n, n)
    assert got == cached and len(got) == 2
