"""The spawner's own faults: a second start in the same directory is refused while the first runs; the spawner
SIGKILLed takes every child with it within 5 s (no orphans writing the lake); a start after it recovers what the
dead run left in Redis and the journal, and marks the downtime as gaps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from data_feed.access.query import run_query
from tests.harness import (
    CLI,
    Run,
    duplicated_feature_keys,
    duplicated_trade_ids,
    pipeline_config,
    uncovered_missing_ids,
    wait_for,
)

GONE_WITHIN_SECONDS = 5


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its entry waits for a reaper


@pytest.mark.slow
def test_a_killed_spawner_takes_its_children_and_the_next_run_recovers(tmp_path: Path) -> None:
    first = Run(tmp_path, pipeline_config(tmp_path)).start()
    assert first.proc is not None
    second = subprocess.run([CLI, "run", "--config", str(first.config_path), "--no-status"], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 2, second.stderr
    assert f"pid {first.proc.pid}" in second.stderr and str(first.run_dir) in second.stderr
    assert first.proc.poll() is None  # the refused start touched nothing of the running one

    children = [r["pid"] for r in first.health()["roles"] if r["alive"]] + [first.redis_pid()]
    assert len(children) == 7  # simulator, bus, aggregator, featurizer, two collectors, redis-server
    time.sleep(2)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    killed = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in children), GONE_WITHIN_SECONDS, "every child of the killed spawner")
    assert time.monotonic() - killed <= GONE_WITHIN_SECONDS

    log = first.run_dir / "logs" / "aggregator.log"
    recovered_before = log.read_text().count("unacknowledged entries from a previous run")
    again = Run(tmp_path, first.config).start()
    wait_for(lambda: log.read_text().count("unacknowledged entries from a previous run") > recovered_before, 60,
             "the aggregator recovering the dead run's entries")
    time.sleep(5)
    assert again.stop() == 0, again.err[-3000:]
    assert duplicated_trade_ids(again.lake) == {}
    assert uncovered_missing_ids(again.lake) == {}
    assert duplicated_feature_keys(again.lake) == 0
    restarts = run_query(again.lake, "select exchange, channel, count(*) n from gaps where reason = 'restart' "
                                     "group by all")
    assert set(restarts["exchange"]) == {"BINANCE", "COINBASE"}  # the downtime is in the lake
    assert {"trades", "l2_book", "ticker"} <= set(restarts["channel"])
    assert os.path.exists(again.run_dir / "spawner.lock")


def test_the_supervision_loop_outlives_a_redis_outage_under_its_status_line(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarting (SIGKILLed, reloading its AOF) while the status line reads it must not end the run:
    the CI chaos run once lost its whole pipeline this way, the status tick's HGETALL raising out of the loop."""
    import logging

    import redis as redis_lib

    from data_feed.cache.redis_server import PrivateRedis
    from data_feed.cli.pipeline import _StatusLog
    from data_feed.contracts.config import parse_config
    from data_feed.contracts.rundir import RunDir
    from data_feed.runtime.spawner import Spawner

    cfg = parse_config(pipeline_config(tmp_path), "test")
    spawner = Spawner(cfg, RunDir(tmp_path / "run"))
    server = PrivateRedis(tmp_path / "redis").start()
    spawner.client = redis_lib.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    status = _StatusLog(spawner)
    status.INTERVAL_SECONDS = 0.0  # a status line at every tick
    ticks = []

    def tick(sp: Spawner) -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 3:
            assert server.proc is not None
            server.proc.kill()  # Redis gone between two status lines
            server.proc.wait()
        status(sp)

    try:
        with caplog.at_level(logging.WARNING, logger="data_feed.runtime.spawner"):
            spawner.run(duration=3.0, on_tick=tick)  # raised ConnectionError out of run() before the guard
    finally:
        server.stop()
    assert len(ticks) >= 5, "the loop stopped ticking once Redis was gone"
    assert any("could not show the status" in r.getMessage() and "ConnectionError" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
